"""One ext-authz replica as a child process: `python -m ext_authz serve -c FILE`.

The launcher writes the given config dict as YAML (filling `server.listen`,
`server.http_listen` and `server.forward_auth_listen` with free loopback ports unless
given; an empty `http_listen` or `forward_auth_listen` stays off) and is ready when
grpc.health.v1 says SERVING for envoy.service.auth.v3.Authorization and the
forward-auth port accepts connections.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.stack.allow_all import grpc_serving
from tests.stack.proc import START_BOUND, ManagedProcess, free_port, port_open

AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


class ExtAuthz:
    """An ext-authz replica; `.config` is the dict actually written (ports filled)."""

    _count = 0

    def __init__(
        self,
        config: Mapping[str, Any],
        workdir: Path,
        port: int | None = None,
        http_port: int | None = None,
        env: Mapping[str, str] | None = None,
        forward_auth_port: int | None = None,
        name: str | None = None,
        *,
        config_file: bool = True,
    ) -> None:
        """`config_file=False`: the environment-only start of an outpost (SPEC §11,
        `serve` with no -c): the ports go to EXT_AUTHZ_LISTEN, EXT_AUTHZ_HTTP_LISTEN and
        EXT_AUTHZ_FORWARD_AUTH_LISTEN, and `env` holds AUTHENTIK_HOST, AUTHENTIK_TOKEN
        and the rest; nothing else of `config` is used."""
        ExtAuthz._count += 1
        self.name = name or f"ext-authz-{ExtAuthz._count}"
        self.workdir = Path(workdir)
        self.config: dict[str, Any] = copy.deepcopy(dict(config))
        server = self.config.setdefault("server", {})
        if port is not None or not server.get("listen"):
            server["listen"] = f"127.0.0.1:{port if port is not None else free_port()}"
        if http_port is not None or "http_listen" not in server:
            server["http_listen"] = (
                f"127.0.0.1:{http_port if http_port is not None else free_port()}"
            )
        if forward_auth_port is not None or "forward_auth_listen" not in server:
            server["forward_auth_listen"] = (
                f"127.0.0.1:{forward_auth_port if forward_auth_port is not None else free_port()}"
            )
        self.port = _port_of(server["listen"])
        self.http_port: int | None = (
            _port_of(server["http_listen"]) if server["http_listen"] else None
        )
        self.forward_auth_port: int | None = (
            _port_of(server["forward_auth_listen"]) if server["forward_auth_listen"] else None
        )
        self.config_path = self.workdir / f"{self.name}.yaml"
        self.config_file = config_file
        argv = [sys.executable, "-m", "ext_authz", "serve"]
        if config_file:
            argv += ["-c", str(self.config_path)]
        else:
            env = {
                **(env or {}),
                "EXT_AUTHZ_LISTEN": server["listen"],
                "EXT_AUTHZ_HTTP_LISTEN": server["http_listen"],
                "EXT_AUTHZ_FORWARD_AUTH_LISTEN": server["forward_auth_listen"],
            }
        self.env = dict(env or {})
        self.process = ManagedProcess(self.name, argv, self.workdir / f"{self.name}.log", env=env)

    # -- addresses ---------------------------------------------------------------------

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def forward_auth_address(self) -> str:
        """127.0.0.1:P of the forward-auth port (ValueError when turned off)."""
        if self.forward_auth_port is None:
            raise ValueError(f"{self.name} has server.forward_auth_listen off")
        return f"127.0.0.1:{self.forward_auth_port}"

    @property
    def http_url(self) -> str | None:
        """http://127.0.0.1:P of /metrics, /healthz, /readyz; None when turned off."""
        return f"http://127.0.0.1:{self.http_port}" if self.http_port else None

    @property
    def forward_auth_url(self) -> str | None:
        """http://127.0.0.1:P of forward auth (SPEC §10); None when turned off."""
        return f"http://127.0.0.1:{self.forward_auth_port}" if self.forward_auth_port else None

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    # -- lifecycle ---------------------------------------------------------------------

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.config_file:
            self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return self.config_path

    def start(self, timeout: float = START_BOUND) -> ExtAuthz:
        self.write_config()

        def ready() -> bool:
            # gRPC turns SERVING before the forward-auth listener is bound.
            return grpc_serving(self.grpc_address, AUTHORIZATION_SERVICE) and (
                self.forward_auth_port is None or port_open("127.0.0.1", self.forward_auth_port)
            )

        what = f"{self.name} health SERVING on {self.grpc_address}"
        if self.forward_auth_port is not None:
            what += f" and forward auth on 127.0.0.1:{self.forward_auth_port}"
        self.process.start(ready, timeout, what)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (drain), then SIGKILL after `timeout` s. Returns the exit code."""
        return self.process.stop(timeout)

    def kill(self) -> int | None:
        """SIGKILL: a crash, no draining."""
        return self.process.kill()

    def restart(self, timeout: float = START_BOUND) -> ExtAuthz:
        self.stop()
        return self.start(timeout)

    def alive(self) -> bool:
        return self.process.alive()

    # -- logs --------------------------------------------------------------------------

    def logs(self) -> str:
        """Everything the process wrote (all starts)."""
        return self.process.read_log()

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines, parsed (other lines skipped)."""
        records: list[dict[str, Any]] = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    records.append(value)
        return records

    def __enter__(self) -> ExtAuthz:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
