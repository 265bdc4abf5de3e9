"""The decision for a request on a known application: SPEC §4 steps 4-7, in order.

The service gathers the facts (a session found or not, the verdict on the
`Authorization` header, whether the store answered) and hands them in; `decide`
returns the first step's answer. Steps 1-3 (no HTTP, which application, outpost
paths) happen before, in `ext_authz.core.routing`.

    4. session valid                         -> Allow(session)
    5. header verified                       -> Allow(basic|bearer), maybe a new session
    4/5. ...but the access rules refuse      -> Refused: 403 forbidden, session kept (§12)
       header present but not valid          -> remembered
       verifier unavailable (IdP down)       -> 503 unless a skip path
       client past its guessing limit        -> 429 unless a skip path
    6. skip path (in the normalised path)    -> Allow(skip), no identity headers
    7. invalid header and intercepting       -> 401
       session unknown because store down   -> 503
       by `unauthenticated`                  -> 302 to the IdP (StartLogin) or 401
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ext_authz.core.access import ADMIT
from ext_authz.core.cookies import CookieHeader, expire_cookie, session_cookie
from ext_authz.core.credentials import (
    AUTHENTIK_TOKEN_USERNAME,
    BasicCredential,
    BearerCredential,
    Credential,
    MalformedCredential,
    parse_authorization,
)
from ext_authz.core.decision import (
    Allow,
    Deny,
    forbidden,
    too_many_requests,
    unauthorized,
    unavailable,
)
from ext_authz.core.model import (
    AuthRequest,
    Identity,
    Rejected,
    Throttled,
    Unavailable,
    Verified,
)
from ext_authz.core.paths import normalize_path
from ext_authz.core.upstream import (
    NO_IDENTITY,
    IdentityPart,
    client_authentik_headers,
    client_declared_headers,
    identity_part,
)

if TYPE_CHECKING:
    from ext_authz.config import Application
    from ext_authz.core.model import VerifyOutcome

__all__ = [
    "Facts",
    "Refused",
    "StartLogin",
    "challenge",
    "cookie_names",
    "credential_for",
    "decide",
    "expire_session_cookie",
    "is_browser_navigation",
    "login_cookie_name",
    "original_url",
    "session_expiry",
    "session_set_cookie",
]


@dataclass(frozen=True, slots=True)
class StartLogin:
    """Step 7 chose the sign-in redirect; the service stores the login state and
    answers 302 to the IdP (it needs the store and randomness)."""

    return_to: str
    expire_session: bool = False  # the request carried a cookie that did not resolve


@dataclass(frozen=True, slots=True)
class Refused:
    """The identity is authenticated, and the application's access rules refuse this
    request (SPEC §12). `deny` is the answer (403 `forbidden`); the service logs
    `identity.sub` and `rule` (the refusing rule's index, `core.access.NO_RULE` when
    none matched) and keeps the session: nothing here ends or creates one."""

    deny: Deny
    identity: Identity
    rule: int


@dataclass(frozen=True, slots=True)
class Facts:
    request: AuthRequest
    app: Application
    session: Identity | None = None
    stale_cookie: bool = False
    store_down: bool = False
    credential: Credential | None = None
    verdict: VerifyOutcome | None = None
    # Every configured application's session and login cookie names (`cookie_names`),
    # computed once from the settings; empty: this application's own.
    cookie_names: frozenset[str] = frozenset()
    # The request's Cookie header as the caller already split it (None: split here).
    cookies: CookieHeader | None = None
    # The allowed identity's `identity_part` for this application when the caller
    # keeps one with a cached session or credential (None: computed here).
    part: IdentityPart | None = None


def login_cookie_name(app: Application) -> str:
    return app.cookie_name + "_login"


def cookie_names(apps: Iterable[Application]) -> frozenset[str]:
    """The session and login cookie names of every application: what
    `send.strip_session_cookie` keeps from the upstream (SPEC §7). Applications may
    share a `cookie_domain`, so the browser sends each one's cookies to all of them,
    and one application's upstream must not receive a cookie that opens another."""
    return frozenset(name for app in apps for name in (app.cookie_name, login_cookie_name(app)))


def credential_for(request: AuthRequest, app: Application) -> Credential | None:
    """Step 5's parse: None when receiving is off or no header came.

    A scheme that is not enabled counts as present-but-not-valid, except
    authentik's `goauthentik.io/token` Basic, which belongs to the Bearer path.
    """
    basic, bearer = app.receive.basic.enabled, app.receive.bearer.enabled
    if not (basic or bearer):
        return None
    credential = parse_authorization(request.header("authorization"))
    if isinstance(credential, BasicCredential):
        if credential.username == AUTHENTIK_TOKEN_USERNAME:
            if not bearer:
                return MalformedCredential("basic", "token login needs bearer enabled")
            return (
                BearerCredential(credential.password)
                if credential.password
                else (MalformedCredential("bearer", "empty token"))
            )
        if not basic:
            return MalformedCredential("basic", "basic not enabled")
    if isinstance(credential, BearerCredential) and not bearer:
        return MalformedCredential("bearer", "bearer not enabled")
    return credential


def is_browser_navigation(request: AuthRequest) -> bool:
    return (
        request.method in ("GET", "HEAD")
        and "text/html" in (request.header("accept") or "").lower()
        and request.header("x-requested-with") is None
    )


def original_url(request: AuthRequest, app: Application) -> str:
    scheme = (
        request.scheme
        if request.scheme in ("http", "https")
        else ("https" if app.secure else "http")
    )
    query = f"?{request.query}" if request.query else ""
    return f"{scheme}://{request.host}{request.path}{query}"


def decide(facts: Facts) -> Allow | Deny | StartLogin | Refused:
    request, app = facts.request, facts.app
    if facts.session is not None:
        refused = _refused(facts, facts.session, "session")
        if refused is not None:
            return refused if not _is_skip_path(request, app) else _skip(facts)
        return _allow(facts, facts.session, "session", consumed=False, create_session=False)

    verdict = facts.verdict
    method = _method(facts.credential)
    if isinstance(verdict, Verified):
        # Judged before any session is offered: a refused header gets none (SPEC §12).
        refused = _refused(facts, verdict.identity, method)
        if refused is not None:
            return refused if not _is_skip_path(request, app) else _skip(facts)
        # A session per verification, not per request: a client that never sends the
        # cookie back (curl, scripts) is answered from the credential cache and gets
        # no new session each time, which would otherwise fill the store.
        create = app.receive.create_session and not facts.store_down and not verdict.cached
        return _allow(facts, verdict.identity, method, consumed=True, create_session=create)

    invalid = isinstance(facts.credential, MalformedCredential) or isinstance(verdict, Rejected)
    if _is_skip_path(request, app):
        return _skip(facts)

    if isinstance(verdict, Unavailable):
        return _expiring(
            facts,
            unavailable(request, detail="identity provider unavailable", reason="idp_unavailable"),
        )
    if isinstance(verdict, Throttled):
        # Never verified, so neither valid nor invalid: like an unavailable IdP, the
        # answer does not depend on the intercept switch.
        return _expiring(
            facts,
            too_many_requests(request, retry_after=verdict.retry_after, reason="throttled"),
        )
    if invalid and app.intercept_header_auth:
        rejected_token = method == "bearer"
        return _challenge(
            facts,
            invalid_token=rejected_token,
            detail="invalid credentials",
            reason="invalid_credential",
        )
    if facts.store_down:
        return unavailable(request, detail="session store unavailable", reason="store_unavailable")
    if (
        app.oidc is None
        or app.unauthenticated == "deny"
        or (app.unauthenticated == "auto" and not is_browser_navigation(request))
    ):
        return _challenge(
            facts, invalid_token=False, detail="authentication required", reason="unauthenticated"
        )
    return StartLogin(return_to=original_url(request, app), expire_session=facts.stale_cookie)


def _skip(facts: Facts) -> Allow:
    """Step 6's answer. Also for an identity the access rules refuse on a skip path:
    skip paths stay open to everyone (SPEC §12), so the refused identity passes as an
    anonymous request would, without its headers."""
    return _allow(facts, None, "skip", consumed=False, create_session=False)


def _refused(facts: Facts, identity: Identity, method: str) -> Refused | None:
    """The access rules' verdict on an authenticated request (SPEC §12), judged on
    every request (paths and methods vary, so no cached allow can stand for it), in
    the normalised path skip paths see."""
    policy = facts.app.access_policy
    if not policy:
        return None
    request = facts.request
    method_name = request.method
    if not method_name.isupper():
        # Judged as the upper-case method, so `post` cannot slip past a POST rule.
        method_name = method_name.upper()
    rule = policy.evaluate(identity, normalize_path(request.path), method_name)
    if rule is ADMIT:
        return None
    deny = replace(forbidden(request, app_name=facts.app.name), method=method)
    return Refused(deny=_expiring(facts, deny), identity=identity, rule=rule)


def _is_skip_path(request: AuthRequest, app: Application) -> bool:
    """Step 6: a skip regex is searched in the normalised path; a path with no safe
    normal form (`normalize_path` returns None) never matches. In `forward_domain` mode
    the regexes see the whole URL (scheme://host/normalised-path?query), as authentik's
    outpost matches them in that mode (one provider serves many hosts)."""
    if not app.skip_paths:
        return False
    normal = normalize_path(request.path)
    if normal is None:
        return False
    if app.mode == "forward_domain":
        scheme = request.scheme if request.scheme in ("http", "https") else "https"
        query = f"?{request.query}" if request.query else ""
        normal = f"{scheme}://{request.host.lower()}{normal}{query}"
    return any(p.search(normal) for p in app.skip_paths)


def _method(credential: Credential | None) -> str:
    if isinstance(credential, BasicCredential):
        return "basic"
    if isinstance(credential, BearerCredential):
        return "bearer"
    if isinstance(credential, MalformedCredential):
        return credential.scheme if credential.scheme in ("basic", "bearer") else "other"
    return "none"


def challenge(
    request: AuthRequest,
    app: Application,
    *,
    invalid_token: bool = False,
    detail: str = "authentication required",
    reason: str = "unauthenticated",
) -> Deny:
    """The application's 401: WWW-Authenticate for each scheme it receives."""
    return unauthorized(
        request,
        realm=app.name,
        basic=app.receive.basic.enabled,
        bearer=app.receive.bearer.enabled,
        invalid_token=invalid_token,
        detail=detail,
        reason=reason,
    )


def _challenge(facts: Facts, *, invalid_token: bool, detail: str, reason: str) -> Deny:
    deny = challenge(
        facts.request, facts.app, invalid_token=invalid_token, detail=detail, reason=reason
    )
    return _expiring(facts, deny)


def _expiring(facts: Facts, deny: Deny) -> Deny:
    """A cookie that did not resolve is expired in whatever answer the request gets."""
    if facts.stale_cookie:
        return deny.with_headers(("set-cookie", expire_session_cookie(facts.app)))
    return deny


def session_expiry(
    app: Application, identity: Identity, now: float, *, from_header: bool = False
) -> float:
    """min(session_lifetime, the token's exp) from now (SPEC §6); a session made from
    header auth also at most `receive.header_session_lifetime` (SPEC §5)."""
    lifetime = app.session_lifetime
    if from_header:
        lifetime = min(lifetime, app.receive.header_session_lifetime)
    expires = now + lifetime
    if identity.expires_at is not None:
        expires = min(expires, identity.expires_at)
    return expires


def session_set_cookie(app: Application, value: str, expires_at: float, now: float) -> str:
    """The Set-Cookie value of a new session (SPEC §6's attributes)."""
    return session_cookie(
        app.cookie_name,
        value,
        max_age=int(expires_at - now),
        secure=app.secure,
        domain=app.cookie_domain,
    )


def expire_session_cookie(app: Application) -> str:
    """A Set-Cookie value that ends the application's session cookie in the browser."""
    return expire_cookie(app.cookie_name, secure=app.secure, domain=app.cookie_domain)


def _allow(
    facts: Facts,
    identity: Identity | None,
    method: str,
    *,
    consumed: bool,
    create_session: bool,
) -> Allow:
    """The OK mutations of SPEC §4 "Allowed requests" and §7.

    `set_headers` begins with the identity part's headers (a transport adapter may
    render that prefix once per part), then the rewritten cookie."""
    request, app = facts.request, facts.app
    part = NO_IDENTITY if identity is None else facts.part or identity_part(identity, app)
    headers = request.headers
    set_headers = list(part.headers)
    # Headers we overwrite need no removal (Envoy overwrites them with append=false);
    # removing them as well could drop our own value.
    remove = list(part.removals)
    remove += [n for n in client_authentik_headers(headers) if n.lower() not in part.names]
    declared = app.send.declared_headers
    if declared:
        remove += [
            n for n in client_declared_headers(headers, declared) if n.lower() not in part.names
        ]
    if (
        "authorization" in headers
        and "authorization" not in part.names
        and (consumed or app.intercept_header_auth)
    ):
        remove.append("authorization")
    if app.send.strip_session_cookie and "cookie" in headers:
        cookies = facts.cookies or CookieHeader.parse(headers["cookie"])
        stripped = cookies.without(facts.cookie_names or cookie_names((app,)))
        if stripped is None:
            remove.append("cookie")
        elif stripped is not cookies.text:
            set_headers.append(("cookie", stripped))

    response: tuple[tuple[str, str], ...] = ()
    if facts.stale_cookie and not create_session:
        response = (("set-cookie", expire_session_cookie(app)),)
    return Allow(
        method=method,
        identity=identity,
        set_headers=tuple(set_headers),
        remove_headers=tuple(dict.fromkeys(remove)) if len(remove) > 1 else tuple(remove),
        response_headers=response,
        create_session=create_session,
        identity_part=part if identity is not None else None,
    )
