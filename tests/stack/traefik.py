"""Traefik's forwardAuth, replayed: what Traefik would send to ext-authz, and what then.

Traefik is not packaged here, so tests read deploy/traefik/dynamic.yml and replay, for
a given client request, the requests Traefik v3 would make and what it would do with
the answers. Every step follows Traefik's source (traefik/traefik, master of
2026-07, v3.7); the functions name the Go function they mirror:

- the entry point (pkg/middlewares/forwardedheaders/forwarded_header.go, `XForwarded`
  with no trusted IPs, Traefik's default): a client's X-Forwarded-* (and their `_`
  spellings) are deleted, then X-Real-Ip, X-Forwarded-Proto, -Port, -Host and -Server
  are set from the connection, and the headers named in `Connection` are dropped;
- the forwardAuth middleware (pkg/middlewares/auth/forward.go, `ServeHTTP`):
  * the auth request (`writeHeader` when trustForwardHeader is set, else
    `oldWriteHeader`): method GET (the original only with preserveRequestMethod), no
    body, to `address` (so Host is the auth server's), every client header except
    hop-by-hop ones (or only authRequestHeaders), then X-Forwarded-For = prior + the
    client address, and X-Forwarded-Method, -Proto, -Port, -Host, -Uri where absent;
  * an answer outside 200-299: relayed to the client as is: status, every header but
    hop-by-hop ones, body; `Location` resolved against `address` unless
    preserveLocationHeader (Go's Response.Location);
  * a 2xx answer: for each authResponseHeaders name (Go's canonical spelling) the
    request's header is deleted and the answer's values set; with
    authResponseHeadersRegex, every request header matching it is deleted and every
    matching answer header copied; the answer's Set-Cookie reach the client only for
    cookies named in addAuthCookiesToResponse (replacing the upstream's of that name).

Go keys headers by their canonical form (textproto.CanonicalMIMEHeaderKey:
`x-authentik-username` is `X-Authentik-Username`, `x_authentik_uid` stays
`X_authentik_uid`): deletions by name match only that form, which is why the shipped
config also has a regex. The auth request goes out byte for byte as built here
(http.client, no default headers added).
"""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import yaml

from tests.stack.proc import ROOT
from tests.stack.templates import render_file

CONFIG = ROOT / "deploy" / "traefik" / "dynamic.yml"

# forward.go hopHeaders (Connection, Keep-Alive, Te, Trailers, Transfer-Encoding, Upgrade)
HOP_HEADERS = ("Connection", "Keep-Alive", "Te", "Trailers", "Transfer-Encoding", "Upgrade")
# forwardedheaders.XHeadersSet
X_HEADERS = frozenset(
    {
        "X-Forwarded-Proto", "X-Forwarded-Scheme", "X-Forwarded-For", "X-Forwarded-Host",
        "X-Forwarded-Port", "X-Forwarded-Server", "X-Forwarded-Uri", "X-Forwarded-Method",
        "X-Forwarded-Prefix", "X-Forwarded-Tls-Client-Cert",
        "X-Forwarded-Tls-Client-Cert-Info", "X-Scheme", "X-Real-Ip",
    }
)  # fmt: skip

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def canonical_key(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey."""
    if not _TOKEN.match(name):
        return name
    out, upper = [], True
    for ch in name:
        out.append(ch.upper() if upper else ch.lower())
        upper = ch == "-"
    return "".join(out)


class Header:
    """Go's http.Header: canonical key -> values, in insertion order of keys."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self._values.setdefault(canonical_key(name), []).append(value)

    def set(self, name: str, value: str) -> None:
        self._values[canonical_key(name)] = [value]

    def set_values(self, key: str, values: Sequence[str]) -> None:
        """`h[key] = values`: the key as given, not canonicalised."""
        self._values[key] = list(values)

    def delete(self, name: str) -> None:
        self._values.pop(canonical_key(name), None)

    def delete_key(self, key: str) -> None:
        self._values.pop(key, None)

    def get(self, name: str) -> str:
        values = self._values.get(canonical_key(name), [])
        return values[0] if values else ""

    def values(self, name: str) -> list[str]:
        return list(self._values.get(canonical_key(name), []))

    def raw(self, key: str) -> list[str] | None:
        """`h[key]` (no canonicalisation); None when the key is absent."""
        found = self._values.get(key)
        return None if found is None else list(found)

    def names(self) -> list[str]:
        """The keys, as stored (a copy: safe to delete while iterating)."""
        return list(self._values)

    def has(self, name: str) -> bool:
        return canonical_key(name) in self._values

    def copy(self) -> Header:
        out = Header()
        out._values = {k: list(v) for k, v in self._values.items()}
        return out

    def pairs(self) -> list[tuple[str, str]]:
        return [(k, v) for k, values in self._values.items() for v in values]

    def __repr__(self) -> str:
        return f"Header({self.pairs()!r})"


def _remove_connection_headers(header: Header) -> None:
    """auth.RemoveConnectionHeaders / XForwarded.removeConnectionHeaders (no Upgrade)."""
    for value in header.values("Connection"):
        for name in value.split(","):
            if name.strip():
                header.delete(name.strip())
    header.delete("Connection")


def _is_managed_x_header(key: str) -> bool:
    """forwardedheaders.isManagedXHeader: an X-header of Traefik's, `_` read as `-`."""
    return key in X_HEADERS or canonical_key(key.replace("_", "-")) in X_HEADERS


# -- the client request and the answer -------------------------------------------------


@dataclass(frozen=True)
class ClientRequest:
    """What reaches Traefik's entry point."""

    method: str = "GET"
    host: str = "app.company"  # the Host header, with a port when there is one
    target: str = "/"  # path and query as sent
    headers: Sequence[tuple[str, str]] = ()
    remote_addr: str = "192.0.2.10:50000"
    tls: bool = False

    @property
    def client_ip(self) -> str:
        return self.remote_addr.rsplit(":", 1)[0].strip("[]")

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


@dataclass(frozen=True)
class AuthRequest:
    """The forward-auth request Traefik sends."""

    method: str
    url: str
    headers: Header

    @property
    def host(self) -> str:
        """The Host header Go's client sends: the address's host[:port]."""
        return urlsplit(self.url).netloc

    @property
    def target(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True)
class AuthAnswer:
    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""


@dataclass(frozen=True)
class Outcome:
    """What Traefik does with the answer."""

    allowed: bool
    # denied: what the client gets
    status: int = 200
    client_headers: Header = field(default_factory=Header)
    body: bytes = b""
    # allowed: the request as it goes on to the service, and the cookies the client gets
    upstream_headers: Header = field(default_factory=Header)
    client_cookies: tuple[str, ...] = ()


# -- the config ------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardAuth:
    """A forwardAuth middleware (dynamic.ForwardAuth), as the file provider reads it."""

    address: str
    trust_forward_header: bool | None = None
    auth_response_headers: tuple[str, ...] = ()
    auth_response_headers_regex: str = ""
    auth_request_headers: tuple[str, ...] = ()
    add_auth_cookies_to_response: frozenset[str] = frozenset()
    preserve_location_header: bool = False
    preserve_request_method: bool = False
    auth_signin_url: str = ""
    max_response_body_size: int | None = None

    KNOWN = frozenset(
        {
            "address", "tls", "trustForwardHeader", "authResponseHeaders",
            "authResponseHeadersRegex", "authRequestHeaders", "maxResponseBodySize",
            "addAuthCookiesToResponse", "headerField", "forwardBody", "maxBodySize",
            "preserveLocationHeader", "preserveRequestMethod", "authSigninURL",
        }
    )  # fmt: skip

    @classmethod
    def from_yaml(cls, data: Mapping[str, Any]) -> ForwardAuth:
        unknown = set(data) - cls.KNOWN
        if unknown:
            raise ValueError(f"forwardAuth: unknown option(s) {sorted(unknown)}")
        return cls(
            address=str(data["address"]),
            trust_forward_header=data.get("trustForwardHeader"),
            auth_response_headers=tuple(data.get("authResponseHeaders", ())),
            auth_response_headers_regex=str(data.get("authResponseHeadersRegex", "")),
            auth_request_headers=tuple(data.get("authRequestHeaders", ())),
            add_auth_cookies_to_response=frozenset(data.get("addAuthCookiesToResponse", ())),
            preserve_location_header=bool(data.get("preserveLocationHeader", False)),
            preserve_request_method=bool(data.get("preserveRequestMethod", False)),
            auth_signin_url=str(data.get("authSigninURL", "")),
            max_response_body_size=data.get("maxResponseBodySize"),
        )

    @property
    def regex(self) -> re.Pattern[str] | None:
        if not self.auth_response_headers_regex:
            return None
        # Go's RE2 and Python agree on what the shipped regex uses ((?i), ^, classes).
        return re.compile(self.auth_response_headers_regex)


_RULE_PART = re.compile(r"^(Host|PathPrefix)\(`([^`]*)`\)$")


@dataclass(frozen=True)
class Router:
    name: str
    rule: str
    service: str
    priority: int = 0
    middlewares: tuple[str, ...] = ()

    def matches(self, request: ClientRequest) -> bool:
        """Host(`h`) and PathPrefix(`/p`) joined by &&: all the shipped rules use."""
        for part in (p.strip() for p in self.rule.split("&&")):
            found = _RULE_PART.match(part)
            if not found:
                raise ValueError(f"router {self.name}: rule part {part!r} is not replayed")
            kind, value = found.groups()
            host = request.host.rsplit(":", 1)[0] if ":" in request.host else request.host
            if kind == "Host" and host.lower() != value.lower():
                return False
            if kind == "PathPrefix" and not request.path.startswith(value):
                return False
        return True


class TraefikConfig:
    """The parsed dynamic config: routers, forwardAuth middlewares, services."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        http_config = data["http"]
        self.data = data
        self.middlewares = {
            name: ForwardAuth.from_yaml(spec["forwardAuth"])
            for name, spec in http_config.get("middlewares", {}).items()
            if "forwardAuth" in spec
        }
        self.routers = [
            Router(
                name=name,
                rule=spec["rule"],
                service=spec["service"],
                priority=int(spec.get("priority", 0)),
                middlewares=tuple(spec.get("middlewares", ())),
            )
            for name, spec in http_config.get("routers", {}).items()
        ]
        self.services = {
            name: [s["url"] for s in spec["loadBalancer"]["servers"]]
            for name, spec in http_config.get("services", {}).items()
        }

    @classmethod
    def load(cls, values: Mapping[str, object], path: Path = CONFIG) -> TraefikConfig:
        return cls(yaml.safe_load(render_file(path, values)))

    def route(self, request: ClientRequest) -> Router:
        """The matching router of highest priority (Traefik's default is rule length)."""
        candidates = [r for r in self.routers if r.matches(request)]
        if not candidates:
            raise LookupError(f"no router matches {request.host}{request.target}")
        return max(candidates, key=lambda r: (r.priority, len(r.rule)))


# -- the replay ------------------------------------------------------------------------


def entrypoint_headers(request: ClientRequest, hostname: str = "traefik") -> Header:
    """The request's headers after the entry point (XForwarded, no trusted IPs)."""
    header = Header(request.headers)
    for key in header.names():  # DeleteXForwardedHeaders
        if _is_managed_x_header(key):
            header.delete_key(key)
    # rewrite()
    if not header.get("X-Real-Ip"):
        header.set("X-Real-Ip", request.client_ip)
    if not header.get("X-Forwarded-Proto"):
        upgrade = "upgrade" in header.get("Connection").lower() and header.get("Upgrade")
        scheme = (
            ("wss" if request.tls else "ws") if upgrade else ("https" if request.tls else "http")
        )
        header.set("X-Forwarded-Proto", scheme)
    if not header.get("X-Forwarded-Port"):
        header.set("X-Forwarded-Port", _forwarded_port(request, header))
    if not header.get("X-Forwarded-Host") and request.host:
        header.set("X-Forwarded-Host", request.host)
    prior = header.values("X-Forwarded-For")
    if prior:
        header.set("X-Forwarded-For", ", ".join(prior))
    if hostname:
        header.set("X-Forwarded-Server", hostname)
    _remove_connection_headers(header)
    return header


def _forwarded_port(request: ClientRequest, header: Header) -> str:
    """forwardedPort(): the Host's port, else 443 for https/wss or TLS, else 80."""
    if ":" in request.host and not request.host.endswith("]"):
        port = request.host.rsplit(":", 1)[1]
        if port:
            return port
    if header.get("X-Forwarded-Proto") in ("https", "wss") or request.tls:
        return "443"
    return "80"


def auth_request(config: ForwardAuth, request: ClientRequest, incoming: Header) -> AuthRequest:
    """The forward-auth request (ServeHTTP, then writeHeader / oldWriteHeader)."""
    method = request.method if config.preserve_request_method else "GET"
    out = incoming.copy()
    _remove_connection_headers(out)
    for name in HOP_HEADERS:
        out.delete(name)
    allowed = list(config.auth_request_headers)
    if config.trust_forward_header is None:  # oldWriteHeader
        out = _filter(out, allowed)
        out.set("X-Forwarded-For", request.client_ip)
        out.set("X-Forwarded-Proto", "https" if request.tls else "http")
        out.set("X-Forwarded-Method", request.method)
        out.set("X-Forwarded-Host", request.host)
        out.set("X-Forwarded-Uri", request.target)
        return AuthRequest(method, config.address, out)

    if config.trust_forward_header and allowed:
        allowed += sorted(X_HEADERS)
    if not config.trust_forward_header:
        for key in out.names():
            if _is_managed_x_header(key):
                out.delete_key(key)
    if not incoming.has("User-Agent"):
        out.set("User-Agent", "")  # Go then sends no User-Agent at all
    out = _filter(out, allowed)
    client_ip = request.client_ip
    prior = out.raw("X-Forwarded-For")
    if prior is not None:
        client_ip = ", ".join(prior) + ", " + client_ip
    out.set("X-Forwarded-For", client_ip)
    for name, value in (
        ("X-Forwarded-Method", request.method),
        ("X-Forwarded-Proto", "https" if request.tls else "http"),
        ("X-Forwarded-Port", _forwarded_port(request, out)),
        ("X-Forwarded-Host", request.host),
        ("X-Forwarded-Uri", request.target),
    ):
        if out.raw(name) is None:
            out.set(name, value)
    return AuthRequest(method, config.address, out)


def _filter(header: Header, allowed: Sequence[str]) -> Header:
    """filterForwardRequestHeaders: only `allowed` (all when empty)."""
    if not allowed:
        return header
    out = Header()
    for name in allowed:
        values = header.values(name)
        if values:
            out.set_values(canonical_key(name), values)
    return out


def apply_answer(
    config: ForwardAuth, request: ClientRequest, incoming: Header, answer: AuthAnswer
) -> Outcome:
    """What forwardAuth does with the auth server's answer."""
    auth_header = Header(answer.headers)
    if config.auth_signin_url and answer.status == 401:
        return Outcome(
            allowed=False, status=302, client_headers=Header([("Location", config.auth_signin_url)])
        )
    if not 200 <= answer.status < 300:
        client = auth_header.copy()
        for name in HOP_HEADERS:
            client.delete(name)
        location = auth_header.get("Location")
        if location:
            if not config.preserve_location_header:
                location = urljoin(config.address, location)  # Response.Location()
            client.set("Location", location)
        return Outcome(allowed=False, status=answer.status, client_headers=client, body=answer.body)

    upstream = incoming.copy()
    for name in config.auth_response_headers:
        key = canonical_key(name)
        upstream.delete_key(key)
        values = auth_header.raw(key)
        if values:
            upstream.set_values(key, values)
    regex = config.regex
    if regex is not None:
        for key in upstream.names():
            if regex.search(key):
                upstream.delete_key(key)
        for key in auth_header.names():
            if regex.search(key):
                upstream.set_values(key, auth_header.values(key))
    cookies = tuple(
        line
        for line in auth_header.values("Set-Cookie")
        if _cookie_name(line) in config.add_auth_cookies_to_response
    )
    return Outcome(allowed=True, upstream_headers=upstream, client_cookies=cookies)


def _cookie_name(set_cookie: str) -> str:
    parsed: SimpleCookie = SimpleCookie()
    try:
        parsed.load(set_cookie)
    except Exception:
        return set_cookie.split("=", 1)[0].strip()
    return next(iter(parsed), "")


def send(request: AuthRequest, timeout: float = 10.0) -> AuthAnswer:
    """Send the auth request as Go's client would: as built, plus Host (and
    Accept-Encoding: gzip when the request has none)."""
    parts = urlsplit(request.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", request.host)
        if not request.headers.has("Accept-Encoding"):
            conn.putheader("Accept-Encoding", "gzip")  # Go's Transport adds it
        for name, value in request.headers.pairs():
            if name == "User-Agent" and value == "":
                continue  # Go omits an empty User-Agent
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return AuthAnswer(response.status, response.getheaders(), response.read())
    except (OSError, http.client.HTTPException) as exc:
        raise ConnectionError(f"forward auth to {request.url}: {exc}") from exc
    finally:
        conn.close()


class Traefik:
    """The shipped Traefik config, replayed for one client request at a time."""

    def __init__(self, values: Mapping[str, object], path: Path = CONFIG) -> None:
        self.config = TraefikConfig.load(values, path)
        self.hostname = socket.gethostname()

    def forward_auth(self, request: ClientRequest) -> tuple[AuthRequest | None, Outcome]:
        """Route `request`; through its forwardAuth middleware if it has one.

        Returns the auth request sent (None when the router has no forwardAuth) and
        what Traefik did with the answer.
        """
        router = self.config.route(request)
        incoming = entrypoint_headers(request, self.hostname)
        sent: AuthRequest | None = None
        outcome = Outcome(allowed=True, upstream_headers=incoming)
        for name in router.middlewares:
            middleware = self.config.middlewares[name]
            sent = auth_request(middleware, request, outcome.upstream_headers)
            outcome = apply_answer(middleware, request, outcome.upstream_headers, send(sent))
            if not outcome.allowed:
                break
        return sent, outcome
