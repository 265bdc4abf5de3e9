"""Translation between Envoy's protobuf and the core's values, both ways.

Every gRPC notion lives here, not in the core: the core answers in HTTP terms and
the CheckResponse's gRPC status is derived from that answer (`grpc_status`): OK for
an allow; for a denial UNAUTHENTICATED (401), RESOURCE_EXHAUSTED (429), UNAVAILABLE
(503) or PERMISSION_DENIED (everything else). Envoy itself only looks at OK versus
not OK; the codes are for whoever reads Envoy's or Istio's access logs.

Envoy 1.40's header-mutation rules (ENVOY_NOTES.md) decide the `append` settings:
upstream headers with `append=false` (overwrite, so the upstream sees exactly one
value); Set-Cookie on an allowed request in `response_headers_to_add` with `append`
unset (each is a new header line); denied-response headers with `append` unset
(repeated keys such as two `set-cookie` are kept).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from types import MappingProxyType

from ext_authz._proto import (
    BoolValue,
    CheckRequest,
    CheckResponse,
    DeniedHttpResponse,
    HeaderValue,
    HeaderValueOption,
    OkHttpResponse,
    Status,
)
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.model import AuthRequest
from ext_authz.core.upstream import IdentityPart

__all__ = [
    "GrpcCode",
    "check_response_bytes",
    "grpc_status",
    "to_auth_request",
    "to_check_response",
]

_FALSE = BoolValue(value=False)
_NO_CONTEXT: Mapping[str, str] = MappingProxyType({})


class GrpcCode:
    """The google.rpc.Code values a CheckResponse uses."""

    OK = 0
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


_CODE_BY_STATUS = {
    401: GrpcCode.UNAUTHENTICATED,
    429: GrpcCode.RESOURCE_EXHAUSTED,
    503: GrpcCode.UNAVAILABLE,
}


def grpc_status(decision: Allow | Deny) -> int:
    """The gRPC status code of the CheckResponse carrying `decision`."""
    if isinstance(decision, Allow):
        return GrpcCode.OK
    return _CODE_BY_STATUS.get(decision.status, GrpcCode.PERMISSION_DENIED)


def to_auth_request(message: CheckRequest) -> AuthRequest:
    attributes = message.attributes
    request = attributes.request
    extensions = attributes.context_extensions
    context = MappingProxyType(dict(extensions)) if len(extensions) else _NO_CONTEXT
    if not request.HasField("http"):
        return AuthRequest(has_http=False, context_extensions=context)
    http = request.http
    # The protobuf map is read-only here and already a Mapping: no copy per Check.
    headers: Mapping[str, str] = http.headers
    if not headers and len(http.header_map.headers):
        headers = MappingProxyType(_from_header_map(http))
    path, _, query = http.path.partition("?")
    host = http.host or headers.get(":authority", "") or headers.get("host", "")
    return AuthRequest(
        has_http=True,
        method=http.method or headers.get(":method", ""),
        host=host,
        path=path or "/",
        query=query or http.query,
        scheme=http.scheme or headers.get(":scheme", ""),
        headers=headers,
        context_extensions=context,
        request_id=headers.get("x-request-id", "") or http.id,
        client=attributes.source.address.socket_address.address,
    )


def _from_header_map(http: object) -> dict[str, str]:
    """Envoy sends `header_map` instead of `headers` when `encode_raw_headers` is on."""
    out: dict[str, str] = {}
    for entry in http.header_map.headers:  # type: ignore[attr-defined]
        value = entry.value or entry.raw_value.decode("utf-8", "replace")
        key = entry.key.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _overwrite(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=key, value=value), append=_FALSE)


def to_check_response(decision: Allow | Deny, *, http: bool = True) -> CheckResponse:
    """The CheckResponse for `decision`. `http=False`: the check had no HTTP attributes
    (Istio's TCP ext_authz), so a denial carries no HTTP response, only its status."""
    if isinstance(decision, Allow):
        ok = OkHttpResponse(
            headers=[_overwrite(k, v) for k, v in decision.set_headers],
            headers_to_remove=list(decision.remove_headers),
            response_headers_to_add=[
                HeaderValueOption(header=HeaderValue(key=k, value=v))
                for k, v in decision.response_headers
            ],
        )
        return CheckResponse(status=Status(code=0), ok_response=ok)
    status = Status(code=grpc_status(decision), message=decision.reason)
    if not http:
        return CheckResponse(status=status)
    denied = DeniedHttpResponse(
        headers=[
            HeaderValueOption(header=HeaderValue(key=k, value=v)) for k, v in decision.headers
        ],
        body=decision.body,
    )
    denied.status.code = decision.status  # type: ignore[assignment]
    return CheckResponse(status=status, denied_response=denied)


# --- the allowed answer as bytes -------------------------------------------------------
#
# An allowed Check is answered from the in-process caches many times per identity, and
# building its protobuf messages costs several times more than our decision. So the
# OkHttpResponse is written as bytes here, in protobuf's wire format (the same bytes
# `to_check_response(...).SerializeToString()` gives: tests/unit/test_envoy_adapter.py
# checks them against each other), and the identity part's headers, the same on every
# request of one cached session or credential, are rendered once per part. The rendering
# is held weakly by the part: it goes when the cached session or credential that holds
# the part goes (a sign-out, an expiry), and no process-wide table keeps tokens or
# upstream passwords (issue 11).

_RENDERED: weakref.WeakKeyDictionary[IdentityPart, bytes] = weakref.WeakKeyDictionary()
# Field numbers: CheckResponse.status 1, .ok_response 3; OkHttpResponse.headers 2,
# .headers_to_remove 5, .response_headers_to_add 6; HeaderValueOption.header 1,
# .append 2; HeaderValue.key 1, .value 2. `append: false` is an empty BoolValue.
_STATUS_OK = b"\x0a\x00"
_APPEND_FALSE = b"\x12\x00"


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string or a message)."""
    return bytes(((number << 3) | 2,)) + _varint(len(payload)) + payload


def _header_value(key: str, value: str) -> bytes:
    out = _field(1, key.encode()) if key else b""
    return out + (_field(2, value.encode()) if value else b"")


def _upstream_header(key: str, value: str) -> bytes:
    """OkHttpResponse.headers entry: overwrite (`append: false`)."""
    return _field(2, _field(1, _header_value(key, value)) + _APPEND_FALSE)


def check_response_bytes(decision: Allow | Deny, *, http: bool = True) -> bytes:
    """The serialized CheckResponse for `decision` (see `to_check_response`)."""
    if not isinstance(decision, Allow):
        serialized: bytes = to_check_response(decision, http=http).SerializeToString()
        return serialized
    parts: list[bytes] = []
    rest = decision.set_headers
    part = decision.identity_part
    if part is not None and part.headers:
        rendered = _RENDERED.get(part)
        if rendered is None:
            rendered = _RENDERED[part] = b"".join(_upstream_header(k, v) for k, v in part.headers)
        parts.append(rendered)
        rest = rest[len(part.headers) :]  # set_headers begins with the part's headers
    parts += [_upstream_header(k, v) for k, v in rest]
    parts += [_field(5, name.encode()) for name in decision.remove_headers]
    parts += [_field(6, _field(1, _header_value(k, v))) for k, v in decision.response_headers]
    return _STATUS_OK + _field(3, b"".join(parts))
