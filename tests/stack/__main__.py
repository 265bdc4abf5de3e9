"""`python -m tests.stack` (what `make run` runs): the demo world on your machine.

Starts the echo upstream, the test IdP (when Node and tests/idp/node_modules are
there), one ext-authz replica (memory store unless --store) with the demo config of
tests.stack.demo, Envoy on 127.0.0.1:8080 asking it over gRPC (admin 127.0.0.1:9901),
and, asking its forward-auth port (SPEC §10), nginx on 127.0.0.1:8081 with authentik's
auth_request snippet (deploy/nginx) and Caddy on 127.0.0.1:8082 with authentik's
forward_auth snippet (deploy/caddy). Prints the URLs and demo credentials; runs until
Ctrl-C or SIGTERM, then stops everything. The same launchers and configs the tests use.

Browser sign-in behind nginx and Caddy uses applications `app-nginx` and `app-caddy`
(the same OIDC client as `app`, on host names of their own, so each front's session
cookie stays with its own host).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from tests.stack.caddy import Caddy
from tests.stack.demo import (
    ALICE,
    BOB,
    BOB_STATIC_TOKEN,
    OIDC_CLIENT_ID,
    Stack,
    build_idp,
    host_url,
    oidc_app,
)
from tests.stack.echo import EchoServer
from tests.stack.idp import IDP_DIR, IdP
from tests.stack.nginx import Nginx
from tests.stack.proc import ManagedProcess, stop_all

# The forward-auth fronts: (name, application of their own for browser sign-in).
FRONT_APPS = (("nginx", "app-nginx"), ("caddy", "app-caddy"))


def idp_available() -> tuple[bool, str]:
    if shutil.which("node") is None:
        return False, "`node` is not on PATH"
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        return False, f"{IDP_DIR / 'node_modules'} is missing (npm ci --prefix tests/idp)"
    return True, ""


def front_lines(name: str, port: int, app: str, idp: IdP | None) -> list[str]:
    whoami = host_url("whoami", port) + "/"
    lines = [
        "",
        f"  behind {name} (forward auth, authentik's snippet) on port {port}:",
        f"    curl -i -u {ALICE.username}:{ALICE.app_password} {whoami}",
        f"    curl -i -u {ALICE.username}:{ALICE.app_password} {whoami}admin/   # 200: admins",
        f"    curl -i -u {BOB.username}:{BOB.app_password} {whoami}admin/       # 403: not admins",
        f"    curl -i {whoami}public/hello                       # no auth",
    ]
    if idp is not None:
        lines.append(
            f"    browser: {host_url(app, port)}/   sign in as {ALICE.username} / "
            f"{ALICE.idp_password}"
        )
    return lines


def banner(stack: Stack, idp: IdP | None, workdir: Path, fronts: list[tuple[str, int, str]]) -> str:
    whoami = stack.url("whoami", "/")
    lines = [
        "",
        "ext-authz demo is up.",
        "",
        f"  whoami (directory users, Basic/Bearer): {whoami}",
        f"    curl -i {whoami}                                   # 401",
        f"    curl -i -u {ALICE.username}:{ALICE.app_password} {whoami}",
        f"    curl -i -u {BOB.username}:{BOB.app_password} {whoami}",
        f"    curl -i -u {ALICE.username}:{ALICE.app_password} {whoami}admin/   # 200: admins",
        f"    curl -i -u {BOB.username}:{BOB.app_password} {whoami}admin/       # 403: not admins",
        f"    curl -i -H 'Authorization: Bearer {BOB_STATIC_TOKEN}' {whoami}",
        f"    curl -i {stack.url('whoami', '/public/hello')}                       # no auth",
        f"    curl -i {stack.url('ctx', '/public-route/x')}          # ext_authz off",
    ]
    if idp is not None:
        app = stack.url("app", "/")
        lines += [
            "",
            f"  app (OIDC client {OIDC_CLIENT_ID} at the IdP {idp.issuer}):",
            f"    browser: {app}   sign in as {ALICE.username} / {ALICE.idp_password}",
            f"    curl -i -u {ALICE.username}:{ALICE.app_password} {app}   # authentik-style",
        ]
    else:
        lines += ["", "  (no IdP: application `app` and browser sign-in are not available)"]
    for name, port, app_name in fronts:
        lines += front_lines(name, port, app_name, idp)
    replica = stack.replicas[0]
    lines += [
        "",
        f"  Envoy admin:  {stack.envoy.admin_url}",
        f"  ext-authz:    grpc {replica.grpc_address}, forward auth "
        f"http://{replica.forward_auth_address}, metrics {replica.http_url}/metrics",
        f"  logs:         {workdir}",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stack", description=__doc__)
    parser.add_argument("--port", type=int, default=8080, help="Envoy listener (8080)")
    parser.add_argument("--admin-port", type=int, default=9901, help="Envoy admin (9901)")
    parser.add_argument("--nginx-port", type=int, help="nginx (--port + 1)")
    parser.add_argument("--caddy-port", type=int, help="Caddy (--port + 2)")
    parser.add_argument("--store", default="memory://", help="store url (memory://)")
    parser.add_argument("--no-idp", action="store_true", help="run without the IdP")
    parser.add_argument("--workdir", type=Path, help="configs and logs (a new temp dir)")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ext-authz-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    ports = {
        "nginx": args.nginx_port or args.port + 1,
        "caddy": args.caddy_port or args.port + 2,
    }
    fronts = [(name, ports[name], app) for name, app in FRONT_APPS]
    started: list[EchoServer | IdP | Stack | Nginx | Caddy] = []
    try:
        echo = EchoServer(workdir).start()
        started.append(echo)
        idp: IdP | None = None
        ok, why = idp_available()
        if args.no_idp:
            print("running without the IdP (--no-idp)", flush=True)
        elif not ok:
            print(f"running without the IdP: {why}", flush=True)
        else:
            extra = [host_url(app, port) for _, port, app in fronts]
            idp = build_idp(workdir, [args.port], extra_hosts=extra).start()
            started.append(idp)
        overrides = None
        if idp is not None:
            overrides = {
                "applications": {app: oidc_app(port, idp.issuer, app) for _, port, app in fronts}
            }
        stack = Stack(
            workdir=workdir,
            echo=echo,
            envoy_port=args.port,
            admin_port=args.admin_port,
            idp=idp,
            store_url=args.store,
            config_overrides=overrides,
            name="demo",
        )
        stack.start()
        started.append(stack)
        upstream = f"127.0.0.1:{echo.port}"
        asking = stack.replicas[0].forward_auth_address
        nginx = Nginx(
            upstream=upstream, ext_authz=asking, workdir=workdir, listen_port=ports["nginx"]
        ).start()
        started.append(nginx)
        caddy = Caddy(
            upstream=upstream, ext_authz=asking, workdir=workdir, listen_port=ports["caddy"]
        ).start()
        started.append(caddy)
        print(banner(stack, idp, workdir, fronts), flush=True)

        watched: list[ManagedProcess] = [echo.process, stack.envoy.process]
        watched += [r.process for r in stack.replicas]
        watched += [nginx.process, caddy.process]
        if idp is not None:
            watched.append(idp.process)
        while not stopping.wait(0.5):
            for proc in watched:
                if not proc.alive():
                    print(
                        f"\n{proc.name} exited ({proc.returncode}); last lines of "
                        f"{proc.log_path}:\n{proc.tail(40)}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
        print("stopping ...", flush=True)
        return 0
    except Exception as exc:
        print(f"the demo did not start: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for part in reversed(started):
            part.stop()
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
