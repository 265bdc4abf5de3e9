"""nginx for the benchmark: the shipped auth_request config, the same without it, and
the tiny upstream both proxy to.

- `shipped`: deploy/nginx/nginx.conf.tmpl as tests.stack.nginx renders it (authentik's
  snippet: `auth_request /outpost.goauthentik.io/auth/nginx`, the outpost location
  proxied to ext-authz's forward-auth port on kept-alive HTTP/1.1 connections),
  unchanged.
- `plain`: the same file with the authorization lines of `location /` taken out
  (`auth_request`, `error_page 401`, `auth_request_set`, `add_header Set-Cookie` and the
  `proxy_set_header` lines that copy the answer), so `nginx-plain` differs from
  `nginx-session` by the subrequest alone: same access log, buffers and proxying.
- `UpstreamNginx`: the application, a second nginx answering every request with
  `return 200 "ok\\n"` (access log off). The cheapest upstream there is here short of
  nginx answering itself, which `auth_request` cannot guard (`return` runs in the
  rewrite phase, before the access phase where auth_request asks): the gRPC rows'
  Envoy `direct_response` has no nginx equivalent behind auth_request. Both nginx rows
  pay for it alike; its CPU is reported apart (`upstream_cpu_us_per_request`).

nginx runs from Debian's nginx-light (1.22), one worker process each, as the shipped
config says.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.stack.nginx import BROWSER_TEMPLATE, Nginx, command
from tests.stack.proc import ManagedProcess, free_port, port_open

# Lines of `location / { ... }` that belong to the authorization (the shipped config
# names them in this form).
_AUTH_LINE = re.compile(
    r"^\s*(auth_request\s|auth_request_set\s|error_page\s+401\s|add_header\s+Set-Cookie\s"
    r"|proxy_set_header\s+(X-authentik-\S+|Authorization|Cookie)\s+\$(authentik|auth)_)",
    re.IGNORECASE,
)


def plain_template(text: str) -> str:
    """The shipped template without the authorization lines of `location / {}`."""
    out: list[str] = []
    depth_in_root: int | None = None  # brace depth inside `location / {`, None outside
    removed = 0
    for line in text.splitlines(keepends=True):
        code = line.split("#", 1)[0]
        if depth_in_root is None and re.match(r"^\s*location\s+/\s*\{", code):
            depth_in_root = 0
        if depth_in_root is not None:
            if _AUTH_LINE.match(code):
                removed += 1
                continue
            depth_in_root += code.count("{") - code.count("}")
            if depth_in_root <= 0 and "}" in code:
                depth_in_root = None
        out.append(line)
    text = "".join(out)
    if not removed or re.search(r"^\s*auth_request\s", text, re.MULTILINE):
        raise ValueError("nginx.conf.tmpl: `location /` no longer looks as bench.nginx expects")
    return text


def shipped(*, upstream: str, ext_authz: str, workdir: Path, listen_port: int,
            name: str) -> Nginx:  # fmt: skip
    return Nginx(upstream=upstream, ext_authz=ext_authz, workdir=workdir,
                 listen_port=listen_port, template=BROWSER_TEMPLATE, name=name)  # fmt: skip


def plain(*, upstream: str, workdir: Path, listen_port: int, name: str) -> Nginx:
    """nginx with the shipped config minus auth_request. Its outpost location still
    names a forward-auth address (never asked: no request goes there)."""
    template = Path(workdir) / "nginx-plain.conf.tmpl"
    template.write_text(plain_template(BROWSER_TEMPLATE.read_text()))
    return Nginx(upstream=upstream, ext_authz="127.0.0.1:9", workdir=workdir,
                 listen_port=listen_port, template=template, name=name)  # fmt: skip


UPSTREAM_CONF = """\
daemon off;
worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "ok\\n";
        }}
    }}
}}
"""


class UpstreamNginx:
    """The application both nginx rows proxy to: `200 ok` for everything."""

    def __init__(self, workdir: Path, port: int | None = None,
                 name: str = "bench-nginx-upstream") -> None:  # fmt: skip
        self.port = port if port is not None else free_port()
        self.prefix = Path(workdir) / name
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(name, command(self.prefix), self.prefix / "error.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self, timeout: float = 20.0) -> UpstreamNginx:
        (self.prefix / "nginx.conf").write_text(UPSTREAM_CONF.format(port=self.port))
        self.process.start(lambda: port_open("127.0.0.1", self.port), timeout,
                           f"nginx upstream listening on {self.port}")  # fmt: skip
        return self

    def stop(self) -> int | None:
        return self.process.stop()
