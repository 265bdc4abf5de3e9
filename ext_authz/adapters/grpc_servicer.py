"""The grpc.aio servicer of `envoy.service.auth.v3.Authorization`.

`Check` never raises: an exception would be a gRPC error, which Envoy answers with
`status_on_error` or, with `failure_mode_allow`, lets through. Any fault here is
answered with a deliberate 503 denial instead, logged with Envoy's request id.

The hot path (issue 13): a Check whose answer is in the in-process caches is decided
by `check_now` without awaiting anything, and its answer leaves as bytes rendered by
the Envoy adapter (`check_response_bytes`): `add_check_service` registers `Check` with
a serializer that passes bytes through, instead of the generated servicer's
`CheckResponse.SerializeToString`. Only a Check that needs the store, a verifier or
randomness awaits `check`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ext_authz._proto import (
    AUTHORIZATION_SERVICE_NAME,
    CheckRequest,
    CheckResponse,
    DeniedHttpResponse,
    Status,
)
from ext_authz.adapters.envoy import GrpcCode, check_response_bytes, to_auth_request
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.model import AuthRequest
from ext_authz.logs import event

__all__ = ["CheckServicer", "add_check_service"]

CheckLater = Callable[[AuthRequest], Awaitable[Allow | Deny]]
CheckNow = Callable[[AuthRequest], "Allow | Deny | None"]


def _internal_error() -> bytes:
    denied = DeniedHttpResponse(body="internal error\n")
    denied.status.code = 503  # type: ignore[assignment]
    response = CheckResponse(
        status=Status(code=GrpcCode.UNAVAILABLE, message="internal_error"),
        denied_response=denied,
    )
    serialized: bytes = response.SerializeToString()
    return serialized


_INTERNAL_ERROR = _internal_error()


class CheckServicer:
    def __init__(self, check: CheckLater, check_now: CheckNow | None = None) -> None:
        self._check = check
        self._check_now = check_now

    async def Check(self, request: CheckRequest, context: Any) -> bytes:
        try:
            auth_request = to_auth_request(request)
            decision = self._check_now(auth_request) if self._check_now is not None else None
            if decision is None:
                decision = await self._check(auth_request)
            return check_response_bytes(decision, http=auth_request.has_http)
        except Exception:
            request_id = ""
            with contextlib.suppress(Exception):  # best effort, for the log line only
                request_id = request.attributes.request.http.headers.get("x-request-id", "")
            event(logging.ERROR, "check failed", request_id=request_id, exc_info=True)
            return _INTERNAL_ERROR


def _serialize(response: bytes | CheckResponse) -> bytes:
    if isinstance(response, bytes):
        return response
    serialized: bytes = response.SerializeToString()
    return serialized


def add_check_service(server: Any, servicer: CheckServicer) -> None:
    """Register `servicer.Check` as `envoy.service.auth.v3.Authorization/Check` on a
    grpc (or grpc.aio) server, its answers passed through as the bytes it returns."""
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.Check,
        request_deserializer=CheckRequest.FromString,
        response_serializer=_serialize,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(AUTHORIZATION_SERVICE_NAME, {"Check": handler}),)
    )
