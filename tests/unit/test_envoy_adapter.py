"""The Envoy adapter: CheckRequest -> AuthRequest, Decision -> CheckResponse.

The `append` settings follow ENVOY_NOTES.md's table for Envoy 1.40; the e2e tests
prove what Envoy does with them.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_authz._proto import CheckRequest, HeaderValue
from ext_authz.adapters.envoy import (
    GrpcCode,
    check_response_bytes,
    grpc_status,
    to_auth_request,
    to_check_response,
)
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.upstream import IdentityPart


def check_request(**headers: str) -> CheckRequest:
    message = CheckRequest()
    http = message.attributes.request.http
    http.method = "POST"
    http.host = "app.example.com:8443"
    http.path = "/a/b?x=1&y=2"
    http.scheme = "https"
    http.id = "12345"
    for key, value in headers.items():
        http.headers[key] = value
    message.attributes.context_extensions["ext_authz_app"] = "app"
    return message


def test_request_translation() -> None:
    request = to_auth_request(check_request(**{"x-request-id": "rid", "cookie": "a=1,b=2"}))
    assert request.has_http
    assert (request.method, request.host, request.path, request.query, request.scheme) == (
        "POST",
        "app.example.com:8443",
        "/a/b",
        "x=1&y=2",
        "https",
    )
    assert request.header("cookie") == "a=1,b=2"
    assert request.context_extensions == {"ext_authz_app": "app"}
    assert request.request_id == "rid"


def test_request_id_falls_back_to_envoys_stream_id() -> None:
    assert to_auth_request(check_request()).request_id == "12345"


def test_header_map_is_read_when_headers_are_raw() -> None:
    message = check_request()
    raw = message.attributes.request.http.header_map.headers
    raw.append(HeaderValue(key="Authorization", raw_value=b"Basic eA=="))
    raw.append(HeaderValue(key="x-a", value="1"))
    raw.append(HeaderValue(key="X-A", value="2"))
    request = to_auth_request(message)
    assert request.header("authorization") == "Basic eA=="
    assert request.header("x-a") == "1,2"


def test_tcp_request_has_no_http() -> None:
    assert to_auth_request(CheckRequest()).has_http is False


def test_allow_translation_uses_overwrite_upstream_and_added_response_headers() -> None:
    response = to_check_response(
        Allow(
            method="basic",
            set_headers=(("x-authentik-username", "alice"),),
            remove_headers=("authorization",),
            response_headers=(("set-cookie", "a=1"), ("set-cookie", "b=2")),
        )
    )
    assert response.status.code == 0
    ok = response.ok_response
    (upstream,) = ok.headers
    assert upstream.header.key == "x-authentik-username" and upstream.header.value == "alice"
    assert upstream.HasField("append") and upstream.append.value is False
    assert list(ok.headers_to_remove) == ["authorization"]
    assert [h.header.value for h in ok.response_headers_to_add] == ["a=1", "b=2"]
    assert not any(h.HasField("append") for h in ok.response_headers_to_add)


def test_deny_translation_keeps_repeated_headers_and_status() -> None:
    response = to_check_response(
        Deny(
            status=302,
            reason="login",
            headers=(("location", "https://idp/"), ("set-cookie", "a=1"), ("set-cookie", "b=2")),
            body="",
        )
    )
    assert response.status.code == GrpcCode.PERMISSION_DENIED
    denied = response.denied_response
    assert denied.status.code == 302
    assert [h.header.key for h in denied.headers] == ["location", "set-cookie", "set-cookie"]
    assert not any(h.HasField("append") for h in denied.headers)


def test_tcp_deny_has_no_http_response() -> None:
    response = to_check_response(Deny(status=403, reason="no_http"), http=False)
    assert response.status.code == GrpcCode.PERMISSION_DENIED
    assert response.status.message == "no_http"
    assert not response.HasField("denied_response") and not response.HasField("ok_response")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, GrpcCode.UNAUTHENTICATED),
        (429, GrpcCode.RESOURCE_EXHAUSTED),
        (503, GrpcCode.UNAVAILABLE),
        (302, GrpcCode.PERMISSION_DENIED),
        (403, GrpcCode.PERMISSION_DENIED),
        (204, GrpcCode.PERMISSION_DENIED),
        (400, GrpcCode.PERMISSION_DENIED),
    ],
)
def test_grpc_status_is_derived_from_the_http_answer(status: int, code: int) -> None:
    decision = Deny(status=status, reason="r")
    assert grpc_status(decision) == code
    response = to_check_response(decision)
    assert response.status.code == code
    assert response.denied_response.status.code == status


def test_allow_is_grpc_ok() -> None:
    assert grpc_status(Allow(method="skip")) == GrpcCode.OK


# --- the allowed answer as bytes (issue 13) ----------------------------------------------

_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=20)
# Header values as the core hands them over: valid text (no lone surrogates).
_VALUES = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
_PAIRS = st.lists(st.tuples(_NAMES, _VALUES), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    identity_headers=_PAIRS,
    more=_PAIRS,
    removed=st.lists(_NAMES, max_size=6),
    client=_PAIRS,
    with_part=st.booleans(),
)
def test_rendered_bytes_are_protobufs_own(
    identity_headers: list[tuple[str, str]],
    more: list[tuple[str, str]],
    removed: list[str],
    client: list[tuple[str, str]],
    with_part: bool,
) -> None:
    part = IdentityPart(tuple(identity_headers), (), frozenset(), ())
    allow = Allow(
        method="session",
        set_headers=(*identity_headers, *more),
        remove_headers=tuple(removed),
        response_headers=tuple(client),
        identity_part=part if with_part else None,
    )
    expected = to_check_response(allow).SerializeToString()
    assert check_response_bytes(allow) == expected
    assert check_response_bytes(allow) == expected  # the part's rendering, reused


def test_denials_are_serialized_by_protobuf() -> None:
    deny = Deny(status=401, reason="unauthenticated", headers=(("www-authenticate", "Basic"),))
    assert check_response_bytes(deny) == to_check_response(deny).SerializeToString()
    tcp = Deny(status=403, reason="no_http")
    assert (
        check_response_bytes(tcp, http=False)
        == to_check_response(tcp, http=False).SerializeToString()
    )


def test_a_parts_rendering_goes_with_the_part() -> None:
    import gc

    from ext_authz.adapters import envoy

    part = IdentityPart((("x-authentik-jwt", "secret.token.value"),), (), frozenset(), ())
    allow = Allow(method="session", set_headers=part.headers, identity_part=part)
    check_response_bytes(allow)
    assert any(b"secret.token.value" in v for v in envoy._RENDERED.values())
    del allow, part
    gc.collect()
    assert not any(b"secret.token.value" in v for v in envoy._RENDERED.values())
