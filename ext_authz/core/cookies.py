"""Reading the `Cookie` header and writing `Set-Cookie` values (SPEC §6).

Envoy hands us repeated `cookie` headers joined with `,` (`a=1,b=2`) next to the
usual `; ` separator, so both split pairs. RFC 6265 cookie values never contain a
comma or semicolon, which makes that split safe. Parsing never raises.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection

__all__ = [
    "cookie_name_for",
    "expire_cookie",
    "get_cookie",
    "parse_cookies",
    "session_cookie",
    "strip_cookies",
]

_SPLIT = re.compile(r"[;,]")


def cookie_name_for(client_id: str) -> str:
    """authentik's proxy cookie name: `authentik_proxy_` + 8 hex digits of SHA-256(client_id)."""
    return "authentik_proxy_" + hashlib.sha256(client_id.encode()).hexdigest()[:8]


def parse_cookies(header: str | None) -> list[tuple[str, str]]:
    """Every `name=value` pair in order; pieces without `=` are skipped."""
    if not header:
        return []
    pairs: list[tuple[str, str]] = []
    for piece in _SPLIT.split(header):
        name, eq, value = piece.strip(" \t").partition("=")
        if eq and name:
            value = value.strip(" \t")
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            pairs.append((name, value))
    return pairs


def get_cookie(header: str | None, name: str) -> str | None:
    """The first value of cookie `name`, or None."""
    for key, value in parse_cookies(header):
        if key == name:
            return value
    return None


def strip_cookies(header: str | None, names: Collection[str]) -> str | None:
    """The header without the named cookies, `; `-joined; None when nothing is left."""
    kept = [f"{k}={v}" for k, v in parse_cookies(header) if k not in names]
    return "; ".join(kept) if kept else None


def session_cookie(
    name: str,
    value: str,
    *,
    max_age: int,
    secure: bool,
    domain: str = "",
    path: str = "/",
) -> str:
    """A Set-Cookie value with the attributes of SPEC §6."""
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max(0, int(max_age))}"]
    if domain:
        parts.append(f"Domain={domain}")
    if secure:
        parts.append("Secure")
    parts += ["HttpOnly", "SameSite=Lax"]
    return "; ".join(parts)


def expire_cookie(name: str, *, secure: bool, domain: str = "", path: str = "/") -> str:
    """A Set-Cookie value that makes the browser forget `name`."""
    return (
        session_cookie(name, "", max_age=0, secure=secure, domain=domain, path=path)
        + "; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
    )
