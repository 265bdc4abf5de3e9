"""Where the CPU goes: py-spy samples of the authorizer under load, summarised.

For each profiled scenario wrk drives load while `py-spy record --nonblocking`
samples the authorizer process (ext-authz workers 1, or the allow-all floor): once
as collapsed stacks (`--format raw`, summarised here into self and inclusive shares
per function and per area) and, for the ext-authz scenarios, once more as a
flamegraph SVG. The summary attributes the scenario's measured CPU per Check to
areas by their sample shares, and subtracts the floor's (for the HTTP forward-auth
rows `http-*`, the HTTP floor's: the allow-all httptools server), which shows where
the time above the floor goes. py-spy sees Python threads only: time in gRPC's C core
threads without a Python frame is not in the samples (it is in the CPU figures).

PROFILE.md is regenerated on every run; text after the line `<!-- notes -->` is
kept (hand-written analysis survives a re-run).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.runner import wrk_for
from bench.scenarios import BY_NAME
from bench.world import World

NOTES_MARK = "<!-- notes -->"
_ROOT = str(Path(__file__).resolve().parents[1]) + "/"  # this checkout (main or a worktree)
# Flamegraphs: the two cached paths of issue 7, and the cached session over HTTP (issue 10).
SVG = ("session", "basic-app", "http-session")
HTTP_FLOOR = "http-floor"
# Native leaf frames that are waiting, not working (py-spy --native cannot tell idle).
IDLE_NATIVE = ("epoll_wait", "epoll_pwait", "poll", "select")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")

# (area, substring of the file path); the first match wins.
AREAS: tuple[tuple[str, str], ...] = (
    ("ext_authz.adapters.redis_store", "ext_authz/adapters/redis"),
    ("ext_authz.adapters.envoy (protobuf <-> values)", "ext_authz/adapters/envoy"),
    ("ext_authz.adapters.grpc_servicer", "ext_authz/adapters/grpc_servicer"),
    ("ext_authz.adapters.http_server (httptools protocol)", "ext_authz/adapters/http_server"),
    ("ext_authz.adapters.forward_auth (dialects)", "ext_authz/adapters/forward_auth"),
    ("ext_authz.adapters (other)", "ext_authz/adapters/"),
    ("ext_authz.core", "ext_authz/core/"),
    ("ext_authz.service", "ext_authz/service.py"),
    ("ext_authz.sessions", "ext_authz/sessions.py"),
    ("ext_authz.local_cache", "ext_authz/local_cache.py"),
    ("ext_authz.crypto", "ext_authz/crypto.py"),
    ("ext_authz.logs", "ext_authz/logs.py"),
    ("ext_authz (other)", "ext_authz/"),
    ("prometheus_client", "prometheus_client/"),
    ("redis-py", "/redis/"),
    ("grpc (aio, cython)", "grpc"),
    ("protobuf", "google/protobuf"),
    ("asyncio event loop (incl. selectors/epoll)", "asyncio/"),
    ("asyncio event loop (incl. selectors/epoll)", "selectors.py"),
    ("logging", "logging/"),
    ("allow-all servicer", "tests/stack/allow_all"),
    ("allow-all httptools server", "bench/http_servers"),
)


# Python-level leaves whose self time is C/Cython code py-spy cannot see without
# --native: callbacks the event loop runs (grpc aio's Cython, C Task steps) and the
# grpc poller thread.
_OPAQUE_AREA = "C/Cython run by the loop or poller thread (grpc aio, C Task steps)"
OPAQUE = {"Handle._run": _OPAQUE_AREA, "Thread.run": _OPAQUE_AREA}

NATIVE_AREAS: tuple[tuple[str, str], ...] = (
    ("libc (syscalls: write, sendmsg, futex, ...)", "libc.so"),
    ("httptools / llhttp", "httptools"),
    ("grpc C core / cygrpc", "cygrpc"),
    ("protobuf upb", "_message"),
    ("CPython interpreter", "python3"),
    ("CPython interpreter", "libpython"),
)


def area_of(file: str) -> str:
    if not file.endswith(".py") and "<" not in file:
        for area, needle in NATIVE_AREAS:
            if needle in file:
                return area
        return "other native"
    for area, needle in AREAS:
        if needle in file:
            return area
    return "other (stdlib, builtins)"


@dataclass(frozen=True)
class Summary:
    samples: int
    self_by_func: list[tuple[str, int]]
    total_by_func: list[tuple[str, int]]
    self_by_area: list[tuple[str, int]]


def summarise(raw: str, native: bool = False) -> Summary:
    """Self (leaf) and inclusive sample counts from py-spy's collapsed stacks
    (native: leaf frames that only wait, IDLE_NATIVE, are left out)."""
    self_func: Counter[str] = Counter()
    total_func: Counter[str] = Counter()
    self_area: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part.strip())
            if m:  # thread / process labels have no "(file)"
                frames.append((m.group("func"), _short(m.group("file"))))
        if not frames or (native and frames[-1][0] in IDLE_NATIVE):
            continue
        samples += count
        func, file = frames[-1]
        self_func[f"{func} ({file})"] += count
        self_area[OPAQUE.get(func, area_of(file)) if not native else area_of(file)] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            total_func[name] += count
    return Summary(samples, self_func.most_common(), total_func.most_common(),
                   self_area.most_common())  # fmt: skip


def _short(file: str) -> str:
    for marker in ("site-packages/", _ROOT, "/work/main/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise FileNotFoundError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def _record(world: World, scenario: str, pid: int, out: Path, fmt: str, duration: float,
            threads: int, connections: int, native: bool = False) -> None:  # fmt: skip
    s = BY_NAME[scenario]
    load = subprocess.Popen(
        wrk_for(world, s, duration + 3, threads, connections),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # let wrk reach steady load before sampling (not a readiness wait)
        argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(round(duration)),
                "--format", fmt, "-o", str(out)]  # fmt: skip
        # --native needs blocking sampling (the process pauses per sample): a lower rate.
        argv += ["--native", "--rate", "100"] if native else ["--nonblocking", "--rate", "250"]
        if fmt == "raw":
            argv.append("--nolineno")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                              check=False)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"py-spy failed ({proc.returncode}): {proc.stderr[-500:]}")
    finally:
        load.wait(timeout=duration + 30)


def profile(world: World, scenarios: Sequence[str], outdir: Path, duration: float,
            threads: int, connections: int,
            decisions: dict[str, dict[str, int]] | None = None,
            ) -> dict[str, tuple[Summary, Summary]]:  # fmt: skip
    """{scenario: (Python-level summary, native summary)}. `decisions` receives, per
    scenario, what ext-authz decided while it was sampled (so a profile of a cached
    path is known to be one)."""
    out: dict[str, tuple[Summary, Summary]] = {}
    for name in scenarios:
        tree = world.authz_tree(BY_NAME[name])
        if tree is None:
            continue
        before = world.check_results(BY_NAME[name])
        raw = outdir / f"profile-{name}.txt"
        print(f"  profiling {name} ({duration:g} s) ...", flush=True)
        _record(world, name, tree.pid, raw, "raw", duration, threads, connections)
        native = outdir / f"profile-{name}-native.txt"
        _record(world, name, tree.pid, native, "raw", duration, threads, connections, True)
        if name in SVG:
            _record(world, name, tree.pid, outdir / f"profile-{name}.svg", "flamegraph",
                    duration, threads, connections)  # fmt: skip
        out[name] = (summarise(raw.read_text()), summarise(native.read_text(), native=True))
        after = world.check_results(BY_NAME[name])
        if decisions is not None and before is not None and after is not None:
            decisions[name] = {k: n - before.get(k, 0) for k, n in after.items()
                               if n - before.get(k, 0)}  # fmt: skip
    return out


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "-"


def _area_table(
    summary: Summary, scpu: float | None, floor: Summary | None, floor_cpu: float | None
) -> list[str]:
    lines = ["| area | share | µs/Check | floor share | floor µs/Check | Δ µs |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    floor_area = dict(floor.self_by_area) if floor else {}
    areas = dict(summary.self_by_area)
    for area in sorted(set(areas) | set(floor_area), key=lambda a: -areas.get(a, 0)):
        n, fn = areas.get(area, 0), floor_area.get(area, 0)
        us = scpu * n / summary.samples if scpu and summary.samples else None
        fus = floor_cpu * fn / floor.samples if floor and floor_cpu and floor.samples else None
        delta = us - fus if us is not None and fus is not None else None
        cells = [
            area,
            _pct(n, summary.samples),
            _num(us),
            _pct(fn, floor.samples) if floor else "-",
            _num(fus),
            _num(delta, "+.0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _func_table(summary: Summary, top: int, floor: Summary | None = None) -> list[str]:
    floor_self = dict(floor.self_by_func) if floor else {}
    lines = ["| function | self | floor self |", "|---|---|---|"]
    for f, n in summary.self_by_func[:top]:
        fn = floor_self.get(f)
        lines.append(f"| `{f}` | {_pct(n, summary.samples)} | "
                     f"{_pct(fn, floor.samples) if floor and fn else '-'} |")  # fmt: skip
    return lines


def write_profile_md(path: Path, summaries: dict[str, tuple[Summary, Summary]],
                     rows: Sequence[dict[str, Any]], meta: dict[str, Any],
                     top: int = 15) -> None:  # fmt: skip
    notes = ""
    if path.exists() and NOTES_MARK in path.read_text():
        notes = path.read_text().split(NOTES_MARK, 1)[1]
    cpu = {r["scenario"]: r.get("cpu_us_per_check") for r in rows}
    lines = [
        "# Where the time goes (py-spy)",
        "",
        f"Run {meta['started']}, {meta.get('py_spy', 'py-spy')}, on the authorizer process "
        f"while wrk drives the scenario (wrk -c{meta['wrk_connections']}, as in the table; "
        "a separate pass after the measured runs). Two recordings per scenario:",
        "",
        "- Python level: `record --nonblocking --rate 250` (idle excluded). Self time of "
        "`Handle._run` and `Thread.run` is C/Cython py-spy cannot see at this level "
        "(grpc aio's Cython callbacks, C Task steps, the grpc poller thread): shown as "
        "one area. Raw stacks: `profile-<scenario>.txt`; flamegraphs: "
        "`profile-<scenario>.svg`.",
        "- Native: `record --native --rate 100` (blocking; leaf frames waiting in "
        f"{', '.join(IDLE_NATIVE)} left out as idle). Raw: `profile-<scenario>-native.txt`.",
        "",
        "µs/Check = sample share x the scenario's measured CPU per Check (results.json); "
        "samples cover Python threads only, so these are approximate.",
        "",
    ]
    for name, (summary, native) in summaries.items():
        if name in ("floor", HTTP_FLOOR):
            continue
        base = _baseline(name, summaries)
        floor, floor_native = summaries.get(base, (None, None))
        floor_cpu = cpu.get(base)
        scpu = cpu.get(name)
        lines += [f"## {name}: {scpu} µs/Check vs {base} {floor_cpu} µs/Check", ""]
        if scpu and floor_cpu:
            lines += [f"Above {base}: {scpu - floor_cpu:.0f} µs/Check "
                      f"({scpu / floor_cpu:.2f}x).", ""]  # fmt: skip
        decided = meta.get("profile_check_results", {}).get(name)
        if decided:
            lines += ["Decisions while sampled (transport app method result: Checks): "
                      + ", ".join(f"`{k}`: {n}" for k, n in sorted(decided.items())), ""]
            if any(not k.endswith(" allow") for k in decided):
                lines += ["**Not every Check was allowed while sampled: this profile is "
                          "not only of the path its row measured.**", ""]
        lines += ["### By area, Python level (self time)", ""]
        lines += _area_table(summary, scpu, floor, floor_cpu)
        lines += ["", "### By area, native (self time)", ""]
        lines += _area_table(native, scpu, floor_native, floor_cpu)
        lines += ["", f"### Top {top} functions, Python level, self time", ""]
        lines += _func_table(summary, top, floor)
        ours = [(f, n) for f, n in summary.total_by_func
                if "ext_authz/" in f and "ext_authz/cli.py" not in f
                and "ext_authz/__main__" not in f and "serve (" not in f]  # fmt: skip
        lines += ["", f"### Top {top} ext_authz functions, inclusive", "",
                  "| function | inclusive |", "|---|---|"]  # fmt: skip
        lines += [f"| `{f}` | {_pct(n, summary.samples)} |" for f, n in ours[:top]]
        lines += ["", f"### Top {top} native frames, self time", ""]
        lines += _func_table(native, top, floor_native)
        lines.append("")
    for base, title in (("floor", "allow-all servicer"),
                        (HTTP_FLOOR, "allow-all httptools server behind http_service")):
        if base not in summaries:
            continue
        floor, floor_native = summaries[base]
        floor_cpu = cpu.get(base)
        lines += [f"## {base} ({title}): {floor_cpu} µs/Check", "",
                  "### By area, Python level", ""]  # fmt: skip
        lines += _area_table(floor, floor_cpu, None, None)
        lines += ["", "### By area, native", ""]
        lines += _area_table(floor_native, floor_cpu, None, None)
        lines += ["", f"### Top {top} functions, Python level, self time", ""]
        lines += _func_table(floor, top)
        lines += ["", f"### Top {top} native frames, self time", ""]
        lines += _func_table(floor_native, top)
        lines.append("")
    lines += [NOTES_MARK, notes.strip("\n") or "", ""]
    path.write_text("\n".join(lines))


def _baseline(name: str, summaries: dict[str, tuple[Summary, Summary]]) -> str:
    """The floor a profiled row is read against: the HTTP floor for `http-*` rows."""
    return HTTP_FLOOR if name.startswith("http-") and HTTP_FLOOR in summaries else "floor"


def rebuild(outdir: Path) -> None:
    """Rewrite PROFILE.md from results.json and the profile-*.txt files already there
    (`python -m bench.profile [DIR]`): for changing the summary without re-running."""
    import json

    data = json.loads((outdir / "results.json").read_text())
    summaries: dict[str, tuple[Summary, Summary]] = {}
    for name in ("floor", *[n for n in BY_NAME if n != "floor"]):
        raw, native = outdir / f"profile-{name}.txt", outdir / f"profile-{name}-native.txt"
        if raw.exists() and native.exists():
            summaries[name] = (
                summarise(raw.read_text()),
                summarise(native.read_text(), native=True),
            )
    write_profile_md(outdir / "PROFILE.md", summaries, data["scenarios"], data["meta"])


if __name__ == "__main__":
    rebuild(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("results"))
