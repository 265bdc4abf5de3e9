"""A private redis-server for tests: own port on 127.0.0.1, no persistence, restartable.

Fault tests kill and restart it, so the port stays the same across `stop()`/`start()`
and `.url` stays valid.  Never the shared Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import socket
from pathlib import Path

import redis

from tests.stack.proc import START_BOUND, ManagedProcess, free_port


def redis_ping(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> bool:
    """True when the server answers PING with PONG (raw RESP; no client library).

    A stopped server refuses at once; `timeout` only spares a live one on a busy
    machine (a short one made `assert server.ping()` fail when the server was slow)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`redis-server --port P --bind 127.0.0.1 --save "" --appendonly no`."""

    def __init__(self, workdir: Path, port: int | None = None, name: str = "redis") -> None:
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
        self.name = name
        data_dir = self.workdir / f"{name}-{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data_dir),
        ]  # fmt: skip
        self.process = ManagedProcess(name, argv, self.workdir / f"{name}-{self.port}.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def start(self, timeout: float = START_BOUND) -> RedisServer:
        self.process.start(lambda: redis_ping(self.port), timeout, f"redis PING on {self.port}")
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    def kill(self) -> int | None:
        """SIGKILL: the server vanishes mid-flight (connections reset)."""
        return self.process.kill()

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def ping(self) -> bool:
        return redis_ping(self.port)

    def client(self) -> redis.Redis:
        """A redis-py client of this server, for tests that look into the store."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def alive(self) -> bool:
        return self.process.alive()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
