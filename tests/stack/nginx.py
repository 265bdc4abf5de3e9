"""nginx for the test stack: render deploy/nginx/*.conf.tmpl, check it, run it.

Debian's `nginx-light` (1.22, with the auth_request module); `make deps` installs it.
Each instance has a prefix directory of its own (pid, logs, temp files, the rendered
config), so parallel runs never share anything, and nginx's error log is the
ManagedProcess log: the failure report of a test shows nginx's own complaints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.stack.proc import ROOT, ManagedProcess, free_port, port_open
from tests.stack.templates import render_file

CONFIG_DIR = ROOT / "deploy" / "nginx"
# authentik's snippet: unauthenticated requests are sent to sign in (error_page 401).
BROWSER_TEMPLATE = CONFIG_DIR / "nginx.conf.tmpl"
# The variant: only browser navigations are sent to sign in, API clients keep the 401.
API_401_TEMPLATE = CONFIG_DIR / "nginx-api-401.conf.tmpl"
TEMPLATES = (BROWSER_TEMPLATE, API_401_TEMPLATE)


def nginx_binary() -> Path:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if not found:
        raise FileNotFoundError("no nginx binary: `make deps` (Debian nginx-light) as root")
    return Path(found)


def render_config(
    *, listen_port: int, upstream: str, ext_authz: str, template: Path = BROWSER_TEMPLATE
) -> str:
    """The nginx.conf for these addresses (the placeholders atop the template)."""
    return render_file(
        template, {"listen_port": listen_port, "upstream": upstream, "ext_authz": ext_authz}
    )


def command(prefix: Path, *extra: str) -> list[str]:
    """nginx with everything relative under `prefix` (pid, logs, temp paths)."""
    argv = [str(nginx_binary()), "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    argv += ["-e", "error.log", *extra]
    if os.geteuid() == 0:
        # As root, workers would run as `nobody`, which cannot reach temp files under a
        # private test directory; the listener is on loopback only.
        argv += ["-g", "user root;"]
    return argv


def check_config(prefix: Path) -> None:
    """`nginx -t` on prefix/nginx.conf; RuntimeError with nginx's output on failure."""
    proc = subprocess.run(
        command(prefix, "-t"), capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"nginx -t failed for {prefix / 'nginx.conf'} (exit {proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}"
        )


class Nginx:
    """One nginx: the protected location proxies to `upstream` after asking `ext_authz`."""

    def __init__(
        self,
        *,
        upstream: str,
        ext_authz: str,
        workdir: Path,
        listen_port: int | None = None,
        template: Path = BROWSER_TEMPLATE,
        name: str = "nginx",
    ) -> None:
        self.upstream = upstream
        self.ext_authz = ext_authz
        self.template = template
        self.listen_port = listen_port if listen_port is not None else free_port()
        self.name = name
        self.prefix = Path(workdir) / f"{name}-{self.listen_port}"
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.config_path = self.prefix / "nginx.conf"
        # nginx appends its error log to the same file (relative to the prefix).
        self.process = ManagedProcess(name, command(self.prefix), self.prefix / "error.log")

    def render(self) -> Path:
        self.config_path.write_text(
            render_config(
                listen_port=self.listen_port,
                upstream=self.upstream,
                ext_authz=self.ext_authz,
                template=self.template,
            )
        )
        return self.config_path

    def validate(self) -> None:
        self.render()
        check_config(self.prefix)

    def start(self, timeout: float = 20.0) -> Nginx:
        self.render()
        self.process.start(
            lambda: port_open("127.0.0.1", self.listen_port),
            timeout,
            f"nginx listening on {self.listen_port}",
        )
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"
