"""The grpc.aio servicer of `envoy.service.auth.v3.Authorization`.

`Check` never raises: an exception would be a gRPC error, which Envoy answers with
`status_on_error` or, with `failure_mode_allow`, lets through. Any fault here is
answered with a deliberate 503 denial instead, logged with Envoy's request id.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ext_authz._proto import (
    AuthorizationServicer,
    CheckRequest,
    CheckResponse,
    DeniedHttpResponse,
    Status,
)
from ext_authz.adapters.envoy import GrpcCode, to_auth_request, to_check_response
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.model import AuthRequest
from ext_authz.logs import event

__all__ = ["CheckServicer"]


class CheckServicer(AuthorizationServicer):
    def __init__(self, check: Callable[[AuthRequest], Awaitable[Allow | Deny]]) -> None:
        self._check = check

    async def Check(self, request: CheckRequest, context: Any) -> CheckResponse:
        try:
            auth_request = to_auth_request(request)
            decision = await self._check(auth_request)
            return to_check_response(decision, http=auth_request.has_http)
        except Exception:
            request_id = ""
            with contextlib.suppress(Exception):  # best effort, for the log line only
                request_id = request.attributes.request.http.headers.get("x-request-id", "")
            event(logging.ERROR, "check failed", request_id=request_id, exc_info=True)
            denied = DeniedHttpResponse(body="internal error\n")
            denied.status.code = 503  # type: ignore[assignment]
            return CheckResponse(
                status=Status(code=GrpcCode.UNAVAILABLE, message="internal_error"),
                denied_response=denied,
            )
