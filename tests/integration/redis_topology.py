"""Private Redis topologies for the store tests: one server, a 3-master Cluster, and
master + replica + 3 Sentinels. Every process binds 127.0.0.1 on a free port, lives
in a temporary directory, is awaited by polling (never a fixed sleep) and is stopped
by `stop()` / the context managers, even when a test fails.

Independent of tests/stack on purpose (the brief asks for it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from ext_authz.adapters.redis_store import RedisStore
from tests.stack.proc import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, every: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # a server that is not up yet raises: keep polling
            pass
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class RedisProcess:
    """One redis-server (or sentinel) process on a fixed port, restartable."""

    def __init__(
        self,
        port: int,
        workdir: Path,
        extra: list[str] | None = None,
        *,
        conf: Path | None = None,
        sentinel: bool = False,
    ) -> None:
        self.port = port
        self.workdir = workdir
        self.extra = extra or []
        self.conf = conf
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2
        )

    def start(self, *, timeout: float = 60.0) -> RedisProcess:  # bounds a failure only
        args = [REDIS_SERVER]
        if self.conf is not None:
            args.append(str(self.conf))
        args += [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
        ]
        args += self.extra
        if self.sentinel:
            args.append("--sentinel")
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self._log = log
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        wait_until(self._pings, timeout=timeout, what=f"redis on port {self.port}")
        return self

    def _pings(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} exited: {self.proc.returncode}")
        with self.client() as c:
            return bool(c.ping())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            with contextlib.suppress(Exception):
                self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def kill(self) -> None:
        """SIGKILL: the crash a failover is for."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    paused = False

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hang)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def _workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisProcess]:
    with _workdir("ext-authz-redis-") as work:
        server = RedisProcess(free_port(), work)
        try:
            server.start()
            yield server
        finally:
            server.stop()


class Cluster:
    def __init__(self, nodes: list[RedisProcess]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[Cluster]:
    """`masters` cluster-enabled servers joined with `redis-cli --cluster create`.

    The node timeout is long (30 s): a master stopped by a test is never judged
    failed while the test runs, so the cluster does not turn CLUSTERDOWN (full
    coverage is required) at a moment that depends on how fast the machine is."""
    with _workdir("ext-authz-cluster-") as work:
        nodes: list[RedisProcess] = []
        try:
            for _ in range(masters):
                port = free_port(with_bus=True)
                node = RedisProcess(
                    port,
                    work,
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        "30000",
                    ],
                )
                nodes.append(node.start())
            subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *[f"127.0.0.1:{n.port}" for n in nodes],
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )

            def all_ok() -> bool:
                for n in nodes:
                    with n.client() as c:
                        info = c.execute_command("CLUSTER", "INFO")
                        text = info.decode() if isinstance(info, bytes) else str(info)
                        if "cluster_state:ok" not in text:
                            return False
                        if f"cluster_known_nodes:{masters}" not in text:
                            return False
                return True

            wait_until(all_ok, timeout=30, what="cluster_state:ok on every node", every=0.1)
            yield Cluster(nodes)
        finally:
            for node in nodes:
                node.stop()


class SentinelSetup:
    def __init__(
        self, master: RedisProcess, replica: RedisProcess, sentinels: list[RedisProcess], name: str
    ) -> None:
        self.master = master
        self.replica = replica
        self.sentinels = sentinels
        self.name = name

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def current_master_port(self) -> int:
        for s in self.sentinels:
            with contextlib.suppress(Exception), s.client() as c:
                addr = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
                if addr:
                    return int(addr[1])
        raise RuntimeError("no sentinel answered")


@contextlib.contextmanager
def redis_sentinel(
    name: str = "extauthz", *, down_after_ms: int = 30_000
) -> Iterator[SentinelSetup]:
    """A master, one replica and three Sentinels (quorum 2).

    `down_after_ms`: how long the master may not answer before the Sentinels fail it
    over. The default is long, so a master slowed down by a busy machine is never
    failed over under a test that does not expect it; a failover test passes a
    short one and kills the master itself."""
    with _workdir("ext-authz-sentinel-") as work:
        procs: list[RedisProcess] = []
        try:
            master = RedisProcess(free_port(), work, ["--repl-diskless-sync-delay", "0"]).start()
            procs.append(master)
            replica = RedisProcess(
                free_port(),
                work,
                ["--replicaof", "127.0.0.1", str(master.port), "--repl-diskless-sync-delay", "0"],
            ).start()
            procs.append(replica)

            def replica_synced() -> bool:
                with replica.client() as c:
                    info = c.info("replication")
                    return info.get("master_link_status") == "up"

            wait_until(replica_synced, timeout=20, what="replica link up", every=0.05)
            sentinels: list[RedisProcess] = []
            for _ in range(3):
                port = free_port()
                conf = work / f"sentinel-{port}.conf"
                conf.write_text(
                    f"sentinel monitor {name} 127.0.0.1 {master.port} 2\n"
                    f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
                    f"sentinel failover-timeout {name} 5000\n"
                    f"sentinel parallel-syncs {name} 1\n"
                )
                s = RedisProcess(port, work, conf=conf, sentinel=True).start()
                procs.append(s)
                sentinels.append(s)

            def sentinels_see_all() -> bool:
                for s in sentinels:
                    with s.client() as c:
                        info = c.sentinel_master(name)
                        if info["num-other-sentinels"] < 2 or info["num-slaves"] < 1:
                            return False
                return True

            wait_until(
                sentinels_see_all, timeout=30, what="sentinels discover each other", every=0.1
            )
            yield SentinelSetup(master, replica, sentinels, name)
        finally:
            for p in reversed(procs):
                p.stop()


class RedisHarness:
    """The store suite's harness (tests/integration/store_suite.py) over any topology:
    `open()` builds a RedisStore from `url`; `raw_entries()` scans every node."""

    def __init__(
        self, url: str, nodes: Callable[[], list[RedisProcess]], *, timeout: float = 5.0
    ) -> None:
        # The behaviour suite never waits for a timeout to fire: `timeout` only has
        # to be long enough that a live server on a busy machine never reaches it.
        self.url = url
        self.prefix = f"t-{uuid.uuid4().hex[:10]}:"
        self._nodes = nodes
        self.timeout = timeout

    def open(self, prefix: str | None = None) -> RedisStore:
        return RedisStore.from_url(
            self.url, key_prefix=self.prefix if prefix is None else prefix, timeout=self.timeout
        )

    async def raw_entries(self) -> dict[str, tuple[bytes | frozenset[str], float | None]]:
        return raw_entries(self._nodes(), self.prefix)


def raw_entries(
    nodes: list[RedisProcess], prefix: str
) -> dict[str, tuple[bytes | frozenset[str], float | None]]:
    """Every key under `prefix` on these servers: value (set members for sets) and
    remaining TTL in seconds (None: the key has no TTL)."""
    out: dict[str, tuple[bytes | frozenset[str], float | None]] = {}
    for node in nodes:
        with node.client() as c:
            for raw_key in c.scan_iter(match=prefix + "*", count=1000):
                key = raw_key.decode()
                kind = c.type(raw_key).decode()
                value: bytes | frozenset[str]
                if kind == "string":
                    got = c.get(raw_key)
                    if got is None:
                        continue
                    value = got
                elif kind == "set":
                    value = frozenset(m.decode() for m in c.smembers(raw_key))
                else:
                    continue
                pttl = c.pttl(raw_key)
                if pttl == -2:
                    continue
                out[key] = (value, None if pttl == -1 else pttl / 1000)
    return out
