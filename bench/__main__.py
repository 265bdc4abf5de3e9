"""`python -m bench` (what `make bench` runs): the benchmark, end to end.

Starts the world (bench.world), runs each scenario (bench.runner) with wrk, profiles
the cached paths with py-spy (bench.profile), prints the table and writes
results.json, results.md, results.png and PROFILE.md under --out (bench/results).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import profile as profiling
from bench import report
from bench.measure import loadavg
from bench.runner import run_scenario
from bench.scenarios import PROFILED, select
from bench.world import World
from tests.stack.envoy import envoy_binary
from tests.stack.proc import stop_all

RESULTS = Path(__file__).with_name("results")


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def _machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{platform.node()} ({os.cpu_count()} CPUs, {cpu}, Linux {platform.release()})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (2)")
    p.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help="run only this scenario (repeatable; floor is added for ratios)",
    )
    p.add_argument("--connections", type=int, default=16, help="wrk -c (16)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    p.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy --concurrency (1)")
    p.add_argument("--log-level", default="info", help="ext-authz server.log_level (info)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    p.add_argument(
        "--no-unbatched",
        action="store_true",
        help="skip the one-connection pass of floor/session/basic (the goals at equal load)",
    )
    p.add_argument("--profile-duration", type=float, default=6.0, help="seconds per profile")
    p.add_argument("--out", type=Path, default=RESULTS, help="output dir (bench/results)")
    p.add_argument("--workdir", type=Path, help="logs and configs (a new temp dir)")
    args = p.parse_args(argv)

    names = list(args.only or [])
    if names and "floor" not in names:
        names.append("floor")
    scenarios = select(names or None)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ext-authz-bench-"))
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    uses_nginx = any(s.proxy == "nginx" for s in scenarios)
    meta: dict[str, Any] = {
        "started": started,
        "machine": _machine(),
        "python": sys.version.split()[0],
        "envoy_version": _version([str(envoy_binary()), "--version"]).split("version: ")[-1],
        "wrk_version": _version(["wrk", "-v"]),
        "nginx_version": _version(["nginx", "-v"]) if uses_nginx else None,
        "loadavg_before": loadavg(),
        "envoy_concurrency": args.envoy_concurrency,
        "wrk_threads": args.threads,
        "wrk_connections": args.connections,
        "warmup": args.warmup,
        "duration": args.duration,
        "ext_authz_log_level": args.log_level,
        "workdir": str(workdir),
    }
    print(f"bench: {len(scenarios)} scenario(s), {args.warmup:g}+{args.duration:g} s each; "
          f"logs in {workdir}", flush=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    summaries: dict[str, tuple[profiling.Summary, profiling.Summary]] = {}
    world = World(scenarios, workdir, args.envoy_concurrency, args.log_level)
    try:
        world.start()
        for s in scenarios:
            print(f"  {s.name}: {s.title} ...", flush=True)
            try:
                row = run_scenario(world, s, warmup=args.warmup, duration=args.duration,
                                   threads=args.threads, connections=args.connections)  # fmt: skip
            except Exception as exc:  # one broken scenario must not lose the others
                row = {"scenario": s.name, "title": s.title, "error": f"{type(exc).__name__}: "
                       f"{exc}"[:300]}  # fmt: skip
            if "error" in row:
                print(f"    ERROR: {row['error']}", flush=True)
            rows.append(row)
        # The unbatched pass: the CPU goals at equal load (one connection each).
        if args.connections != 1 and not args.no_unbatched:
            for s in [s for s in scenarios if s.name in report.UNBATCHED]:
                print(f"  {s.name} (one connection) ...", flush=True)
                try:
                    row = run_scenario(world, s, warmup=args.warmup, duration=args.duration,
                                       threads=1, connections=1)  # fmt: skip
                except Exception as exc:
                    row = {"scenario": s.name, "title": s.title,
                           "error": f"{type(exc).__name__}: {exc}"[:300]}  # fmt: skip
                row["scenario"] = s.name + report.UNBATCHED_SUFFIX
                row["title"] = s.title + " (one connection)"
                rows.append(row)
        profiled = [n for n in PROFILED if n in {s.name for s in scenarios}]
        if not args.no_profile and profiled:
            meta["py_spy"] = _version([profiling.py_spy(), "--version"])
            summaries = profiling.profile(world, profiled, args.out, args.profile_duration,
                                          args.threads, args.connections,
                                          meta.setdefault("profile_check_results", {}))  # fmt: skip
    finally:
        world.stop()
        stop_all()

    meta["loadavg_after"] = loadavg()
    report.add_ratios(rows)
    gs = report.goals(rows)
    print()
    print(report.table(rows))
    print()
    print(report.goals_text(gs))
    report.write_json(args.out / "results.json", meta, rows, gs)
    report.write_markdown(args.out / "results.md", meta, rows, gs)
    report.write_png(args.out / "results.png", meta, rows)
    if summaries:
        profiling.write_profile_md(args.out / "PROFILE.md", summaries, rows, meta)
    print(f"\nwrote {args.out}/results.json, results.md, results.png"
          + (", PROFILE.md" if summaries else ""))  # fmt: skip
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
