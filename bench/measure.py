"""Counting what a scenario cost: wrk's numbers, CPU and RSS from /proc, Redis and IdP.

- `run_wrk`: one bounded wrk run (`--latency`), parsed into requests, rate,
  percentiles and the non-2xx count.
- `ProcessTree`: a process and all its descendants (ext-authz's supervisor and its
  workers); CPU is utime+stime+cutime+cstime from /proc/PID/stat, summed over the
  tree (cutime covers children that exited in between, without double counting).
- `redis_commands`: INFO commandstats as {command: calls}.
- `check_results`: an ext-authz instance's own count of its decisions, from /metrics
  (`ext_authz_checks_total` by app, method, result and transport): what the Checks
  of a row decided (wrk counts a 302 as a success), and for nginx, which keeps no count
  of its auth subrequests, how many there were (`http_checks`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- wrk -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M))
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m or not pct:
        raise ValueError(f"cannot parse wrk output:\n{out}")
    requests = int(m.group(1))
    seconds = _ms(m.group(2) + m.group(3)) / 1000.0
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests=requests,
        seconds=seconds,
        rps=float(rps.group(1)) if rps else requests / seconds,
        p50_ms=_ms(pct["50"]),
        p90_ms=_ms(pct["90"]),
        p99_ms=_ms(pct["99"]),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(x) for x in sock.groups()) if sock else 0,
    )


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise FileNotFoundError("wrk is not installed (Debian: apt-get install wrk; `make apt`)")
    return found


def wrk_argv(
    url: str,
    *,
    duration: float,
    headers: Sequence[tuple[str, str]],
    script: Path | None = None,
    threads: int = 1,
    connections: int = 16,
) -> list[str]:
    argv = [wrk_binary(), "-t", str(threads), "-c", str(connections),
            "-d", f"{max(1, round(duration))}s", "--latency", "--timeout", "10s"]  # fmt: skip
    for name, value in headers:
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    return [*argv, url]


def run_wrk(argv: Sequence[str], timeout: float) -> WrkResult:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        # Never echo argv: it carries Authorization and Cookie values.
        raise RuntimeError(f"wrk exited {proc.returncode}: {proc.stderr.strip()[:500]}")
    return parse_wrk(proc.stdout)


# --- /proc -----------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # comm may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry))[1]) == pid:  # field 4: ppid
                kids.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _rss_bytes(pid: int) -> int:
    try:
        return int(_stat_fields(pid)[21]) * PAGE  # field 24: rss in pages
    except (OSError, ValueError, IndexError):
        return 0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat: how busy the whole machine
    was (our processes and everyone else's) between two readings."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg has them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class ProcessTree:
    """A root process and its descendants, found afresh on every call."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(_children(pid))
        return out

    def cpu_seconds(self) -> float:
        """utime+stime (+cutime+cstime: reaped children) of the whole tree."""
        ticks = 0
        for pid in self.pids():
            try:
                f = _stat_fields(pid)
            except OSError:
                continue
            ticks += sum(int(x) for x in f[11:15])  # fields 14-17
        return ticks / CLK_TCK

    def thread_cpu_seconds(self) -> dict[str, float]:
        """utime+stime per thread name over the tree ("main" for each process's main
        thread): which thread the CPU goes to (grpc.aio's poller, a Rust runtime)."""
        out: dict[str, float] = {}
        for pid in self.pids():
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                except OSError:
                    continue
                name = "main" if tid == str(pid) else text[text.index("(") + 1 : text.rindex(")")]
                f = text[text.rindex(")") + 2 :].split()
                out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / CLK_TCK
        return out

    def workers(self) -> list[int]:
        """The processes that serve Checks: the root alone, or (ext-authz
        `workers: N`) the spawned worker children, not the supervisor and not
        multiprocessing's resource tracker."""
        kids = [
            p for p in self.pids()[1:]
            if "spawn_main" in _cmdline(p) and "resource_tracker" not in _cmdline(p)
        ]  # fmt: skip
        return kids or [self.pid]

    def worker_rss_mb(self) -> list[float]:
        return [round(_rss_bytes(p) / 2**20, 1) for p in self.workers()]


# --- Redis -----------------------------------------------------------------------------


_CLIENTS: dict[int, redis.Redis] = {}


def redis_commands(port: int) -> dict[str, int]:
    """{command: calls} from INFO commandstats (our own INFO calls left out).

    One connection per port for the whole run, so our own connection handshake
    (HELLO) is not counted against a scenario."""
    client = _CLIENTS.get(port)
    if client is None:
        client = _CLIENTS[port] = redis.Redis(host="127.0.0.1", port=port)
    info = client.info("commandstats")
    out: dict[str, int] = {}
    for key, value in info.items():
        name = str(key).removeprefix("cmdstat_")
        if name == "info" or not isinstance(value, dict):
            continue
        out[name] = int(value.get("calls", 0))
    return out


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def idp_total(stats: dict[str, int]) -> int:
    """Requests to the IdP: endpoint counters only (`token:<grant>` splits `token`)."""
    return sum(v for k, v in stats.items() if ":" not in k)


# --- ext-authz's own count -------------------------------------------------------------


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def check_results(metrics_base_url: str) -> dict[str, int]:
    """{"transport app method result": Checks} from ext_authz_checks_total."""
    text = httpx.get(f"{metrics_base_url}/metrics", timeout=5.0).text
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("ext_authz_checks_total{"):
            labels, _, value = line.rpartition(" ")
            got = dict(_LABEL.findall(labels))
            key = " ".join(got.get(k, "?") for k in ("transport", "app", "method", "result"))
            out[key] = out.get(key, 0) + int(float(value))
    return out


def http_checks(results: dict[str, int]) -> int:
    """The Checks answered over HTTP forward auth, of a `check_results` reading."""
    return sum(n for key, n in results.items() if key.startswith("http "))
