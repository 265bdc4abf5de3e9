"""Our generated ext_authz classes speak Envoy's wire format.

The reference is envoy-data-plane: betterproto2 dataclasses generated from Envoy's own
.proto files. It is pure Python and never touches the protobuf descriptor pool, so it can
live in the same process as our stubs (xds-protos cannot). Three checks:

- structure: every message and enum we define has Envoy's field names, numbers, kinds
  and oneofs (so nothing is renumbered or mistyped by hand);
- Envoy -> us: messages built with envoy-data-plane, serialised, parsed by our classes;
- us -> Envoy: the reverse, for what we send (CheckResponse) and what tests send us.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.struct_pb2 import Struct
from hypothesis import given, settings
from hypothesis import strategies as st

import ext_authz._proto as P
from ext_authz._proto.envoy.config.core.v3 import address_pb2, base_pb2
from ext_authz._proto.envoy.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from ext_authz._proto.envoy.type.v3 import http_status_pb2

with warnings.catch_warnings():
    # envoy-data-plane's generated code trips pydantic deprecation warnings on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    import envoy_data_plane.envoy.config.core.v3 as ep_core
    import envoy_data_plane.envoy.service.auth.v3 as ep_auth
    import envoy_data_plane.envoy.type.v3 as ep_type
    import envoy_data_plane.google.protobuf as ep_pb
    import envoy_data_plane.google.rpc as ep_rpc
    from envoy_data_plane.message_pool import default_message_pool

# Envoy deprecated HeaderValueOption.append, but ext_authz still reads it (ENVOY_NOTES.md).
pytestmark = pytest.mark.filterwarnings(
    "ignore:HeaderValueOption.append is deprecated:DeprecationWarning"
)

OUR_FILES = [
    address_pb2.DESCRIPTOR,
    base_pb2.DESCRIPTOR,
    attribute_context_pb2.DESCRIPTOR,
    external_auth_pb2.DESCRIPTOR,
    http_status_pb2.DESCRIPTOR,
]

THEIR_ENUMS: dict[str, Any] = {
    "envoy.type.v3.StatusCode": ep_type.StatusCode,
    "envoy.config.core.v3.HeaderValueOption.HeaderAppendAction": (
        ep_core.HeaderValueOptionHeaderAppendAction
    ),
    "envoy.config.core.v3.SocketAddress.Protocol": ep_core.SocketAddressProtocol,
}

_TYPE_NAMES = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in vars(FieldDescriptor).items()
    if name.startswith("TYPE_")
}


def _messages(descriptors: list[Descriptor]) -> Iterator[Descriptor]:
    for descriptor in descriptors:
        if descriptor.GetOptions().map_entry:
            continue
        yield descriptor
        yield from _messages(list(descriptor.nested_types))


def _enums() -> Iterator[EnumDescriptor]:
    for file in OUR_FILES:
        yield from file.enum_types_by_name.values()
        for message in _messages(list(file.message_types_by_name.values())):
            yield from message.enum_types


def _all_messages() -> list[Descriptor]:
    found: list[Descriptor] = []
    for file in OUR_FILES:
        found.extend(_messages(list(file.message_types_by_name.values())))
    return found


def _kind(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        return "map"
    return _TYPE_NAMES[field.type]


# --- structure ---------------------------------------------------------------------------


@pytest.mark.parametrize("ours", _all_messages(), ids=lambda d: d.full_name)
def test_message_fields_match_envoy(ours: Descriptor) -> None:
    theirs = default_message_pool.url_to_type[f"type.googleapis.com/{ours.full_name}"]
    their_fields = theirs._betterproto.meta_by_field_name
    our_fields = {
        field.name: (
            field.number,
            _kind(field),
            field.is_repeated and _kind(field) != "map",
            field.containing_oneof.name if field.containing_oneof else None,
        )
        for field in ours.fields
    }
    expected = {
        name: (meta.number, meta.proto_type, meta.repeated, meta.group)
        for name, meta in their_fields.items()
    }
    # Our messages are whole copies of Envoy's, not partial ones.
    assert our_fields == expected


@pytest.mark.parametrize("ours", list(_enums()), ids=lambda d: d.full_name)
def test_enums_match_envoy(ours: EnumDescriptor) -> None:
    theirs = THEIR_ENUMS[ours.full_name]
    assert {v.name: v.number for v in ours.values} == {m.name: m.value for m in theirs}


def test_every_enum_is_checked() -> None:
    assert {e.full_name for e in _enums()} == set(THEIR_ENUMS)


def test_grpc_method_path() -> None:
    service = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
    method = service.methods_by_name["Check"]
    assert service.full_name == "envoy.service.auth.v3.Authorization"
    assert service.full_name == P.AUTHORIZATION_SERVICE_NAME
    assert method.full_name == "envoy.service.auth.v3.Authorization.Check"
    assert method.input_type.full_name == "envoy.service.auth.v3.CheckRequest"
    assert method.output_type.full_name == "envoy.service.auth.v3.CheckResponse"


class _RecordingChannel:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def unary_unary(self, path: str, **_: Any) -> object:
        self.paths.append(path)
        return object()


class _RecordingServer:
    def __init__(self) -> None:
        self.generic: list[str] = []
        self.registered: list[tuple[str, list[str]]] = []

    def add_generic_rpc_handlers(self, handlers: tuple[Any, ...]) -> None:
        self.generic.extend(h.service_name() for h in handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered.append((service, sorted(handlers)))


def test_stub_and_servicer_use_envoys_path() -> None:
    channel = _RecordingChannel()
    P.AuthorizationStub(channel)
    assert channel.paths == ["/envoy.service.auth.v3.Authorization/Check"]

    server = _RecordingServer()
    P.add_AuthorizationServicer_to_server(P.AuthorizationServicer(), server)
    assert server.generic == ["envoy.service.auth.v3.Authorization"]
    assert server.registered == [("envoy.service.auth.v3.Authorization", ["Check"])]
    assert external_auth_pb2_grpc.AuthorizationServicer is P.AuthorizationServicer


# --- Envoy -> us: CheckRequest -----------------------------------------------------------


def _their_peer(ip: str, port: int, **extra: Any) -> ep_auth.AttributeContextPeer:
    return ep_auth.AttributeContextPeer(
        address=ep_core.Address(socket_address=ep_core.SocketAddress(address=ip, port_value=port)),
        **extra,
    )


def test_check_request_from_envoy() -> None:
    when = dt.datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=dt.UTC)
    theirs = ep_auth.CheckRequest(
        attributes=ep_auth.AttributeContext(
            source=_their_peer("203.0.113.7", 54321, principal="spiffe://t/ns/a/sa/b"),
            destination=_their_peer("10.0.0.2", 8080, labels={"app": "web"}),
            request=ep_auth.AttributeContextRequest(
                time=when,
                http=ep_auth.AttributeContextHttpRequest(
                    id="11232467923401530817",
                    method="POST",
                    headers={
                        ":authority": "app.example.test",
                        ":path": "/a/b?x=1&y=%20",
                        "cookie": "a=1,b=2",
                        "x-request-id": "r-1",
                    },
                    path="/a/b?x=1&y=%20",
                    host="app.example.test",
                    scheme="https",
                    size=-1,
                    protocol="HTTP/2",
                    body="k=v",
                    raw_body=b"\x00\xff",
                    header_map=ep_core.HeaderMap(
                        headers=[
                            ep_core.HeaderValue(key="set-me", raw_value=b"one"),
                            ep_core.HeaderValue(key="set-me", raw_value=b"two"),
                        ]
                    ),
                ),
            ),
            context_extensions={"app": "grafana", "mode": "proxy"},
            metadata_context=ep_core.Metadata(
                filter_metadata={
                    "f": ep_pb.Struct(fields={"k": ep_pb.Value(string_value="v")}),
                }
            ),
            tls_session=ep_auth.AttributeContextTlsSession(sni="app.example.test"),
        )
    )

    ours = P.CheckRequest.FromString(bytes(theirs))

    attrs = ours.attributes
    assert attrs.source.address.socket_address.address == "203.0.113.7"
    assert attrs.source.address.socket_address.port_value == 54321
    assert attrs.source.address.WhichOneof("address") == "socket_address"
    assert attrs.source.principal == "spiffe://t/ns/a/sa/b"
    assert attrs.destination.address.socket_address.address == "10.0.0.2"
    assert attrs.destination.address.socket_address.port_value == 8080
    assert dict(attrs.destination.labels) == {"app": "web"}
    assert attrs.request.time.ToDatetime(tzinfo=dt.UTC) == when
    http = attrs.request.http
    assert http.id == "11232467923401530817"
    assert http.method == "POST"
    assert dict(http.headers) == {
        ":authority": "app.example.test",
        ":path": "/a/b?x=1&y=%20",
        "cookie": "a=1,b=2",
        "x-request-id": "r-1",
    }
    assert http.path == "/a/b?x=1&y=%20"
    assert http.host == "app.example.test"
    assert http.scheme == "https"
    assert http.query == ""
    assert http.fragment == ""
    assert http.size == -1
    assert http.protocol == "HTTP/2"
    assert http.body == "k=v"
    assert http.raw_body == b"\x00\xff"
    assert [(h.key, h.raw_value) for h in http.header_map.headers] == [
        ("set-me", b"one"),
        ("set-me", b"two"),
    ]
    assert dict(attrs.context_extensions) == {"app": "grafana", "mode": "proxy"}
    assert attrs.metadata_context.filter_metadata["f"]["k"] == "v"
    assert attrs.tls_session.sni == "app.example.test"
    assert not attrs.HasField("route_metadata_context")


def test_tcp_check_request_has_no_http() -> None:
    # Istio's network ext_authz filter sends requests without request.http at all.
    theirs = ep_auth.CheckRequest(
        attributes=ep_auth.AttributeContext(
            source=_their_peer("192.0.2.1", 1234),
            request=ep_auth.AttributeContextRequest(),
        )
    )
    ours = P.CheckRequest.FromString(bytes(theirs))
    assert ours.attributes.HasField("request")
    assert not ours.attributes.request.HasField("http")
    assert ours.attributes.request.http.headers == {}
    assert ours.attributes.source.address.socket_address.port_value == 1234


def test_empty_check_request() -> None:
    ours = P.CheckRequest.FromString(bytes(ep_auth.CheckRequest()))
    assert not ours.HasField("attributes")


# --- us -> Envoy: CheckResponse ----------------------------------------------------------


def _their_headers(options: list[ep_core.HeaderValueOption]) -> list[tuple[str, str, bool | None]]:
    found = []
    for option in options:
        assert option.header is not None
        found.append((option.header.key, option.header.value, option.append))
    return found


def _option(
    key: str, value: str, append: bool | None = None, **kw: Any
) -> base_pb2.HeaderValueOption:
    option = P.HeaderValueOption(header=P.HeaderValue(key=key, value=value), **kw)
    if append is not None:
        option.append.CopyFrom(P.BoolValue(value=append))
    return option


def test_ok_response_to_envoy() -> None:
    dynamic = Struct()
    dynamic.update({"user": "akadmin"})
    ours = P.CheckResponse(
        status=P.Status(code=0),
        ok_response=P.OkHttpResponse(
            headers=[
                _option("x-authentik-username", "akadmin", append=False),
                _option("x-forwarded-groups", "a,b", append=True),
                _option("x-unset", "u"),
            ],
            headers_to_remove=["authorization", "cookie"],
            response_headers_to_add=[
                _option("set-cookie", "s=1; Path=/; HttpOnly"),
                _option(
                    "x-once",
                    "1",
                    append_action=P.HeaderValueOption.HeaderAppendAction.ADD_IF_ABSENT,
                    keep_empty_value=True,
                ),
            ],
            query_parameters_to_set=[P.QueryParameter(key="q", value="1 2")],
            query_parameters_to_remove=["token"],
        ),
        dynamic_metadata=dynamic,
    )

    theirs = ep_auth.CheckResponse.parse(ours.SerializeToString())

    assert theirs.status is not None
    assert theirs.status.code == 0
    assert theirs.denied_response is None
    assert theirs.error_response is None
    ok = theirs.ok_response
    assert ok is not None
    assert _their_headers(ok.headers) == [
        ("x-authentik-username", "akadmin", False),
        ("x-forwarded-groups", "a,b", True),
        ("x-unset", "u", None),  # unset BoolValue stays unset: Envoy tells the three apart
    ]
    assert ok.headers_to_remove == ["authorization", "cookie"]
    added = ok.response_headers_to_add
    assert added[0].header is not None
    assert (added[0].header.key, added[0].header.value, added[0].append) == (
        "set-cookie",
        "s=1; Path=/; HttpOnly",
        None,
    )
    assert added[1].append_action == ep_core.HeaderValueOptionHeaderAppendAction.ADD_IF_ABSENT
    assert added[1].keep_empty_value is True
    assert [(q.key, q.value) for q in ok.query_parameters_to_set] == [("q", "1 2")]
    assert ok.query_parameters_to_remove == ["token"]
    assert ok.dynamic_metadata is None
    assert theirs.dynamic_metadata is not None
    assert theirs.dynamic_metadata.fields["user"].string_value == "akadmin"

    # And back: nothing is lost across the two implementations.
    assert P.CheckResponse.FromString(bytes(theirs)) == ours


def test_denied_response_to_envoy() -> None:
    ours = P.CheckResponse(
        status=P.Status(code=16, message="unauthenticated"),
        denied_response=P.DeniedHttpResponse(
            status=P.HttpStatus(code=P.StatusCode.Found),
            headers=[
                _option("location", "https://idp.test/authorize?x=1"),
                _option("set-cookie", "a=1"),
                _option("set-cookie", "b=2"),
            ],
            body="redirecting",
        ),
    )

    theirs = ep_auth.CheckResponse.parse(ours.SerializeToString())

    assert theirs.status is not None
    assert (theirs.status.code, theirs.status.message) == (16, "unauthenticated")
    assert theirs.ok_response is None
    denied = theirs.denied_response
    assert denied is not None
    assert denied.status is not None
    assert denied.status.code == ep_type.StatusCode.Found == 302
    assert _their_headers(denied.headers) == [
        ("location", "https://idp.test/authorize?x=1", None),
        ("set-cookie", "a=1", None),
        ("set-cookie", "b=2", None),
    ]
    assert denied.body == "redirecting"
    assert P.CheckResponse.FromString(bytes(theirs)) == ours


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("OK", 200),
        ("NoContent", 204),
        ("Found", 302),
        ("BadRequest", 400),
        ("Unauthorized", 401),
        ("Forbidden", 403),
        ("InternalServerError", 500),
        ("BadGateway", 502),
        ("ServiceUnavailable", 503),
        ("GatewayTimeout", 504),
    ],
)
def test_status_codes_we_use(name: str, code: int) -> None:
    assert P.StatusCode.Value(name) == code
    wire = P.HttpStatus(code=code).SerializeToString()
    assert ep_type.HttpStatus.parse(wire).code == ep_type.StatusCode(code)
    assert ep_type.StatusCode(code).name == name


def test_denied_response_from_envoy() -> None:
    theirs = ep_auth.CheckResponse(
        status=ep_rpc.Status(code=7, message="no"),
        denied_response=ep_auth.DeniedHttpResponse(
            status=ep_type.HttpStatus(code=ep_type.StatusCode.Forbidden),
            headers=[
                ep_core.HeaderValueOption(
                    header=ep_core.HeaderValue(key="www-authenticate", value='Basic realm="x"'),
                    append=False,
                )
            ],
            body="denied",
        ),
    )
    ours = P.CheckResponse.FromString(bytes(theirs))
    assert (ours.status.code, ours.status.message) == (7, "no")
    assert ours.WhichOneof("http_response") == "denied_response"
    assert ours.denied_response.status.code == P.StatusCode.Forbidden
    header = ours.denied_response.headers[0]
    assert (header.header.key, header.header.value) == ("www-authenticate", 'Basic realm="x"')
    assert header.HasField("append")
    assert header.append.value is False
    assert ours.denied_response.body == "denied"


# --- properties ----------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=40)
_header_maps = st.dictionaries(_text, _text, max_size=8)


@settings(max_examples=60, deadline=None)
@given(headers=_header_maps, path=_text, extensions=_header_maps, size=st.integers(-1, 2**62))
def test_any_http_request_crosses_from_envoy(
    headers: dict[str, str], path: str, extensions: dict[str, str], size: int
) -> None:
    theirs = ep_auth.CheckRequest(
        attributes=ep_auth.AttributeContext(
            request=ep_auth.AttributeContextRequest(
                http=ep_auth.AttributeContextHttpRequest(headers=headers, path=path, size=size)
            ),
            context_extensions=extensions,
        )
    )
    ours = P.CheckRequest.FromString(bytes(theirs))
    assert dict(ours.attributes.request.http.headers) == headers
    assert ours.attributes.request.http.path == path
    assert ours.attributes.request.http.size == size
    assert dict(ours.attributes.context_extensions) == extensions
    assert ep_auth.CheckRequest.parse(ours.SerializeToString()) == theirs


@settings(max_examples=60, deadline=None)
@given(
    headers=st.lists(st.tuples(_text, _text, st.sampled_from([None, True, False])), max_size=6),
    removed=st.lists(_text, max_size=4),
)
def test_any_ok_response_crosses_to_envoy(
    headers: list[tuple[str, str, bool | None]], removed: list[str]
) -> None:
    ours = P.CheckResponse(
        status=P.Status(code=0),
        ok_response=P.OkHttpResponse(
            headers=[_option(k, v, append=a) for k, v, a in headers],
            headers_to_remove=removed,
        ),
    )
    theirs = ep_auth.CheckResponse.parse(ours.SerializeToString())
    assert theirs.ok_response is not None
    assert _their_headers(theirs.ok_response.headers) == headers
    assert theirs.ok_response.headers_to_remove == removed
