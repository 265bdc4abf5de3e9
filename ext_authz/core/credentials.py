"""Parsing the `Authorization` header (SPEC §5), without verifying anything.

The rule this module guards: a header is either absent, a well-formed Basic or
Bearer credential, or "present but not valid" with a reason. Parsing never raises,
whatever bytes arrive; the reasons are safe to log (they never quote the value).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

__all__ = [
    "AUTHENTIK_TOKEN_USERNAME",
    "MAX_BEARER_LENGTH",
    "BasicCredential",
    "BearerCredential",
    "Credential",
    "MalformedCredential",
    "first_value",
    "parse_authorization",
]

#: authentik's reserved username: the password is a token for the Bearer path.
AUTHENTIK_TOKEN_USERNAME = "goauthentik.io/token"
MAX_BEARER_LENGTH = 16 * 1024

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_STD_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_SCHEME_AND_REST = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)(?: +(.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class BasicCredential:
    username: str
    password: str

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"BasicCredential(username={self.username!r}, password=<redacted>)"


@dataclass(frozen=True, slots=True)
class BearerCredential:
    token: str

    def __repr__(self) -> str:
        return "BearerCredential(token=<redacted>)"


@dataclass(frozen=True, slots=True)
class MalformedCredential:
    """Present but not valid. `scheme` is "basic", "bearer" or "other"."""

    scheme: str
    reason: str


Credential = BasicCredential | BearerCredential | MalformedCredential


def first_value(header: str) -> str:
    """The first value of an `Authorization` header, as the credential cache keys it.

    Envoy joins repeated headers with `,`; neither base64 nor a b64token contains a
    comma, so the first value ends at the first comma.
    """
    return header.split(",", 1)[0].strip(" \t")


def parse_authorization(value: str | None) -> Credential | None:
    """Parse the first value of an `Authorization` header; None when there is none."""
    if value is None:
        return None
    first = first_value(value)
    if not first:
        return None if not value.strip(" \t,") else MalformedCredential("other", "empty value")
    match = _SCHEME_AND_REST.fullmatch(first)
    if match is None:
        return MalformedCredential("other", "unparseable header")
    scheme = match.group(1).lower()
    rest = (match.group(2) or "").strip(" ")
    if scheme == "basic":
        return _parse_basic(rest)
    if scheme == "bearer":
        return _parse_bearer(rest)
    return MalformedCredential("other", "unsupported scheme")


def _parse_basic(encoded: str) -> Credential:
    if not encoded:
        return MalformedCredential("basic", "empty credentials")
    if _STD_BASE64.fullmatch(encoded) is None:
        return MalformedCredential("basic", "invalid base64")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return MalformedCredential("basic", "invalid base64")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return MalformedCredential("basic", "not utf-8")
    username, colon, password = decoded.partition(":")
    if not colon:
        return MalformedCredential("basic", "no colon")
    return BasicCredential(username, password)


def _parse_bearer(token: str) -> Credential:
    if not token:
        return MalformedCredential("bearer", "empty token")
    if len(token) > MAX_BEARER_LENGTH:
        return MalformedCredential("bearer", "token too long")
    if _B64TOKEN.fullmatch(token) is None:
        return MalformedCredential("bearer", "invalid token characters")
    return BearerCredential(token)
