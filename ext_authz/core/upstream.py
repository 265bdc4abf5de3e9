"""What the upstream sees about an identity (SPEC §7): "sending authentication".

- identity headers named as authentik sends them;
- `attributes.additionalHeaders`, only under the names the application declares in
  `send.additional_headers`; a declared name is a token without `_`, never one of ours,
  `authorization`, `cookie`, `host` or a hop-by-hop header (`additional_header_problem`
  says why not, for the config);
- HTTP Basic for the upstream from user/group attributes;
- the client's own `x-authentik-*` headers and its copies of declared names (any case,
  `_` read as `-`, as many upstreams read it) go away.

A header value containing a control character (CR, LF, NUL, ...) is dropped, never
passed on, and so is an `additionalHeaders` name that is not declared: the returned
`dropped` and `undeclared` names let the caller log them once.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ext_authz.core.model import Identity

if TYPE_CHECKING:
    from ext_authz.config import Application

__all__ = [
    "NO_IDENTITY",
    "IdentityPart",
    "UpstreamHeaders",
    "additional_header_problem",
    "client_authentik_headers",
    "client_declared_headers",
    "identity_headers",
    "identity_part",
    "is_safe_header_value",
    "upstream_basic",
]

# A field value (RFC 9110 §5.5) without control characters: visible ASCII, space,
# tab and obs-text (>= 0x80) are fine; CR, LF, NUL, DEL and the other controls are not,
# nor lone surrogates (a JSON "\ud800" escape in a claim): they have no UTF-8 form.
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_SPOOFABLE = re.compile(r"^x[-_]authentik[-_][^\n]*$", re.IGNORECASE | re.MULTILINE)
_TOKEN_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Names no attribute may set: credentials, the request's framing and routing, and the
# hop-by-hop headers (RFC 9110 §7.6.1), which a proxy never forwards as they are.
_RESERVED_NAMES = frozenset(
    {
        "authorization",
        "cookie",
        "host",
        "proxy-authorization",
        "set-cookie",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)


@dataclass(frozen=True, slots=True)
class UpstreamHeaders:
    """Headers to set (name, value), the names of headers dropped as unsafe, and the
    `additionalHeaders` names dropped because the application does not declare them."""

    headers: tuple[tuple[str, str], ...]
    dropped: tuple[str, ...]
    undeclared: tuple[str, ...] = ()


def additional_header_problem(name: str) -> str | None:
    """Why `name` cannot be declared in `send.additional_headers`, or None if it can."""
    lowered = name.lower()
    if not _TOKEN_NAME.fullmatch(name):
        return "is not a header name (an RFC 9110 token)"
    if "_" in name:
        # Many upstreams read `_` as `-` (X_Team as X-Team); names with `_` are where
        # spoofed copies hide, so none is ever set.
        return "must not contain '_'"
    if lowered.startswith("x-authentik-"):
        return "is one of the X-authentik-* identity headers"
    if lowered.startswith("x-envoy-"):
        return "is an Envoy control header"
    if lowered in _RESERVED_NAMES:
        return "is a credential, framing or hop-by-hop header"
    return None


def is_safe_header_value(value: str) -> bool:
    return _UNSAFE_VALUE.search(value) is None


def client_authentik_headers(header_names: Iterable[str]) -> list[str]:
    """The names (as given) of every client header that could pose as one of ours."""
    # One regex pass over all names (header names never contain a newline) instead of
    # lower/replace/startswith per header: this runs on every allowed request.
    return _SPOOFABLE.findall("\n".join(header_names))


def client_declared_headers(header_names: Iterable[str], declared: Collection[str]) -> list[str]:
    """The names (as given) of every client header that is a copy of a declared
    additional header (`declared`: lower-case), in any case and with `_` for `-`."""
    if not declared:
        return []
    return [name for name in header_names if name.lower().replace("_", "-") in declared]


def identity_headers(
    identity: Identity, *, app_name: str, provider: str, declared: Collection[str] = ()
) -> UpstreamHeaders:
    """SPEC §7's table, then the `additionalHeaders` of the attributes whose names are
    `declared` (lower-case; the application's `send.additional_headers`)."""
    ours: list[tuple[str, str]] = [
        ("X-authentik-username", identity.preferred_username),
        ("X-authentik-groups", "|".join(identity.groups)),
        ("X-authentik-entitlements", "|".join(identity.entitlements)),
        ("X-authentik-email", identity.email),
        ("X-authentik-name", identity.name),
        ("X-authentik-uid", identity.sub),
        ("X-authentik-jwt", identity.token),
        ("X-authentik-meta-app", app_name),
        ("X-authentik-meta-provider", provider),
    ]
    out: list[tuple[str, str]] = []
    dropped: list[str] = []
    undeclared: list[str] = []
    for name, value in ours:
        if is_safe_header_value(value):
            out.append((name, value))
        else:
            dropped.append(name)
    taken = {name.lower() for name, _ in ours}
    extra = identity.attributes.get("additionalHeaders")
    if isinstance(extra, Mapping):
        for name, value in _additional(extra):
            lowered = name.lower()
            if lowered not in declared:
                # Declared names passed additional_header_problem at start-up, so this
                # also keeps out ours, authorization and `_` spellings such as
                # x_authentik_username.
                undeclared.append(name)
                continue
            if lowered in taken or lowered in _RESERVED_NAMES:
                continue  # a second spelling of one name; or a caller that skipped config
            if not isinstance(value, str) or not is_safe_header_value(value):
                dropped.append(name)
                continue
            taken.add(lowered)
            out.append((name, value))
    return UpstreamHeaders(tuple(out), tuple(dropped), tuple(undeclared))


def _additional(extra: Mapping[Any, Any]) -> Iterable[tuple[str, Any]]:
    for name, value in extra.items():
        if isinstance(name, str) and _TOKEN_NAME.fullmatch(name):
            yield name, value


def upstream_basic(identity: Identity, *, username_attribute: str, password_attribute: str) -> str:
    """`Basic base64(utf8(username:password))` for the upstream.

    username = attributes[username_attribute] when it is a string, else the email;
    password = attributes[password_attribute] when it is a string, else empty.
    """
    attributes = identity.attributes
    username = attributes.get(username_attribute) if username_attribute else None
    if not isinstance(username, str):
        username = identity.email
    password = attributes.get(password_attribute) if password_attribute else None
    if not isinstance(password, str):
        password = ""
    # "replace": a lone surrogate from a JSON claim must not crash the decision.
    raw = f"{username}:{password}".encode("utf-8", "replace")
    encoded = base64.b64encode(raw).decode("ascii")
    return f"Basic {encoded}"


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class IdentityPart:
    """What an identity contributes to every allowed request of one application: the
    upstream headers of SPEC §7, computed once per identity and kept with it.

    The caller (the service) keeps one with each cached session or credential, so it
    lives exactly as long as that entry: no process-wide table holds tokens or
    upstream passwords after a sign-out (issue 11). It compares by identity (`eq=False`)
    and takes weak references, so a transport adapter may key its own rendering of it
    (the Envoy adapter's serialized bytes) by the part itself.
    """

    headers: tuple[tuple[str, str], ...]  # to set (non-empty values)
    removals: tuple[str, ...]  # lower-case names whose value is empty
    names: frozenset[str]  # lower-case names set
    dropped: tuple[str, ...]  # names whose value was unsafe
    undeclared: tuple[str, ...] = ()  # additionalHeaders names not in send.additional_headers


NO_IDENTITY = IdentityPart((), (), frozenset(), ())


def identity_part(identity: Identity, app: Application) -> IdentityPart:
    """The identity headers and upstream Basic of `identity` for `app` (SPEC §7)."""
    pairs: list[tuple[str, str]] = []
    dropped: tuple[str, ...] = ()
    undeclared: tuple[str, ...] = ()
    if app.send.identity_headers:
        built = identity_headers(
            identity,
            app_name=app.name,
            provider=app.provider_name,
            declared=app.send.declared_headers,
        )
        pairs += built.headers
        dropped, undeclared = built.dropped, built.undeclared
    if app.send.basic.enabled:
        basic = upstream_basic(
            identity,
            username_attribute=app.send.basic.username_attribute,
            password_attribute=app.send.basic.password_attribute,
        )
        pairs.append(("authorization", basic))
    # An empty value is sent as a removal: Envoy may skip setting an empty header,
    # which would leave a client-sent value of the same name in place.
    kept = tuple((name, value) for name, value in pairs if value)
    return IdentityPart(
        headers=kept,
        removals=tuple(name.lower() for name, value in pairs if not value),
        names=frozenset(name.lower() for name, _ in kept),
        dropped=dropped,
        undeclared=undeclared,
    )
