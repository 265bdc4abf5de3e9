"""HTTP forward auth (SPEC §10): each proxy's dialect in, the decision's answer out.

The decision is the one of SPEC §4-§7 (`CheckService.check`); this module only
rebuilds the original request from what each proxy sends, and maps the answer to
what that proxy can relay:

    path                                          original request from          denied answer
    /outpost.goauthentik.io/auth/envoy<path>      method, Host, headers; <path>   as decided
    /outpost.goauthentik.io/auth/nginx            X-Original-URL (or -URI + Host) 401/403 only
    /outpost.goauthentik.io/auth/traefik|caddy    X-Forwarded-Method/Proto/Host/Uri  as decided
    /outpost.goauthentik.io/{start,callback,...}  this request (X-Forwarded-Host)   as decided
    any path with an outpost query flag           this request                      as decided

Trust: `X-Forwarded-*`, `X-Original-*`, `X-Forwarded-For` and `X-Request-Id` are
believed only from peers in `server.forward_auth_trusted_proxies`; a forward-auth
request (`/auth/...`) from any other peer is 403. Missing or unparsable original-request
headers are 400 `bad forward-auth request`.

Allowed: 200, empty body, the upstream's headers as response headers for the proxy
to copy. Envoy (`allowed_upstream_headers`) overwrites the named headers and removes
the ones listed in `x-envoy-auth-headers-to-remove`, leaving the rest as the client
sent them. nginx, Traefik and Caddy copy a fixed list of names, and a name missing
from the answer leaves the upstream without it (nginx: `proxy_set_header` with an
empty variable; Traefik: `authResponseHeaders` deletes first). So for them the answer
carries the upstream's whole view of the copied headers: ours, and the client's own
`authorization` and `cookie` when they are to pass untouched.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Protocol
from urllib.parse import urlsplit

from ext_authz.adapters.http_server import HttpRequest, HttpResponse
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.model import AuthRequest
from ext_authz.core.routing import OUTPOST_PREFIX, outpost_route
from ext_authz.logs import event

__all__ = [
    "AUTH_PREFIX",
    "Dialect",
    "ForwardAuth",
    "Refused",
    "TrustedProxies",
    "from_proxy",
    "to_response",
]

AUTH_PREFIX = OUTPOST_PREFIX + "auth/"
ENVOY_PREFIX = AUTH_PREFIX + "envoy"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Check(Protocol):
    """`CheckService.check` as the forward-auth port calls it."""

    def __call__(
        self, request: AuthRequest, transport: str = ..., *, can_redirect: bool = ...
    ) -> Awaitable[Allow | Deny]: ...


class Dialect(enum.Enum):
    ENVOY = "envoy"
    NGINX = "nginx"
    TRAEFIK = "traefik"
    CADDY = "caddy"
    DIRECT = "direct"  # an outpost path the proxy forwards as an ordinary request

    @property
    def copies_named_headers(self) -> bool:
        """The proxy sets a fixed list of upstream headers from our answer (absent =
        removed), rather than overwriting and removing what we name (Envoy)."""
        return self in (Dialect.NGINX, Dialect.TRAEFIK, Dialect.CADDY)


_DIALECT_PATHS = {
    AUTH_PREFIX + "nginx": Dialect.NGINX,
    AUTH_PREFIX + "traefik": Dialect.TRAEFIK,
    AUTH_PREFIX + "caddy": Dialect.CADDY,
}


class TrustedProxies:
    """Is this peer one whose forwarded headers we believe? Answers are remembered
    per address (a handful of proxies ask all the time)."""

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self._networks = networks
        self._known: dict[str, bool] = {}

    def __contains__(self, peer: str) -> bool:
        known = self._known.get(peer)
        if known is None:
            known = self._check(peer)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[peer] = known
        return known

    def _check(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The client as the nearest untrusted hop: walk `X-Forwarded-For` from the
        right past our own trusted proxies (each appends the address it saw)."""
        if not forwarded_for or peer not in self:
            return peer
        hops = [_address_of(h.strip()) for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if hop not in self:
                return hop
        return hops[0] if hops else peer


def _address_of(hop: str) -> str:
    """An X-Forwarded-For entry without the port some load balancers append
    (`[2001:db8::1]:443`, `192.0.2.1:443`): a port is not part of who the client is,
    and a trusted proxy's address with one must still be recognised as trusted."""
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    address, colon, port = hop.partition(":")
    if colon and port.isdigit() and ":" not in port:
        return address
    return hop


class Refused(Exception):
    """A forward-auth request we answer ourselves, before any decision: `result` is
    the metrics label (`bad_request`, `untrusted_peer`, `not_found`), the message a
    detail safe to log (it never quotes a header value)."""

    def __init__(self, status: int, result: str, detail: str, body: str) -> None:
        super().__init__(detail)
        self.status = status
        self.result = result
        self.body = body


def _bad(detail: str) -> Refused:
    return Refused(400, "bad_request", detail, "bad forward-auth request\n")


def _not_found() -> Refused:
    return Refused(404, "not_found", "not found", "not found\n")


def from_proxy(request: HttpRequest, trusted: TrustedProxies) -> tuple[Dialect, AuthRequest]:
    """The original request this forward-auth request describes.

    Raises `Refused` (400, 403 or 404) when it cannot be believed or read."""
    request = _as_text(request)
    path, _, query = request.target.partition("?")
    headers = request.headers
    believed = request.peer in trusted
    dialect = _dialect_of(path, query)
    if dialect is not Dialect.DIRECT and not believed:
        raise Refused(403, "untrusted_peer", "peer not in trusted proxies", "forbidden\n")

    if dialect is Dialect.ENVOY:
        original = path[len(ENVOY_PREFIX) :] or "/"
        if not original.startswith("/"):
            raise _bad("envoy: path does not continue the prefix")
        # Envoy's HCM sets x-forwarded-proto on every request it forwards.
        method, host, path = request.method, headers.get("host", ""), original
        scheme = _first(headers.get("x-forwarded-proto", ""))
    elif dialect is Dialect.NGINX:
        method, scheme, host, path, query = _nginx_original(headers, request.method)
    elif dialect in (Dialect.TRAEFIK, Dialect.CADDY):
        method, scheme, host, path, query = _forwarded_original(headers)
    else:
        method = request.method
        forwarded_host = _first(headers.get("x-forwarded-host", "")) if believed else ""
        host = forwarded_host or headers.get("host", "")
        scheme = _first(headers.get("x-forwarded-proto", "")) if believed else ""
    scheme = scheme.lower()
    if not host:
        raise _bad(f"{dialect.value}: no host")
    if scheme and scheme not in ("http", "https"):
        raise _bad(f"{dialect.value}: unknown scheme")

    client = trusted.client_address(request.peer, headers.get("x-forwarded-for"))
    auth_request = AuthRequest(
        has_http=True,
        method=method.upper(),
        host=host,
        path=path or "/",
        query=query,
        scheme=scheme,
        headers=headers,
        context_extensions=MappingProxyType({}),
        request_id=(headers.get("x-request-id", "") if believed else ""),
        client=client,
    )
    if dialect is Dialect.DIRECT and outpost_route(auth_request) is None:
        raise _not_found()
    return dialect, auth_request


_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _as_text(request: HttpRequest) -> HttpRequest:
    """`request` as the decision may read it: text only. The HTTP server keeps bytes
    that are not UTF-8 as lone surrogates (so they can be written back unchanged), but
    the decision hashes and seals what it reads (cookie values, states, paths) as
    UTF-8; such bytes become U+FFFD here, so a cookie or state holding them simply
    does not resolve, as any other unknown value."""
    headers = request.headers
    if request.target.isascii() and all(v.isascii() for v in headers.values()):
        return request  # the common case, checked cheaply
    clean = {k: _UNDECODABLE.sub("\ufffd", v) for k, v in headers.items()}
    return HttpRequest(
        method=request.method,
        target=_UNDECODABLE.sub("\ufffd", request.target),
        headers=MappingProxyType(clean),
        peer=request.peer,
    )


def _dialect_of(path: str, query: str) -> Dialect:
    if path.startswith(AUTH_PREFIX):
        dialect = _DIALECT_PATHS.get(path.rstrip("/"))
        if dialect is not None:
            return dialect
        if path == ENVOY_PREFIX or path.startswith(ENVOY_PREFIX + "/"):
            return Dialect.ENVOY
        raise _not_found()
    return Dialect.DIRECT


def _first(value: str) -> str:
    """The first of a list a chain of proxies appended to (X-Forwarded-Host, -Proto):
    the one the client's request reached the first proxy with."""
    return value.split(",", 1)[0].strip()


def _split_target(target: str, dialect: str) -> tuple[str, str]:
    if not target.startswith("/") or target.startswith("//"):
        raise _bad(f"{dialect}: the original URI is not a path")
    path, _, query = target.partition("?")
    return path, query.partition("#")[0]


def _nginx_original(headers: Mapping[str, str], method: str) -> tuple[str, str, str, str, str]:
    """nginx `auth_request`: X-Original-URL (absolute, with the port), else
    X-Original-URI with the subrequest's Host (which nginx sends without the port)."""
    method = headers.get("x-original-method") or method
    url = headers.get("x-original-url")
    if url:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            raise _bad("nginx: unparsable X-Original-URL") from None
        if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
            raise _bad("nginx: X-Original-URL is not an absolute http(s) URL")
        path, query = _split_target(parts.path or "/", "nginx")
        return method, parts.scheme, parts.netloc, path, parts.query
    uri = headers.get("x-original-uri")
    if not uri:
        raise _bad("nginx: no X-Original-URL or X-Original-URI")
    path, query = _split_target(uri, "nginx")
    scheme = _first(headers.get("x-forwarded-proto", ""))
    return method, scheme, headers.get("host", ""), path, query


def _forwarded_original(headers: Mapping[str, str]) -> tuple[str, str, str, str, str]:
    """Traefik `forwardAuth` and Caddy `forward_auth`: X-Forwarded-Method, -Proto,
    -Host and -Uri (path and query)."""
    host = _first(headers.get("x-forwarded-host", ""))
    uri = headers.get("x-forwarded-uri", "")
    if not host or not uri:
        raise _bad("forwarded: no X-Forwarded-Host or X-Forwarded-Uri")
    path, query = _split_target(uri, "forwarded")
    scheme = _first(headers.get("x-forwarded-proto", ""))
    method = headers.get("x-forwarded-method", "").strip() or "GET"
    return method, scheme, host, path, query


# --- the answer -------------------------------------------------------------------------

_NGINX_RELAYS = (401, 403)
_PASSED_WHEN_UNTOUCHED = ("authorization", "cookie")


def to_response(
    dialect: Dialect,
    decision: Allow | Deny,
    original: AuthRequest,
    client_headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """The answer for the proxy. `client_headers` are the forward-auth request's own
    headers as received (bytes that are not UTF-8 included), echoed where the proxy
    must hand the client's value on untouched; `original.headers` when not given."""
    if isinstance(decision, Allow):
        headers = original.headers if client_headers is None else client_headers
        response = _allowed(dialect, decision, headers)
    else:
        body = decision.body.encode("utf-8", "surrogateescape")
        response = HttpResponse(decision.status, decision.headers, body)
    if dialect is not Dialect.NGINX:
        return response
    return _for_nginx(response, decision.reason if isinstance(decision, Deny) else "allow")


def _for_nginx(response: HttpResponse, reason: str) -> HttpResponse:
    """What nginx 1.22's auth_request can relay: 2xx, 401 or 403 (anything else is
    its own 500, and its `error_page 401` sends browsers on to the sign-in), the first
    `WWW-Authenticate` line and the first `Set-Cookie` line only (seen in
    tests/integration/test_proxies_subrequest.py). So: other statuses become 401 with
    the reason in the body, the challenges share one line, one cookie is kept (a new
    session's, or the expiry of a stale one: never both in one answer)."""
    status, headers, body = response.status, list(response.headers), response.body
    if status >= 300 and status not in _NGINX_RELAYS:
        headers = [(k, v) for k, v in headers if k == "set-cookie"]
        headers += [("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")]
        body = f"401 {reason}\n".encode()
        status = 401
    challenges = [v for k, v in headers if k == "www-authenticate"]
    cookies = [v for k, v in headers if k == "set-cookie"]
    merged: list[tuple[str, str]] = []
    for name, value in headers:  # one line each, where the first was; the order kept
        if name in ("www-authenticate", "set-cookie"):
            if any(k == name for k, _ in merged):
                continue
            value = ", ".join(challenges) if name == "www-authenticate" else cookies[-1]
        merged.append((name, value))
    return HttpResponse(status, tuple(merged), body)


def _allowed(dialect: Dialect, decision: Allow, client_headers: Mapping[str, str]) -> HttpResponse:
    headers = list(decision.set_headers)
    if dialect.copies_named_headers:
        named = {name.lower() for name, _ in headers}
        removed = set(decision.remove_headers)
        for name in _PASSED_WHEN_UNTOUCHED:
            value = client_headers.get(name)
            if value is not None and name not in named and name not in removed:
                headers.append((name, value))
    elif decision.remove_headers:
        headers.append(("x-envoy-auth-headers-to-remove", ",".join(decision.remove_headers)))
    headers += decision.response_headers
    return HttpResponse(200, tuple(headers))


# --- the handler --------------------------------------------------------------------------


class ForwardAuth:
    """The forward-auth port's handler: translate, decide, translate back."""

    def __init__(
        self,
        check: Check,
        check_now: Callable[[AuthRequest, str], Allow | Deny | None] | None,
        trusted: TrustedProxies,
        refused: Callable[[str], None],
    ) -> None:
        self._check = check
        self._check_now = check_now
        self._trusted = trusted
        self._refused = refused

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        try:
            dialect, original = from_proxy(request, self._trusted)
        except Refused as refused:
            self._refused(refused.result)
            if refused.status != 404:
                event(
                    logging.WARNING,
                    "forward-auth request refused",
                    peer=request.peer,
                    result=refused.result,
                    reason=str(refused),
                )
            return HttpResponse(
                refused.status,
                (("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")),
                refused.body.encode(),
            )
        if self._check_now is not None:
            # From the in-process caches: answered here, without a task (issue 13).
            decision = self._check_now(original, "http")
            if decision is not None:
                return to_response(dialect, decision, original, request.headers)
        return self._answer(dialect, original, request.headers)

    async def _answer(
        self, dialect: Dialect, original: AuthRequest, client_headers: Mapping[str, str]
    ) -> HttpResponse:
        # nginx's auth_request cannot relay a redirect (its error_page does the sign-in).
        decision = await self._check(original, "http", can_redirect=dialect is not Dialect.NGINX)
        return to_response(dialect, decision, original, client_headers)
