"""Caddy for the test stack: render deploy/caddy/Caddyfile, validate, adapt, run.

Debian's `caddy` (2.6.2); `make deps` installs it. Each instance has a directory of
its own: the rendered Caddyfile, Caddy's storage, and HOME/XDG_* pointing there, so
Caddy never touches the user's config or data, and the admin endpoint is off (no port
2019 shared between runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.stack.proc import ROOT, ManagedProcess, free_port, port_open
from tests.stack.templates import render_file

TEMPLATE = ROOT / "deploy" / "caddy" / "Caddyfile"


def caddy_binary() -> Path:
    found = shutil.which("caddy")
    if not found:
        raise FileNotFoundError("no caddy binary: `make deps` (Debian caddy) as root")
    return Path(found)


def caddy_env(directory: Path) -> dict[str, str]:
    """HOME and XDG_* inside `directory`: Caddy keeps nothing outside it."""
    return {
        "HOME": str(directory),
        "XDG_CONFIG_HOME": str(directory / "config"),
        "XDG_DATA_HOME": str(directory / "data"),
    }


def render_config(
    *, listen_port: int, upstream: str, ext_authz: str, state_dir: Path, template: Path = TEMPLATE
) -> str:
    """The Caddyfile for these addresses (the placeholders atop the template)."""
    values = {
        "listen_port": listen_port,
        "upstream": upstream,
        "ext_authz": ext_authz,
        "state_dir": state_dir,
    }
    return render_file(template, values)


def _caddy(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(caddy_env(directory))
    return subprocess.run(
        [str(caddy_binary()), *args],
        capture_output=True,
        text=True,
        cwd=directory,
        env=env,
        timeout=60,
        check=False,
    )


def validate_config(path: Path) -> None:
    """`caddy validate` (adapts, then provisions every module without serving)."""
    proc = _caddy(path.parent, "validate", "--config", str(path), "--adapter", "caddyfile")
    if proc.returncode != 0:
        raise RuntimeError(f"caddy validate failed for {path}:\n{proc.stdout}\n{proc.stderr}")


def adapt_config(path: Path) -> dict[str, Any]:
    """`caddy adapt`: the JSON config Caddy runs for this Caddyfile."""
    proc = _caddy(path.parent, "adapt", "--config", str(path), "--adapter", "caddyfile")
    if proc.returncode != 0:
        raise RuntimeError(f"caddy adapt failed for {path}:\n{proc.stdout}\n{proc.stderr}")
    adapted: dict[str, Any] = json.loads(proc.stdout)
    return adapted


class Caddy:
    """One Caddy: the site proxies to `upstream` after asking `ext_authz`."""

    def __init__(
        self,
        *,
        upstream: str,
        ext_authz: str,
        workdir: Path,
        listen_port: int | None = None,
        template: Path = TEMPLATE,
        name: str = "caddy",
    ) -> None:
        self.upstream = upstream
        self.ext_authz = ext_authz
        self.template = template
        self.listen_port = listen_port if listen_port is not None else free_port()
        self.name = name
        self.directory = Path(workdir) / f"{name}-{self.listen_port}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "Caddyfile"
        self.process = ManagedProcess(
            name,
            [
                str(caddy_binary()), "run",
                "--config", str(self.config_path),
                "--adapter", "caddyfile",
            ],
            self.directory / "caddy.log",
            env=caddy_env(self.directory),
            cwd=self.directory,
        )  # fmt: skip

    def render(self) -> Path:
        self.config_path.write_text(
            render_config(
                listen_port=self.listen_port,
                upstream=self.upstream,
                ext_authz=self.ext_authz,
                state_dir=self.directory / "state",
                template=self.template,
            )
        )
        return self.config_path

    def validate(self) -> None:
        validate_config(self.render())

    def adapt(self) -> dict[str, Any]:
        return adapt_config(self.render())

    def start(self, timeout: float = 20.0) -> Caddy:
        self.render()
        self.process.start(
            lambda: port_open("127.0.0.1", self.listen_port),
            timeout,
            f"caddy listening on {self.listen_port}",
        )
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    def __enter__(self) -> Caddy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path
