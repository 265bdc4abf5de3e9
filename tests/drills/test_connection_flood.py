"""Drill (issue 19): 5,000 idle connections and 200 slowloris heads against the
forward-auth port, while a valid user through the shipped nginx config and through
Envoy `http_service` keeps getting 200 within Envoy's timeout.

The attack comes from 100 loopback addresses other than 127.0.0.1 (50 each, inside the
per-peer cap of 64), so it is the total cap (2,000 here) that it fills: a new connection
then closes the longest-idle one, and the heads that are under way run into the head
timeout. nginx and Envoy connect from 127.0.0.1, the one trusted proxy. Bounded: every
socket is opened once, the drill lasts about 15 s, everything binds loopback."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests.stack.demo import ALICE, LoopbackTransport, Stack
from tests.stack.envoy import HTTP_TEMPLATE, Envoy
from tests.stack.proc import free_port
from tests.support import RssSampler, basic, scrape, total, vm_kib

pytestmark = pytest.mark.drill

IDLE = 5000
SLOWLORIS = 200
ADDRESSES = 100  # 127.0.0.2 ... 127.0.0.101
TOTAL_CAP = 2000
ENVOY_TIMEOUT = 4.0  # envoy/envoy-http.yaml.tmpl's ext_authz timeout


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE + SLOWLORIS + 2000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))


def _connect(port: int, source: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def test_idle_and_slow_connections_do_not_lock_out_valid_users(
    make_stack: Any, echo_server: Any
) -> None:
    _raise_file_limit()
    overrides = {
        "server": {
            "forward_auth_trusted_proxies": ["127.0.0.1/32"],
            "http_max_connections": TOTAL_CAP,
        }
    }
    stack: Stack = make_stack(idp=False, front="nginx", fresh=True, config_overrides=overrides)
    replica = stack.replicas[0]
    port = replica.forward_auth_port
    assert port is not None and replica.http_url is not None
    envoy = Envoy(
        listen_port=free_port(),
        ext_authz_ports=[port],
        echo_port=echo_server.port,
        workdir=stack.workdir,
        name="flood-envoy-http",
        template=HTTP_TEMPLATE,
    )
    envoy.start(wait_healthy=False)
    good = {"Authorization": basic(ALICE.username, ALICE.app_password)}
    fronts = {
        "nginx": f"http://whoami.localhost:{stack.port}/",
        "envoy-http": f"http://whoami.localhost:{envoy.listen_port}/",
    }
    sockets: list[socket.socket] = []
    try:
        with httpx.Client(transport=LoopbackTransport(), timeout=ENVOY_TIMEOUT + 2) as client:
            for url in fronts.values():
                assert client.get(url, headers=good).status_code == 200
            pid = replica.process.pid
            assert pid is not None
            idle_rss = vm_kib(pid, "VmRSS")
            sampler = RssSampler(pid)
            sampler.start()

            answers: dict[str, list[tuple[int, float]]] = {name: [] for name in fronts}
            stop = threading.Event()

            def valid_user() -> None:
                while not stop.is_set():
                    for name, url in fronts.items():
                        started = time.monotonic()
                        try:
                            status = client.get(url, headers=good).status_code
                        except httpx.HTTPError:
                            status = 0
                        answers[name].append((status, time.monotonic() - started))
                    stop.wait(0.1)

            user = threading.Thread(target=valid_user)
            user.start()
            try:
                for i in range(IDLE):
                    sock = _connect(port, f"127.0.0.{2 + i % ADDRESSES}")
                    if sock is not None:
                        sockets.append(sock)
                slow = []
                for i in range(SLOWLORIS):
                    sock = _connect(port, f"127.0.0.{2 + i % ADDRESSES}")
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.sendall(b"GET /outpost.goauthentik.io/auth/envoy/ HTTP/1.1\r\n")
                        slow.append(sock)
                sockets += slow
                # Keep the heads coming, a header line a second (slowloris), for 12 s:
                # past the 10 s head timeout.
                for second in range(12):
                    for sock in slow:
                        with contextlib.suppress(OSError):
                            sock.sendall(f"X-Slow-{second}: 1\r\n".encode())
                    stop.wait(1.0)
            finally:
                stop.set()
                user.join(60)
                sampler.stop.set()
                sampler.join(5)

        for name, seen in answers.items():
            assert len(seen) >= 10, (name, len(seen))
            failed = [(status, round(spent, 2)) for status, spent in seen if status != 200]
            assert failed == [], (name, failed)
            assert max(spent for _, spent in seen) < ENVOY_TIMEOUT, name
        assert sampler.peak <= 2 * idle_rss, (idle_rss, sampler.peak)
        samples = scrape(replica.http_url)
        made_room = total(samples, "ext_authz_http_connections_refused_total", port="forward_auth")
        assert made_room >= IDLE + SLOWLORIS - TOTAL_CAP, made_room
    finally:
        for sock in sockets:
            sock.close()
        envoy.stop()
