"""Child processes of the test stack: ports, readiness, logs and clean shutdown.

Every server of the test world (redis-server, Envoy, the echo upstream, the IdP,
ext-authz replicas) is a `ManagedProcess`: its stdout and stderr go to one log file in
a work directory, it is ready when a caller-given probe says so (never after a sleep),
and it dies with a readable error that carries its log tail when it exits before
that.  A module-level registry knows every live process, so the pytest hook in
tests/conftest.py can print their log tails when a test fails, and an atexit hook
stops whatever is still running when the interpreter leaves.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# The repository root: child Python processes run from here so `-m tests.stack.x` and
# `-m ext_authz` import the working tree.
ROOT = Path(__file__).resolve().parents[2]

# How long a server of the test world may take to become ready. It bounds a failure
# only (a passing start goes on at the ready signal). The Node IdP, which starts in half
# a second even with both cores busy, twice stayed silent for the whole bound (20 s,
# then 60 s) with its SIGTERM handler not yet installed: a hang, not a slow start. A
# process that misses its bound while alive raises `StartHung` carrying `stuck()`.
START_BOUND = 60.0

_LIVE: dict[int, ManagedProcess] = {}
_LIVE_LOCK = threading.Lock()


class ProcessDied(RuntimeError):
    """A managed process exited (or never became ready); the message has its log tail."""


class StartHung(TimeoutError):
    """A managed process is alive but missed its deadline; the message says what it was
    doing (`ManagedProcess.stuck`)."""


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Where the test world's servers listen: below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999 by default). A port is checked here and
# bound later by a server process; in the ephemeral range any outgoing connection of
# the suite could take it in between (make run's nginx once failed to bind so).
EPHEMERAL_START = _ephemeral_start()
SERVER_PORTS = range(20000, min(32000, EPHEMERAL_START))
CLUSTER_BUS_OFFSET = 10000  # redis-server's cluster bus listens on port + 10000

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_rng = random.SystemRandom()  # not the `random` module's state, which tests may seed


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def reserve_ports(n: int, *, with_bus: bool = False) -> list[int]:
    """`n` distinct ports on 127.0.0.1, free a moment ago, from `SERVER_PORTS`, none
    handed out before by this process; with `with_bus`, port + `CLUSTER_BUS_OFFSET`
    is free too (and also below the ephemeral range)."""
    high = SERVER_PORTS.stop
    if with_bus:
        high = min(high, EPHEMERAL_START - CLUSTER_BUS_OFFSET)
    chosen: list[int] = []
    for _ in range(100 * n + 1000):
        port = _rng.randrange(SERVER_PORTS.start, high)
        with _handed_out_lock:
            if port in _handed_out:
                continue
            if not _bindable(port) or (with_bus and not _bindable(port + CLUSTER_BUS_OFFSET)):
                continue
            _handed_out.add(port)
        chosen.append(port)
        if len(chosen) == n:
            return chosen
    raise RuntimeError(f"found only {len(chosen)} of {n} free ports in {SERVER_PORTS}")


def free_port(*, with_bus: bool = False) -> int:
    """One port of `reserve_ports`."""
    return reserve_ports(1, with_bus=with_bus)[0]


def port_open(host: str, port: int) -> bool:
    """True when a TCP connection to host:port is accepted right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = START_BOUND) -> None:
    """Block until host:port accepts a TCP connection; TimeoutError after `timeout` s."""
    wait_until(lambda: port_open(host, port), timeout, f"{host}:{port} to accept connections")


def wait_until(
    probe: Callable[[], bool],
    timeout: float,
    what: str,
    process: ManagedProcess | None = None,
    interval: float = 0.05,
) -> None:
    """Poll `probe` until it returns True.

    Raises ProcessDied as soon as `process` (when given) has exited, and TimeoutError
    (with the process's log tail) when the deadline passes.  Exceptions from the probe
    count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and not process.alive():
            raise ProcessDied(
                f"{process.name} exited with {process.returncode} while waiting for {what}\n"
                f"--- {process.log_path} (last lines) ---\n{process.tail(60)}"
            )
        try:
            if probe():
                return
        except Exception:  # a failing probe only means "not ready yet"
            pass
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g}s waiting for {what}"
            if process is None:
                raise TimeoutError(message)
            raise StartHung(
                f"{message}\n--- {process.log_path} (last lines) ---\n{process.tail(60)}"
                f"\n--- what {process.name} was doing ---\n{process.stuck()}"
            )
        time.sleep(interval)


class ManagedProcess:
    """One child process with its log file.

    `start()` launches it and (when `ready` is given) waits for it; `stop()` sends
    SIGTERM, waits, then SIGKILLs; the process may be started again after `stop()`
    (the log file is appended to, with a marker line per start).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd if cwd is not None else ROOT
        self._popen: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(
        self,
        ready: Callable[[], bool] | None = None,
        timeout: float = START_BOUND,
        what: str = "",
    ) -> ManagedProcess:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            log.write(f"=== start {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            # A new session: Ctrl-C in the terminal of `make run` reaches only the
            # orchestrator, which then stops the children in order; and a stop can
            # reach the child's own children (ext-authz workers) through its group.
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
            )
        self.returncode = None
        with _LIVE_LOCK:
            _LIVE[id(self)] = self
        if ready is not None:
            try:
                wait_until(ready, timeout, what or f"{self.name} to be ready", process=self)
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL. Returns the exit code."""
        popen = self._popen
        if popen is None:
            return self.returncode
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(popen)
                popen.wait()
        self._finish(popen)
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL the process and its group right away (a crash, for fault tests)."""
        popen = self._popen
        if popen is None:
            return self.returncode
        if popen.poll() is None:
            self._kill_group(popen)
            popen.wait()
        self._finish(popen)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself; returns its exit code."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        code = self._popen.wait(timeout)
        self._finish(self._popen)
        return code

    def _finish(self, popen: subprocess.Popen[bytes]) -> None:
        self.returncode = popen.returncode
        # Stragglers in the group (workers of a supervisor that exited) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        with _LIVE_LOCK:
            _LIVE.pop(id(self), None)

    @staticmethod
    def _kill_group(popen: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                popen.kill()

    # -- inspection --------------------------------------------------------------------

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def stuck(self) -> str:
        """What a live process is doing, for a missed deadline: its scheduler state, CPU
        time and kernel wait channel from /proc and, with gdb on PATH, every thread's
        native stack. Also appended to its log, which outlives the test's report."""
        pid = self.pid
        if pid is None or not self.alive():
            return f"{self.name} is not running"
        lines: list[str] = []
        proc = Path(f"/proc/{pid}")
        with contextlib.suppress(OSError, IndexError, ValueError):
            status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
            lines.append(f"state: {status['State'].strip()}")
            # Fields after the command name, which may hold spaces: utime, stime are 14, 15.
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            user, system = int(fields[11]) / ticks, int(fields[12]) / ticks
            lines.append(f"cpu: {user:.2f}s user, {system:.2f}s system")
            lines.append(f"wchan: {(proc / 'wchan').read_text().strip() or '-'}")
        gdb = shutil.which("gdb")
        if gdb is None:
            lines.append("(no gdb on PATH: no native stacks)")
        else:
            try:
                out = subprocess.run(
                    [gdb, "-p", str(pid), "-batch", "-nx", "-ex", "thread apply all bt 40"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                stacks = [ln for ln in out.stdout.splitlines() if ln.startswith(("Thread", "#"))]
                lines.extend(stacks or [f"gdb printed no stack: {out.stderr.strip()[-500:]}"])
            except (OSError, subprocess.TimeoutExpired) as exc:
                lines.append(f"gdb failed: {exc!r}")
        text = "\n".join(lines)
        with contextlib.suppress(OSError), open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"=== {self.name} (pid {pid}) missed its deadline; it was doing:\n{text}\n")
        return text

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def tail(self, n: int = 60) -> str:
        """The last `n` lines of the log file (all starts of this process)."""
        try:
            with open(self.log_path, "rb") as f:
                lines = deque(f, maxlen=n)
        except FileNotFoundError:
            return ""
        return b"".join(lines).decode("utf-8", "replace")

    def read_log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.alive() else f"exited {self.returncode}"
        return f"<ManagedProcess {self.name} {state} log={self.log_path}>"


def live_processes() -> list[ManagedProcess]:
    """Every managed process that was started and not yet stopped."""
    with _LIVE_LOCK:
        return list(_LIVE.values())


def stop_all() -> None:
    """Stop every live process, newest first (Envoy before the services behind it)."""
    for proc in reversed(live_processes()):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5.0)


atexit.register(stop_all)
