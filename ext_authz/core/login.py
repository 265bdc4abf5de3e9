"""The browser sign-in's pure parts (SPEC §6): return URLs, PKCE, the authorize URL.

Return URLs are the classic open-redirect hole, so the rule is an allow-list: an
absolute http(s) URL (or a path starting with a single `/`) whose host is the
application's own, or inside `cookie_domain` on a dot boundary. Everything else
falls back to `external_host`.

A return URL is also stored, in the login state, for up to 10 minutes: one longer
than `MAX_RETURN_URL` (2 KiB) falls back to `external_host` too, so an
unauthenticated request with a huge URL cannot make a huge record (SPEC §6 "Start").
The length is that of the absolute URL as it travels in a request line, with
non-ASCII characters (UTF-8) and `"` percent-encoded: 3 bytes per encoded byte. That
is also an upper bound of its size in the stored JSON (`\\u00e9` is no longer than
`%C3%A9`), so the record stays under ~2.5 KB whatever the characters.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

if TYPE_CHECKING:
    from ext_authz.config import Application

__all__ = [
    "MAX_RETURN_URL",
    "authorize_url",
    "code_challenge",
    "end_session_url",
    "safe_return_url",
    "start_return_url",
]

MAX_RETURN_URL = 2048  # bytes, percent-encoded; longer return URLs become external_host

_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")


def safe_return_url(candidate: str | None, app: Application) -> str:
    fallback = app.external_host.rstrip("/") + "/"
    if not candidate or _FORBIDDEN.search(candidate):
        return fallback
    if candidate.startswith("/") and not candidate.startswith("//"):
        absolute = app.external_host.rstrip("/") + candidate
        return absolute if _fits(absolute) else fallback
    if not _fits(candidate):
        return fallback
    try:
        parts = urlsplit(candidate)
        port = parts.port
    except ValueError:
        return fallback
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return fallback
    host = (parts.hostname or "").lower()
    if not host or "%" in host:
        return fallback
    if host in app.all_host_names:
        effective = port if port is not None else (443 if parts.scheme == "https" else 80)
        if host == app.host_name and effective != app.port:
            return fallback
        return candidate
    domain = app.cookie_domain.lower().lstrip(".")
    if domain and (host == domain or host.endswith("." + domain)):
        return candidate
    return fallback


def _fits(url: str) -> bool:
    """At most MAX_RETURN_URL bytes once percent-encoded (see the module docstring)."""
    if len(url) > MAX_RETURN_URL:  # every character is at least one byte
        return False
    encoded = url.encode("utf-8", "surrogatepass")
    return sum(3 if b >= 0x80 or b == 0x22 else 1 for b in encoded) <= MAX_RETURN_URL


def code_challenge(verifier: str) -> str:
    """PKCE S256 (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(
    endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    nonce: str,
    verifier: str,
) -> str:
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge(verifier),
            "code_challenge_method": "S256",
        }
    )
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


def end_session_url(
    endpoint: str | None, *, id_token: str, post_logout_redirect_uri: str | None, fallback: str
) -> str:
    if not endpoint:
        return fallback
    params = {}
    if id_token:
        params["id_token_hint"] = id_token
    if post_logout_redirect_uri:
        params["post_logout_redirect_uri"] = post_logout_redirect_uri
    if not params:
        return endpoint
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"


def start_return_url(query: str) -> str | None:
    """The `rd` of `/outpost.goauthentik.io/start?rd=...` (not yet checked: see
    `safe_return_url`).

    authentik's nginx snippet builds it unencoded (`start?rd=$scheme://$host$request_uri`),
    so an original URL with a query arrives as `rd=http://h/p?a=1&b=2`, and a plain
    query parser would cut it at `&b=2`. When the first parameter is such an unencoded
    absolute URL (its `://` is literal), everything after `rd=` is that URL.
    """
    first = query.split("&", 1)[0]
    if first.startswith("rd=") and "://" in first:
        return query[len("rd=") :]
    return dict(parse_qsl(query)).get("rd")
