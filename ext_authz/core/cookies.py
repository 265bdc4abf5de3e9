"""Reading the `Cookie` header and writing `Set-Cookie` values (SPEC §6).

Envoy hands us repeated `cookie` headers joined with `,` (`a=1,b=2`) next to the
usual `; ` separator, so both split pairs. RFC 6265 cookie values never contain a
comma or semicolon, which makes that split safe. Parsing never raises.

`strip_cookies` takes our cookies out of the header the upstream sees (SPEC §7) and
leaves every other byte as the client sent it: the other cookies are the upstream's
business, including values our split would misread (`c=3,4`, `b="2"`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass

__all__ = [
    "CookieHeader",
    "cookie_name_for",
    "expire_cookie",
    "get_cookie",
    "parse_cookies",
    "session_cookie",
    "strip_cookies",
]

_SEPARATOR = re.compile(r"([;,])")


def cookie_name_for(client_id: str) -> str:
    """authentik's proxy cookie name: `authentik_proxy_` + 8 hex digits of SHA-256(client_id)."""
    return "authentik_proxy_" + hashlib.sha256(client_id.encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class CookieHeader:
    """A `Cookie` header split once into its pieces (between `;` and `,`) and the
    separators between them, for reading our cookie and for stripping it (one split
    per Check, not one per use)."""

    text: str
    pieces: tuple[str, ...]
    separators: tuple[str, ...]

    @classmethod
    def parse(cls, header: str) -> CookieHeader:
        parts = _SEPARATOR.split(header)
        return cls(header, tuple(parts[0::2]), tuple(parts[1::2]))

    def pairs(self) -> list[tuple[str, str]]:
        """Every `name=value` pair in order; pieces without `=` are skipped."""
        pairs: list[tuple[str, str]] = []
        for piece in self.pieces:
            name, eq, value = piece.strip(" \t").partition("=")
            if eq and name:
                value = value.strip(" \t")
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                pairs.append((name, value))
        return pairs

    def get(self, name: str) -> str | None:
        """The first value of cookie `name`, or None."""
        if name not in self.text:
            return None
        for key, value in self.pairs():
            if key == name:
                return value
        return None

    def without(self, names: Collection[str]) -> str | None:
        """The header without the named cookies; None when no cookie is left.

        A named cookie is a piece that reads `name=...`; it goes with one separator
        and the whitespace around it. Everything else stays byte for byte: the other
        pieces (quotes, spacing, pieces without `=`) and the separators between them.
        Where pieces were removed between two kept ones, the separator kept is a `,`
        if there was one (Envoy's join of two `cookie` header lines), else the first
        `;`, each with the whitespace that followed it. When no named cookie is
        present, the header itself is returned, untouched.
        """
        header = self.text
        if not header:
            return header
        # A substring scan per name is the cheapest "none of ours" for a few names; with
        # many applications (SPEC §11: a thousand providers) one set lookup per piece is.
        if len(names) <= _SCAN_NAMES and not any(name in header for name in names):
            return header
        pieces, separators = self.pieces, self.separators
        named = [_is_named(piece, names) for piece in pieces]
        if not any(named):
            return header
        out: list[str] = []
        pending: tuple[str, str] | None = None  # (separator, the whitespace after it)
        last = -1
        for i, piece in enumerate(pieces):
            if i:
                separator = separators[i - 1], piece[: len(piece) - len(piece.lstrip(" \t"))]
                if pending is None or (separator[0] == "," and pending[0] == ";"):
                    pending = separator
            if named[i]:
                continue
            if out and pending is not None:
                out += pending
            out.append(piece.lstrip(" \t") if i else piece)
            pending, last = None, i
        if 0 <= last < len(pieces) - 1:
            out[-1] = out[-1].rstrip(" \t")  # what followed it went
        text = "".join(out)
        return text if text.strip(" \t;,") else None


def parse_cookies(header: str | None) -> list[tuple[str, str]]:
    """Every `name=value` pair in order; pieces without `=` are skipped."""
    return CookieHeader.parse(header).pairs() if header else []


def get_cookie(header: str | None, name: str) -> str | None:
    """The first value of cookie `name`, or None."""
    return CookieHeader.parse(header).get(name) if header else None


def strip_cookies(header: str | None, names: Collection[str]) -> str | None:
    """`CookieHeader.without`: the header without the named cookies (see there)."""
    if not header or not any(name in header for name in names):
        return header
    return CookieHeader.parse(header).without(names)


_SCAN_NAMES = 16


def _is_named(piece: str, names: Collection[str]) -> bool:
    name, eq, _ = piece.strip(" \t").partition("=")
    return bool(eq) and name in names


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
