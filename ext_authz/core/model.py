"""The values the decision core works with.

Everything here is a frozen dataclass: built once at the edge (the Envoy adapter, a
verifier, the session repository), read by the core, never mutated. No I/O, no
clock, no randomness: time and random values arrive as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "AuthRequest",
    "Identity",
    "Rejected",
    "Throttled",
    "Unavailable",
    "Verified",
    "VerifyOutcome",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty_mapping() -> Mapping[str, Any]:
    # dataclasses refuse an unhashable default (a mappingproxy) even when read-only.
    return _EMPTY


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """One request as Envoy described it, without protobuf.

    `headers` has lower-case keys (Envoy sends them so), pseudo-headers included;
    repeated headers arrive joined with `,`. `path` is the path without the query;
    `query` the raw query string (no leading `?`). `client` is the client's address
    as the transport knows it (Envoy's downstream address, or a trusted proxy's
    `X-Forwarded-For`): what guesses are counted by (SPEC §5).
    """

    has_http: bool
    method: str = ""
    host: str = ""
    path: str = "/"
    query: str = ""
    scheme: str = ""
    headers: Mapping[str, str] = field(default_factory=_empty_mapping)
    context_extensions: Mapping[str, str] = field(default_factory=_empty_mapping)
    request_id: str = ""
    client: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is, as claims (SPEC §1).

    `attributes` is the merged user-and-group attribute mapping, fixed when the
    identity was verified. `token` is the raw token the identity came from (sent
    upstream as `X-authentik-jwt`); `id_token` is kept for the sign-out hint.
    `expires_at` is the token's `exp` (epoch seconds) when it had one.
    `credential_ref` names the directory credential the identity was verified with (a
    keyed reference, never the secret), so a session or cached credential made from
    it ends when the directory no longer holds it; "" for identities from the IdP.
    `sid` is the IdP's session id (the token's `sid` claim; "" without one): authentik
    names it in SESSION_END when that IdP session ends, and the sessions made from it
    end too (SPEC §11).
    """

    sub: str
    preferred_username: str = ""
    email: str = ""
    name: str = ""
    groups: tuple[str, ...] = ()
    entitlements: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=_empty_mapping)
    token: str = field(default="", repr=False)  # a secret: never in a log line
    id_token: str = field(default="", repr=False)
    provider: str = ""
    expires_at: float | None = None
    credential_ref: str = field(default="", repr=False)
    sid: str = field(default="", repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sub": self.sub,
            "preferred_username": self.preferred_username,
            "email": self.email,
            "name": self.name,
            "groups": list(self.groups),
            "entitlements": list(self.entitlements),
            "attributes": _plain(self.attributes),
            "token": self.token,
            "id_token": self.id_token,
            "provider": self.provider,
            "expires_at": self.expires_at,
            "credential_ref": self.credential_ref,
            "sid": self.sid,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Identity:
        attributes = data.get("attributes") or {}
        expires_at = data.get("expires_at")
        return cls(
            sub=str(data["sub"]),
            preferred_username=str(data.get("preferred_username") or ""),
            email=str(data.get("email") or ""),
            name=str(data.get("name") or ""),
            groups=tuple(str(g) for g in data.get("groups") or ()),
            entitlements=tuple(str(e) for e in data.get("entitlements") or ()),
            attributes=MappingProxyType(dict(attributes)) if attributes else _EMPTY,
            token=str(data.get("token") or ""),
            id_token=str(data.get("id_token") or ""),
            provider=str(data.get("provider") or ""),
            expires_at=float(expires_at) if expires_at is not None else None,
            credential_ref=str(data.get("credential_ref") or ""),
            # Records stored before `sid` existed have none: "" (indexed by nothing).
            sid=str(data.get("sid") or ""),
        )


def _plain(value: Any) -> Any:
    """Turn read-only mapping proxies back into dicts for JSON."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- outcomes of verifying a credential --------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    """The credential is good. `ttl` bounds how long it may be cached (seconds).

    `cached`: the answer came from the credential cache, so some replica verified it
    (and offered a session) moments ago.
    """

    identity: Identity
    ttl: float | None = None
    cached: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """The credential is not valid. `reason` is for logs and never holds the secret."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The verifier could not answer (IdP down, timeout, 5xx): neither good nor bad."""

    reason: str


@dataclass(frozen=True, slots=True)
class Throttled:
    """Not verified at all: the client is past its guessing limit (SPEC §5). The
    answer is 429; `retry_after` is the rest of its window, in seconds."""

    retry_after: int


VerifyOutcome = Verified | Rejected | Unavailable | Throttled
