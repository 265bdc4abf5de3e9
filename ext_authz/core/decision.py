"""Decisions as values, and the answers every path shares (401, 403, 503, pages).

`Allow` and `Deny` are what leaves the core, in HTTP terms only: each transport's
adapter turns them into its own answer (`adapters/envoy.py` a gRPC CheckResponse,
deriving the gRPC status from the HTTP one; `adapters/forward_auth.py` an HTTP
response). A redirect is a `Deny` with status 302 and a `location` header.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ext_authz.core.model import AuthRequest, Identity

if TYPE_CHECKING:
    from ext_authz.core.upstream import IdentityPart

__all__ = [
    "Allow",
    "Decision",
    "Deny",
    "deny_no_http",
    "error_page",
    "forbidden",
    "not_found_app",
    "redirect",
    "throttled_page",
    "too_many_requests",
    "unauthorized",
    "unavailable",
    "unavailable_page",
    "wants_json",
]

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Allow:
    """Let the request through with these mutations.

    `set_headers` overwrite upstream headers; `remove_headers` are removed;
    `response_headers` go to the client (Set-Cookie). `method` names how the request
    was authenticated ("session", "basic", "bearer") or why it passed ("skip").
    `create_session` asks the service to create a session and add its cookie.
    `identity_part` names what the identity's headers left out (`dropped`: unsafe
    values; `undeclared`: additionalHeaders names the application does not declare).
    """

    method: str
    identity: Identity | None = None
    set_headers: Headers = ()
    remove_headers: tuple[str, ...] = ()
    response_headers: Headers = ()
    create_session: bool = False
    # The identity part whose headers open `set_headers` (None without an identity).
    identity_part: IdentityPart | None = field(default=None, compare=False, repr=False)

    def with_response_headers(self, *headers: tuple[str, str]) -> Allow:
        return replace(self, response_headers=self.response_headers + headers)


@dataclass(frozen=True, slots=True)
class Deny:
    """Answer the client directly: `status`, `headers` and `body` are the HTTP answer;
    `reason` names it for metrics and logs, `method` how the request tried to
    authenticate."""

    status: int
    reason: str
    headers: Headers = ()
    body: str = ""
    method: str = ""

    def with_headers(self, *headers: tuple[str, str]) -> Deny:
        return replace(self, headers=self.headers + headers)


Decision = Allow | Deny


def wants_json(request: AuthRequest) -> bool:
    accept = (request.header("accept") or "").lower()
    return "application/json" in accept or "+json" in accept


def _body(request: AuthRequest, error: str, detail: str, status: int) -> tuple[Headers, str]:
    if wants_json(request):
        return (("content-type", "application/json"),), json.dumps(
            {"error": error, "detail": detail}
        )
    return (("content-type", "text/plain; charset=utf-8"),), f"{status} {detail}\n"


def deny_no_http() -> Deny:
    """SPEC §4 step 1: a check without HTTP attributes (Istio's TCP ext_authz)."""
    return Deny(status=403, reason="no_http", body="no HTTP attributes")


def not_found_app(request: AuthRequest) -> Deny:
    headers, body = _body(request, "unknown_host", "unknown host", 403)
    if not wants_json(request):
        body = "unknown host"
    return Deny(
        status=403,
        reason="unknown_host",
        headers=(*headers, ("cache-control", "no-store")),
        body=body,
    )


def unauthorized(
    request: AuthRequest,
    *,
    realm: str,
    basic: bool,
    bearer: bool,
    invalid_token: bool,
    detail: str,
    reason: str,
) -> Deny:
    """401 with `WWW-Authenticate` for each enabled scheme (SPEC §4, end of step 7)."""
    challenges: list[tuple[str, str]] = []
    quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
    if basic:
        challenges.append(("www-authenticate", f'Basic realm="{quoted}"'))
    if bearer:
        extra = ', error="invalid_token"' if invalid_token else ""
        challenges.append(("www-authenticate", f'Bearer realm="{quoted}"{extra}'))
    error = "invalid_token" if invalid_token else "unauthorized"
    headers, body = _body(request, error, detail, 401)
    return Deny(
        status=401,
        reason=reason,
        headers=(*challenges, *headers, ("cache-control", "no-store")),
        body=body,
    )


def forbidden(request: AuthRequest, *, app_name: str) -> Deny:
    """403 `forbidden`: authenticated, but the application's access rules refuse (SPEC
    §12). JSON when the client accepts it, else a small page; never cached."""
    if wants_json(request):
        headers, body = _body(request, "forbidden", "access denied", 403)
        return Deny(
            status=403,
            reason="forbidden",
            headers=(*headers, ("cache-control", "no-store")),
            body=body,
        )
    return error_page(
        403,
        title="Access denied",
        detail=f"You are signed in, but you may not use this part of {app_name}.",
        reason="forbidden",
    )


def unavailable(request: AuthRequest, *, detail: str, reason: str, retry_after: int = 5) -> Deny:
    """503 with `Retry-After`: a dependency is down; never a 401, never an allow."""
    headers, body = _body(request, "unavailable", detail, 503)
    return Deny(
        status=503,
        reason=reason,
        headers=(*headers, ("retry-after", str(retry_after)), ("cache-control", "no-store")),
        body=body,
    )


def too_many_requests(request: AuthRequest, *, retry_after: int, reason: str) -> Deny:
    """429 with `Retry-After`: the client is past a guessing limit (SPEC §5)."""
    headers, body = _body(request, "too_many_requests", "too many failed attempts", 429)
    return Deny(
        status=429,
        reason=reason,
        headers=(*headers, ("retry-after", str(retry_after)), ("cache-control", "no-store")),
        body=body,
    )


def redirect(location: str, *, reason: str, cookies: tuple[str, ...] = ()) -> Deny:
    headers: list[tuple[str, str]] = [("location", location), ("cache-control", "no-store")]
    headers += [("set-cookie", c) for c in cookies]
    return Deny(status=302, reason=reason, headers=tuple(headers))


def error_page(
    status: int,
    *,
    title: str,
    detail: str,
    reason: str,
    link: tuple[str, str] | None = None,
    cookies: tuple[str, ...] = (),
    extra_headers: Headers = (),
) -> Deny:
    """A small HTML page for browser flows (callback errors). Everything is escaped."""
    link_html = ""
    if link is not None:
        href, text = link
        link_html = f'<p><a href="{html.escape(href, quote=True)}">{html.escape(text)}</a></p>'
    body = (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p>{link_html}</body></html>"
    )
    headers: list[tuple[str, str]] = [
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "no-store"),
        *extra_headers,
    ]
    headers += [("set-cookie", c) for c in cookies]
    return Deny(status=status, reason=reason, headers=tuple(headers), body=body)


def unavailable_page(*, store: bool, retry_after: int = 5) -> Deny:
    """The browser flows' 503: the session store or the IdP is down; try again."""
    what = "session store" if store else "identity provider"
    return error_page(
        503,
        title="Try again shortly",
        detail=f"The {what} is unavailable.",
        reason="store_unavailable" if store else "idp_unavailable",
        extra_headers=(("retry-after", str(retry_after)),),
    )


def throttled_page(*, retry_after: int) -> Deny:
    """The browser flows' 429: this client started too many sign-ins (SPEC §6)."""
    return error_page(
        429,
        title="Too many sign-ins",
        detail="Too many sign-ins were started from your address. Try again shortly.",
        reason="login_throttled",
        extra_headers=(("retry-after", str(retry_after)),),
    )
