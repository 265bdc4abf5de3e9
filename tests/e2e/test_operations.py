"""Operations (SPEC §9): metrics after real traffic, readiness, logs without secrets,
and the `make run` orchestration itself."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.e2e.signin import sign_in
from tests.stack.demo import ALICE, BOB, BOB_STATIC_TOKEN, CAROL, OIDC_CLIENT_ID, Stack
from tests.stack.proc import ROOT, free_port, reserve_ports, wait_until
from tests.stack.redis import RedisServer
from tests.support import basic, scrape, total

pytestmark = pytest.mark.e2e

# Deadlines that only bound a failure: a passing test goes on as soon as the awaited
# thing happens. `make run` starts Redis, the IdP (Node), the echo server, ext-authz
# and Envoy; on a busy two-core machine that can take a while.
STARTUP_BOUND = 120.0
RECOVERY_BOUND = 30.0


def checks_resent(stack: Stack) -> int:
    """How many Checks Envoy sent again (a retry after a reset, a refused stream or a
    per-try timeout): each may reach ext-authz and be counted a second time."""
    stats = stack.envoy.stats(r"^cluster\.ext_authz\.upstream_rq_retry$")
    return stats.get("cluster.ext_authz.upstream_rq_retry", 0)


def between(value: float, low: float, resent: int) -> bool:
    """`value` is `low`, or more by at most the number of Checks Envoy re-sent."""
    return low <= value <= low + resent


def test_metrics_after_traffic(make_stack: Any) -> None:
    stack: Stack = make_stack(fresh=True)
    replica = stack.replicas[0]
    assert replica.http_url
    assert (
        stack.get(
            "app", "/", headers={"Authorization": basic(BOB.username, BOB.app_password)}
        ).status_code
        == 200
    )
    assert stack.get("app", "/", headers={"Authorization": basic("bob", "nope")}).status_code == 401
    assert stack.get("whoami", "/outpost.goauthentik.io/ping").status_code == 204
    assert stack.request("GET", "nobody", "/").status_code == 403
    metrics = scrape(replica.http_url)
    # Four requests, so four Checks, each counted once under its own labels; unless
    # Envoy re-sent one, which may be counted again (the bound says by how much).
    resent = checks_resent(stack)
    print(f"Checks Envoy re-sent: {resent}")
    counted = {
        "allow basic": total(
            metrics, "ext_authz_checks_total", app="app", result="allow", method="basic"
        ),
        "invalid credential": total(
            metrics, "ext_authz_checks_total", app="app", result="invalid_credential"
        ),
        "ping": total(metrics, "ext_authz_checks_total", result="ping"),
        "unknown host": total(metrics, "ext_authz_checks_total", result="unknown_host"),
    }
    for what, value in counted.items():
        assert between(value, 1, resent), (what, value, resent)
    checks = total(metrics, "ext_authz_checks_total")
    assert checks == sum(counted.values()), "no Check counted under other labels"
    # Every counted Check was timed, once.
    assert total(metrics, "ext_authz_check_duration_seconds_count") == checks
    for name, labels, low in (
        ("ext_authz_idp_requests_total", {"endpoint": "token", "outcome": "ok"}, 1),
        ("ext_authz_idp_requests_total", {"endpoint": "token", "outcome": "rejected"}, 1),
        ("ext_authz_cache_requests_total", {"cache": "credential", "result": "miss"}, 2),
        ("ext_authz_sessions_created_total", {"app": "app"}, 1),
    ):
        value = total(metrics, name, **labels)
        assert between(value, low, resent), (name, labels, value, resent)


def test_metrics_are_summed_over_workers(make_stack: Any) -> None:
    stack: Stack = make_stack(
        idp=False, store="redis", fresh=True, config_overrides={"server": {"workers": 2}}
    )
    for _ in range(20):
        response = stack.get("whoami", "/", headers={"Authorization": f"Bearer {BOB_STATIC_TOKEN}"})
        assert response.status_code == 200
    assert stack.replicas[0].http_url
    metrics = scrape(stack.replicas[0].http_url)
    allowed = total(metrics, "ext_authz_checks_total", app="whoami", result="allow")
    assert between(allowed, 20, checks_resent(stack)), allowed


def test_readyz_follows_the_store(make_stack: Any, workdir: Path) -> None:
    redis = RedisServer(workdir / "redis-readyz")
    redis.start()
    try:
        stack: Stack = make_stack(store=redis, idp=False)
        url = stack.replicas[0].http_url
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        redis.stop()
        down = httpx.get(f"{url}/readyz", timeout=5)
        assert down.status_code == 503 and "store" in down.json()["problems"]
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        redis.start()
        wait_until(
            lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200,
            RECOVERY_BOUND,
            "/readyz to recover once Redis is back",
        )
    finally:
        redis.stop()


def test_readyz_is_false_while_idp_discovery_is_unavailable(make_stack: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    stack: Stack = make_stack(
        idp=False,
        config_overrides={
            "applications": {
                "offline": {
                    "external_host": "http://offline.localhost:1",
                    "oidc": {"issuer": dead, "client_id": "offline", "timeout": "500ms"},
                    "receive": {"bearer": {"verify": "jwt"}},
                }
            }
        },
    )
    ready = httpx.get(f"{stack.replicas[0].http_url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert "idp:offline" in ready.json()["problems"]
    # The service still started and answers the other application.
    ok = stack.get("whoami", "/", headers={"Authorization": f"Bearer {BOB_STATIC_TOKEN}"})
    assert ok.status_code == 200


def test_logs_are_json_and_never_carry_secrets(make_stack: Any) -> None:
    stack: Stack = make_stack(fresh=True)
    assert stack.idp is not None
    secrets_seen: list[str] = []
    flow = sign_in(stack, CAROL)
    cookie = next(c for c in flow.final.headers.get_list("set-cookie") if "_login" not in c)
    cookie_value = cookie.split(";", 1)[0].split("=", 1)[1]
    secrets_seen += [cookie_value, CAROL.idp_password]
    good = basic(ALICE.username, ALICE.app_password)
    response = stack.get("app", "/", headers={"Authorization": good})
    assert response.status_code == 200
    upstream = json.loads(response.text)["headers"]
    secrets_seen += [good, ALICE.app_password, upstream["x-authentik-jwt"][0]]
    bad = basic(BOB.username, "a-wrong-password-123")
    assert stack.get("app", "/", headers={"Authorization": bad}).status_code == 401
    secrets_seen += [bad, "a-wrong-password-123"]
    token = stack.idp.mint_access_token(OIDC_CLIENT_ID, "bob", fmt="opaque")
    assert stack.get("app", "/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    bogus = "Bearer totally-bogus-token-value-42"
    assert stack.get("app", "/", headers={"Authorization": bogus}).status_code == 401
    secrets_seen += [token, "totally-bogus-token-value-42"]

    text = stack.replicas[0].logs()
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, "ext-authz logged JSON lines"
    for line in lines:
        record = json.loads(line)
        assert {"ts", "level", "msg"} <= record.keys()
    for secret in secrets_seen:
        assert secret not in text, "a secret reached a log line"
    messages = [json.loads(line) for line in lines]
    rejected = [m for m in messages if m["msg"] == "credential rejected"]
    assert rejected and all(m.get("request_id") and m.get("app") for m in rejected)
    assert any(m["msg"] == "signed in" for m in messages)


def test_make_run_orchestration(tmp_path: Path) -> None:
    """`make run` is `python -m tests.stack`: bring it up on free ports and use it."""
    # Every listener's port given and checked free: `--port + 1` and `+ 2` (make run's
    # defaults for nginx and Caddy) were once taken by another socket.
    port, admin, nginx_port, caddy_port, outpost_port = reserve_ports(5)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.stack",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--nginx-port",
            str(nginx_port),
            "--caddy-port",
            str(caddy_port),
            "--outpost-port",
            str(outpost_port),
            "--workdir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        lines = _lines_of(proc.stdout)
        deadline = time.monotonic() + STARTUP_BOUND
        while "Ctrl-C stops everything" not in (output[-1] if output else ""):
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                break  # the banner assertion below shows what came
            if line is None:  # the process closed its output (it exited)
                break
            output.append(line)
        banner = "".join(output)
        assert "ext-authz demo is up." in banner, banner
        assert re.search(rf"http://whoami\.localhost:{port}/", banner)
        with httpx.Client(transport=_loopback(), timeout=10) as client:
            response = client.get(
                f"http://whoami.localhost:{port}/",
                headers={"Authorization": basic(ALICE.username, ALICE.app_password)},
            )
            assert response.status_code == 200, response.text
            seen = json.loads(response.text)["headers"]
            assert seen["x-authentik-username"] == ["alice"]
            app = client.get(
                f"http://app.localhost:{port}/",
                headers={"Authorization": basic(ALICE.username, ALICE.app_password)},
            )
            assert app.status_code == 200
            # The same decision through nginx and Caddy, on the ports given.
            for front_port, host in ((nginx_port, "app-nginx"), (caddy_port, "app-caddy")):
                fronted = client.get(
                    f"http://{host}.localhost:{front_port}/",
                    headers={"Authorization": basic(ALICE.username, ALICE.app_password)},
                )
                assert fronted.status_code == 200, (host, fronted.status_code, fronted.text)
                assert json.loads(fronted.text)["headers"]["x-authentik-username"] == ["alice"]
            # The outpost mode (SPEC §11): the test authentik's provider, Basic sent on.
            assert f"http://ak-app.localhost:{outpost_port}/" in banner
            outpost = client.get(
                f"http://ak-app.localhost:{outpost_port}/",
                headers={"Authorization": basic(ALICE.username, ALICE.app_password)},
            )
            assert outpost.status_code == 200, outpost.text
            sent = json.loads(outpost.text)["headers"]
            assert sent["authorization"] == ["Basic " + base64.b64encode(b"admin:s3cret").decode()]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _lines_of(stream: IO[str]) -> queue.Queue[str | None]:
    """The lines of `stream`, read by a thread of its own so that the test can wait
    for the next one with a deadline (readline alone blocks for as long as the
    process stays silent); None after the last."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="make-run-output", daemon=True).start()
    return lines


def _loopback() -> httpx.BaseTransport:
    from tests.stack.demo import LoopbackTransport

    return LoopbackTransport()
