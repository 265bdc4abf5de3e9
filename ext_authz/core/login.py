"""The browser sign-in's pure parts (SPEC §6): return URLs, PKCE, the authorize URL.

Return URLs are the classic open-redirect hole, so the rule is an allow-list: an
absolute http(s) URL (or a path starting with a single `/`) whose host is the
application's own, or inside `cookie_domain` on a dot boundary. Everything else
falls back to `external_host`.
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
    "authorize_url",
    "code_challenge",
    "end_session_url",
    "safe_return_url",
    "start_return_url",
]

_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")


def safe_return_url(candidate: str | None, app: Application) -> str:
    fallback = app.external_host.rstrip("/") + "/"
    if not candidate or _FORBIDDEN.search(candidate):
        return fallback
    if candidate.startswith("/") and not candidate.startswith("//"):
        return app.external_host.rstrip("/") + candidate
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
