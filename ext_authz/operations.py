"""The operations port (SPEC §9): `/healthz`, `/readyz` and `/metrics`.

Served by `ext_authz.adapters.http_server` like the forward-auth port, so it has the
same limits (64 KiB heads, timeouts, 400 on a bad request, never a traceback).

`/readyz` answers anyone who can reach the port, so it says only *which* component is
not ready (`store`, `idp:<app>`), never an address or an error text; those go to the
log, once per change of the problem.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from ext_authz.adapters.http_server import HttpRequest, HttpResponse
from ext_authz.logs import event
from ext_authz.metrics import render_metrics

__all__ = ["OperationsHandler", "Readiness"]

Readiness = Callable[[], Awaitable[dict[str, str]]]

_TEXT = (("content-type", "text/plain; charset=utf-8"),)
_JSON = (("content-type", "application/json"), ("cache-control", "no-store"))
_METRICS = (("content-type", "text/plain; version=0.0.4; charset=utf-8"),)


class OperationsHandler:
    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness
        self._last_problems: dict[str, str] = {}

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        path = request.target.split("?", 1)[0]
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, (*_TEXT, ("allow", "GET, HEAD")), b"method not allowed\n")
        if path == "/healthz":
            return HttpResponse(200, _TEXT, b"ok\n")
        if path == "/metrics":
            return HttpResponse(200, _METRICS, render_metrics())
        if path == "/readyz":
            return self._ready()
        return HttpResponse(404, _TEXT, b"not found\n")

    async def _ready(self) -> HttpResponse:
        problems = await self._readiness()
        if problems != self._last_problems:
            if problems:
                event(logging.WARNING, "not ready", problems=problems)
            elif self._last_problems:
                event(logging.INFO, "ready again")
            self._last_problems = dict(problems)
        if problems:
            body = json.dumps({"ready": False, "problems": sorted(problems)}).encode()
            return HttpResponse(503, _JSON, body)
        return HttpResponse(200, _JSON, b'{"ready": true}')
