"""The test stack itself: real Envoy + the allow-all servicer + echo, and Redis.

If these fail, every e2e test is suspect: they check that the rendered Envoy config
is valid, that requests reach the upstream through ext_authz, that Envoy health-checks
the servicer over gRPC, and that Envoy fails closed (503, never 200) without it.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack.allow_all import AllowAllServer
from tests.stack.demo import ALICE, BOB
from tests.stack.echo import EchoServer
from tests.stack.envoy import Envoy, render_config
from tests.stack.proc import (
    CLUSTER_BUS_OFFSET,
    EPHEMERAL_START,
    SERVER_PORTS,
    ManagedProcess,
    ProcessDied,
    free_port,
    live_processes,
    reserve_ports,
)
from tests.stack.redis import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def allow_all(workdir: Path) -> Iterator[AllowAllServer]:
    server = AllowAllServer(workdir).start()
    yield server
    server.stop()


@pytest.fixture
def envoy(workdir: Path, allow_all: AllowAllServer, echo_server: EchoServer) -> Iterator[Envoy]:
    proxy = Envoy(
        ext_authz_ports=[allow_all.port],
        echo_port=echo_server.port,
        workdir=workdir,
        context_app="whoami",
    ).start()
    yield proxy
    proxy.stop()


def test_server_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    ports = reserve_ports(50) + [free_port() for _ in range(50)]
    assert len(set(ports)) == 100
    assert all(p in SERVER_PORTS and p < EPHEMERAL_START for p in ports)
    for port in reserve_ports(20, with_bus=True):
        assert port + CLUSTER_BUS_OFFSET < EPHEMERAL_START
        with socket.socket() as s:
            s.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))  # free too


def test_rendered_config_passes_envoy_validate(workdir: Path) -> None:
    proxy = Envoy(
        ext_authz_ports=[free_port(), free_port()],
        echo_port=free_port(),
        workdir=workdir,
        context_app="whoami",
    )
    proxy.validate()  # raises with Envoy's output when invalid
    text = proxy.config_path.read_text()
    assert "${" not in text
    assert '"ext_authz_app": "whoami"' in text


def test_render_without_context_app_sends_no_extensions() -> None:
    text = render_config(listen_port=1, admin_port=0, ext_authz_ports=[2], echo_port=3)
    assert "context_extensions: {}" in text
    with pytest.raises(ValueError):
        render_config(listen_port=1, admin_port=0, ext_authz_ports=[], echo_port=3)


def test_request_reaches_echo_through_ext_authz(envoy: Envoy) -> None:
    r = httpx.get(
        f"{envoy.url}/some/path?q=1",
        headers=[("x-probe", "one"), ("x-probe", "two"), ("host", "whoami.localhost")],
    )
    assert r.status_code == 200
    seen = r.json()
    assert seen["method"] == "GET"
    assert seen["path"] == "/some/path?q=1"
    # Envoy forwards repeated headers as separate lines and adds a request id.
    assert seen["headers"]["x-probe"] == ["one", "two"]
    assert seen["headers"]["host"] == ["whoami.localhost"]
    assert seen["headers"]["x-request-id"][0]
    assert envoy.stats("ext_authz")["http.ingress_http.ext_authz.ok"] >= 1


def test_echo_serves_html_to_browsers(envoy: Envoy) -> None:
    r = httpx.get(f"{envoy.url}/page", headers={"accept": "text/html,*/*"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<title>echo</title>" in r.text
    assert "&quot;path&quot;: &quot;/page&quot;" in r.text


def test_envoy_health_checks_the_servicer_over_grpc(
    envoy: Envoy, allow_all: AllowAllServer
) -> None:
    assert envoy.cluster_health() == [(allow_all.address, True)]
    assert envoy.stats("ext_authz.health_check")["cluster.ext_authz.health_check.success"] >= 1


def test_envoy_fails_closed_without_the_servicer(envoy: Envoy, allow_all: AllowAllServer) -> None:
    assert httpx.get(f"{envoy.url}/").status_code == 200
    allow_all.stop()
    # At once (connection refused, before health checking notices) and after Envoy
    # marked the endpoint unhealthy: always status_on_error, never the upstream.
    codes = [httpx.get(f"{envoy.url}/x").status_code for _ in range(10)]
    envoy.wait_healthy(timeout=30, healthy=False)
    codes += [httpx.get(f"{envoy.url}/x").status_code for _ in range(10)]
    assert set(codes) == {503}
    # The per-route opt-out on ctx.localhost never asks ext_authz, so it still passes.
    r = httpx.get(f"{envoy.url}/public-route/a", headers={"host": "ctx.localhost"})
    assert r.status_code == 200
    assert httpx.get(f"{envoy.url}/other", headers={"host": "ctx.localhost"}).status_code == 503


def test_two_replicas_survive_losing_one(workdir: Path, echo_server: EchoServer) -> None:
    a = AllowAllServer(workdir).start()
    b = AllowAllServer(workdir).start()
    proxy = Envoy(ext_authz_ports=[a.port, b.port], echo_port=echo_server.port, workdir=workdir)
    try:
        proxy.start()
        assert sorted(h for _, h in proxy.cluster_health()) == [True, True]
        a.kill()
        # Retries on connect failure (other host) hide the crash before health
        # checking takes the dead replica out.
        codes = [httpx.get(f"{proxy.url}/r{i}").status_code for i in range(40)]
        assert set(codes) == {200}
    finally:
        proxy.stop()
        a.stop()
        b.stop()


def test_redis_ping_and_restart_on_the_same_port(workdir: Path) -> None:
    server = RedisServer(workdir).start()
    try:
        port = server.port
        assert server.ping()
        assert server.url == f"redis://127.0.0.1:{port}/0"
        server.stop()
        assert not server.ping()
        server.start()
        assert server.port == port
        assert server.ping()
        server.kill()
        assert not server.ping()
        server.restart()
        assert server.ping()
    finally:
        server.stop()
    assert server.process not in live_processes()


def test_a_process_that_dies_early_raises_with_its_log(workdir: Path) -> None:
    proc = ManagedProcess(
        "dies",
        [sys.executable, "-c", "import sys; print('boom-marker'); sys.exit(3)"],
        workdir / "dies.log",
    )
    with pytest.raises(ProcessDied, match="boom-marker"):
        proc.start(ready=lambda: False, timeout=10)
    assert proc.returncode == 3
    assert proc not in live_processes()


def test_make_stack_runs_the_demo_world(make_stack: Any) -> None:
    stack = make_stack(idp=False, store="redis", replicas=2)
    assert make_stack(idp=False, store="redis", replicas=2) is stack  # cached per parameters
    assert [h for _, h in stack.envoy.cluster_health()] == [True, True]
    assert stack.url("whoami", "/x") == f"http://whoami.localhost:{stack.port}/x"
    assert stack.get("whoami", "/").status_code == 401
    r = stack.get("whoami", "/", auth=(ALICE.username, ALICE.app_password))
    assert r.status_code == 200
    assert r.json()["headers"]["x-authentik-username"] == [ALICE.username]
    assert stack.get("whoami", "/public/x").status_code == 200
    # The demo's access rules (make run prints these curl lines): /admin/ is for admins.
    admin = stack.get("whoami", "/admin/", auth=(ALICE.username, ALICE.app_password))
    assert admin.status_code == 200
    refused = stack.get("whoami", "/admin/", auth=(BOB.username, BOB.app_password))
    assert refused.status_code == 403
    assert "x-authentik-username" not in refused.headers
    assert stack.get("whoami", "/", auth=(BOB.username, BOB.app_password)).status_code == 200
