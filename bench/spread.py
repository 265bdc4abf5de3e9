"""The spread of the key ratios over several runs: `python -m bench.spread`.

The floor moves from run to run on these shared 2-core machines, so one run's ratio
can mislead. This runs `python -m bench` `--runs` times (3) on the key rows only
(floor, session, basic-app, bearer-jwt by default; `--only` to choose), each run a
world of its own, and writes `spread.md` and `spread.json` under `--out`
(bench/results): for each row the min, median and max of its authz CPU per Check over
the floor of the same run, and of its throughput over the floor's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results")
KEY_ROWS = ("session", "basic-app", "bearer-jwt")


def one_run(rows: list[str], duration: float, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ext-authz-spread-") as out:
        argv = [sys.executable, "-m", "bench", "--no-profile", "--no-unbatched"]
        argv += ["--duration", str(duration), "--out", out, *extra]
        for row in rows:
            argv += ["--only", row]
        subprocess.run(argv, check=True)
        data: dict[str, Any] = json.loads((Path(out) / "results.json").read_text())
        return data


def ratios(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{row: {"cpu": cpu/Check over the floor's, "rps": req/s over the floor's}}."""
    rows = {r["scenario"]: r for r in run["scenarios"]}
    floor = rows["floor"]
    out: dict[str, dict[str, float]] = {}
    for name, row in rows.items():
        if name == "floor" or not row.get("cpu_us_per_check"):
            continue
        out[name] = {
            "cpu": row["cpu_us_per_check"] / floor["cpu_us_per_check"],
            "rps": row["rps"] / floor["rps"],
            "cpu_us": row["cpu_us_per_check"],
        }
    out["floor"] = {"cpu": 1.0, "rps": 1.0, "cpu_us": floor["cpu_us_per_check"]}
    return out


def summary(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """{row: {figure: [min, median, max]}} over the runs."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in runs[0]:
        out[row] = {}
        for figure in ("cpu", "rps", "cpu_us"):
            values = [run[row][figure] for run in runs if row in run]
            out[row][figure] = [min(values), statistics.median(values), max(values)]
    return out


def markdown(spread: dict[str, dict[str, list[float]]], runs: int) -> str:
    lines = [
        f"# Spread over {runs} runs of `python -m bench` (key rows)",
        "",
        "Each run is a world of its own; ratios are to the floor of the same run.",
        "",
        "| row | authz CPU µs/Check (min / median / max) | CPU ÷ floor | req/s ÷ floor |",
        "|---|---|---|---|",
    ]
    for row, figures in spread.items():
        us, cpu, rps = figures["cpu_us"], figures["cpu"], figures["rps"]
        lines.append(
            f"| {row} | {us[0]:.0f} / {us[1]:.0f} / {us[2]:.0f} "
            f"| {cpu[0]:.2f} / {cpu[1]:.2f} / {cpu[2]:.2f} "
            f"| {rps[0]:.2f} / {rps[1]:.2f} / {rps[2]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spread", description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", action="append", metavar="ROW", help="rows (default: key rows)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("extra", nargs="*", help="more arguments for `python -m bench`")
    args = p.parse_args(argv)
    rows = list(args.only or KEY_ROWS)
    per_run = [ratios(one_run(rows, args.duration, args.extra)) for _ in range(args.runs)]
    spread = summary(per_run)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spread.json").write_text(
        json.dumps({"runs": per_run, "spread": spread}, indent=2) + "\n"
    )
    text = markdown(spread, args.runs)
    (args.out / "spread.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
