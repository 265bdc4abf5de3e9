"""The operations port's handler (SPEC §9): /healthz, /readyz, /metrics; nothing else."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from types import MappingProxyType

import pytest

from ext_authz.adapters.http_server import HttpRequest, HttpResponse
from ext_authz.operations import OperationsHandler

STORE_ERROR = "redis ping: ConnectionError: Error 111 connecting to 10.9.8.7:6380"
IDP_ERROR = "discovery: HTTP 500 from https://idp.internal.example/"


def req(target: str, method: str = "GET") -> HttpRequest:
    return HttpRequest(method, target, MappingProxyType({"host": "ops"}), "127.0.0.1")


def answer(result: HttpResponse | Awaitable[HttpResponse]) -> HttpResponse:
    if isinstance(result, HttpResponse):
        return result

    async def wait() -> HttpResponse:
        return await result

    return asyncio.run(wait())


class Readiness:
    """Answers the problems it is given, one list entry per probe."""

    def __init__(self, *answers: dict[str, str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self) -> dict[str, str]:
        self.calls += 1
        return dict(self.answers.pop(0))


def header(response: HttpResponse, name: str) -> str | None:
    return next((v for k, v in response.headers if k == name), None)


@pytest.mark.parametrize("target", ["/healthz", "/healthz?verbose=1"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_healthz(target: str, method: str) -> None:
    readiness = Readiness()
    response = answer(OperationsHandler(readiness)(req(target, method)))
    assert (response.status, response.body) == (200, b"ok\n")
    assert readiness.calls == 0  # alive says nothing about dependencies


def test_metrics_are_prometheus_text() -> None:
    response = answer(OperationsHandler(Readiness())(req("/metrics")))
    assert response.status == 200
    assert header(response, "content-type") == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# TYPE" in response.body


def test_readyz_when_ready() -> None:
    response = answer(OperationsHandler(Readiness({}))(req("/readyz")))
    assert response.status == 200
    assert json.loads(response.body) == {"ready": True}
    assert header(response, "cache-control") == "no-store"


def test_readyz_names_only_the_components(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ext_authz")
    handler = OperationsHandler(Readiness({"store": STORE_ERROR, "idp:app": IDP_ERROR}))
    response = answer(handler(req("/readyz")))
    assert response.status == 503
    assert json.loads(response.body) == {"ready": False, "problems": ["idp:app", "store"]}
    for secret_ish in ("10.9.8.7", "6380", "idp.internal", "ConnectionError", "HTTP 500"):
        assert secret_ish.encode() not in response.body
    assert header(response, "cache-control") == "no-store"
    # The details go to the log.
    (record,) = [r for r in caplog.records if r.msg == "not ready"]
    assert record.problems == {"store": STORE_ERROR, "idp:app": IDP_ERROR}  # type: ignore[attr-defined]


def test_readyz_logs_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ext_authz")
    store = {"store": STORE_ERROR}
    both = {"store": STORE_ERROR, "idp:app": IDP_ERROR}
    other_store = {"store": "redis ping: TimeoutError: "}
    probes = [{}, {}, store, store, store, both, both, other_store, {}, {}, store]
    handler = OperationsHandler(Readiness(*probes))
    statuses = [answer(handler(req("/readyz"))).status for _ in probes]
    assert statuses == [200, 200, 503, 503, 503, 503, 503, 503, 200, 200, 503]
    logged = [
        (r.msg, getattr(r, "problems", None))
        for r in caplog.records
        if r.msg in ("not ready", "ready again")
    ]
    assert logged == [
        ("not ready", store),
        ("not ready", both),
        ("not ready", other_store),
        ("ready again", None),
        ("not ready", store),
    ]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
@pytest.mark.parametrize("target", ["/healthz", "/readyz", "/metrics", "/elsewhere"])
def test_other_methods_are_405(method: str, target: str) -> None:
    readiness = Readiness()
    response = answer(OperationsHandler(readiness)(req(target, method)))
    assert response.status == 405
    assert header(response, "allow") == "GET, HEAD"
    assert readiness.calls == 0


@pytest.mark.parametrize(
    "target", ["/", "/health", "/healthz/", "/metrics/x", "/readyz/../healthz", "//healthz", "*"]
)
def test_other_paths_are_404(target: str) -> None:
    readiness = Readiness()
    response = answer(OperationsHandler(readiness)(req(target)))
    assert (response.status, response.body) == (404, b"not found\n")
    assert readiness.calls == 0
