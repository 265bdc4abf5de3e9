"""Operations (SPEC §9): metrics after real traffic, readiness, logs without secrets,
and the `make run` orchestration itself."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.signin import sign_in
from tests.stack.demo import ALICE, BOB, BOB_STATIC_TOKEN, CAROL, OIDC_CLIENT_ID, Stack
from tests.stack.proc import ROOT, free_port
from tests.stack.redis import RedisServer
from tests.support import basic

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[str, float]:
    """Samples by their full name with labels, e.g. 'ext_authz_checks_total{app="app",...}'."""
    samples: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    out = 0.0
    for key, value in samples.items():
        if key.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            out += value
    return out


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
    assert total(metrics, "ext_authz_checks_total", app="app", result="allow", method="basic") == 1
    assert total(metrics, "ext_authz_checks_total", app="app", result="invalid_credential") == 1
    assert total(metrics, "ext_authz_checks_total", result="ping") == 1
    assert total(metrics, "ext_authz_checks_total", result="unknown_host") == 1
    assert total(metrics, "ext_authz_check_duration_seconds_count") == 4
    assert total(metrics, "ext_authz_idp_requests_total", endpoint="token", outcome="ok") == 1
    assert total(metrics, "ext_authz_idp_requests_total", endpoint="token", outcome="rejected") == 1
    assert total(metrics, "ext_authz_cache_requests_total", cache="credential", result="miss") == 2
    assert total(metrics, "ext_authz_sessions_created_total", app="app") == 1


def test_metrics_are_summed_over_workers(make_stack: Any) -> None:
    stack: Stack = make_stack(
        idp=False, store="redis", fresh=True, config_overrides={"server": {"workers": 2}}
    )
    for _ in range(20):
        response = stack.get("whoami", "/", headers={"Authorization": f"Bearer {BOB_STATIC_TOKEN}"})
        assert response.status_code == 200
    assert stack.replicas[0].http_url
    metrics = scrape(stack.replicas[0].http_url)
    assert total(metrics, "ext_authz_checks_total", app="whoami", result="allow") == 20


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
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "readyz did not recover"
            time.sleep(0.1)
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
    port, admin = free_port(), free_port()
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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Ctrl-C stops everything" in line:
                break
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
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _loopback() -> httpx.BaseTransport:
    from tests.stack.demo import LoopbackTransport

    return LoopbackTransport()
