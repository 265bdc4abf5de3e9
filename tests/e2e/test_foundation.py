"""The Foundation through a real Envoy 1.40: client -> Envoy -> ext-authz -> echo app.

What the echo app reports is what the upstream really received after Envoy applied
our header mutations.
"""

from __future__ import annotations

import signal
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_authz._proto import AuthorizationStub, CheckRequest
from tests.stack.demo import ALICE, BOB, BOB_STATIC_TOKEN, Stack
from tests.support import basic, echoed

pytestmark = pytest.mark.e2e


def test_unknown_host_is_403(stack: Stack) -> None:
    response = stack.request("GET", "nobody-here", "/")
    assert response.status_code == 403
    assert "unknown host" in response.text


def test_ping_is_204_without_credentials(stack: Stack) -> None:
    response = stack.get("whoami", "/outpost.goauthentik.io/ping")
    assert response.status_code == 204


def test_skip_path_passes_and_strips_client_authentik_headers(stack: Stack) -> None:
    response = stack.get(
        "whoami",
        "/public/page",
        headers={"X-authentik-username": "admin", "X_authentik_uid": "0"},
    )
    headers = echoed(response)
    assert not [name for name in headers if name.replace("_", "-").startswith("x-authentik-")]


def test_no_credentials_on_app_without_oidc_is_401(stack: Stack) -> None:
    response = stack.get("whoami", "/private")
    assert response.status_code == 401
    challenges = response.headers.get_list("www-authenticate")
    assert 'Basic realm="whoami"' in challenges
    assert any(c.startswith('Bearer realm="whoami"') for c in challenges)
    assert response.headers["cache-control"] == "no-store"


def test_directory_app_password_allows_with_identity_headers(stack: Stack) -> None:
    response = stack.get(
        "whoami",
        "/private",
        headers={
            "Authorization": basic(ALICE.username, ALICE.app_password),
            "X-authentik-username": "root",
        },
    )
    headers = echoed(response)
    assert headers["x-authentik-username"] == ["alice"]
    assert headers["x-authentik-email"] == [ALICE.email]
    assert headers["x-authentik-groups"] == ["admins"]
    assert headers["x-authentik-meta-app"] == ["whoami"]
    assert headers["x-authentik-meta-provider"] == ["directory"]
    assert "authorization" not in headers


def test_wrong_directory_password_is_401(stack: Stack) -> None:
    response = stack.get(
        "whoami", "/private", headers={"Authorization": basic(ALICE.username, "wrong")}
    )
    assert response.status_code == 401
    assert 'Basic realm="whoami"' in response.headers.get_list("www-authenticate")


def test_static_bearer_token_allows(stack: Stack) -> None:
    response = stack.get(
        "whoami", "/private", headers={"Authorization": f"Bearer {BOB_STATIC_TOKEN}"}
    )
    headers = echoed(response)
    assert headers["x-authentik-username"] == [BOB.username]
    assert "authorization" not in headers


def test_context_extensions_select_the_application(stack: Stack) -> None:
    # ctx.localhost is no application's host: its route names "whoami" explicitly.
    response = stack.request("GET", "ctx", "/private")
    assert response.status_code == 401
    assert 'Basic realm="whoami"' in response.headers.get_list("www-authenticate")
    public = stack.request("GET", "ctx", "/public-route/x")
    assert public.status_code == 200  # ext_authz disabled per route


def test_envoy_health_checks_report_ext_authz_healthy(stack: Stack) -> None:
    health = stack.envoy.cluster_health("ext_authz")
    assert health and all(ok for _, ok in health)


def test_tcp_check_without_http_is_denied(stack: Stack) -> None:
    with grpc.insecure_channel(stack.replicas[0].grpc_address) as channel:
        response = AuthorizationStub(channel).Check(CheckRequest(), timeout=5)
    assert response.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert not response.HasField("ok_response")


def test_two_workers_share_one_port_and_drain_on_sigterm(make_stack: Any) -> None:
    stack = make_stack(
        idp=False,
        store="redis",
        fresh=True,
        config_overrides={"server": {"workers": 2, "grace_period": "3s"}},
    )
    replica = stack.replicas[0]
    for _ in range(6):
        response = stack.get(
            "whoami", "/x", headers={"Authorization": f"Bearer {BOB_STATIC_TOKEN}"}
        )
        assert response.status_code == 200
    with grpc.insecure_channel(replica.grpc_address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"),
            timeout=5,
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    pids = {r.get("pid") for r in replica.log_records() if r.get("msg") == "ready"}
    assert len(pids) == 2, "two worker processes announced themselves"
    replica.process.send_signal(signal.SIGTERM)
    assert replica.process.wait(timeout=30) == 0  # a bound for a hang only
