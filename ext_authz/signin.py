"""The browser sign-in's I/O (SPEC §6): start, callback and sign-out.

The pure parts (return URLs, PKCE, the authorize and end-session URLs, cookie
values) live in `ext_authz.core`; this module orders the store and IdP calls around
them. Every fault is an answer: a 400/403 page with a link that starts over (never a
redirect loop), or a 503 page with Retry-After when the store or the IdP is down.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from ext_authz.core import routing, steps
from ext_authz.core.claims import attributes_at, identity_from_claims
from ext_authz.core.cookies import expire_cookie, get_cookie, session_cookie
from ext_authz.core.decision import (
    Deny,
    error_page,
    redirect,
    unavailable,
    unavailable_page,
)
from ext_authz.core.login import authorize_url, end_session_url, safe_return_url
from ext_authz.core.model import AuthRequest
from ext_authz.errors import IdPUnavailable, StoreUnavailable, TokenError
from ext_authz.logs import event

if TYPE_CHECKING:
    from ext_authz.adapters.oidc import OIDCClient
    from ext_authz.config import Application
    from ext_authz.metrics import Metrics
    from ext_authz.sessions import LoginStateRepository, SessionRepository

__all__ = ["LOGIN_TTL", "BrowserSignIn"]

LOGIN_TTL = 600.0  # a login state lives 10 minutes (SPEC §6)
START_PATH = routing.OUTPOST_PREFIX + "start"


class BrowserSignIn:
    def __init__(
        self,
        *,
        sessions: SessionRepository,
        logins: LoginStateRepository,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._logins = logins
        self._metrics = metrics
        self._clock = clock

    def _store_down_page(self, operation: str) -> Deny:
        self._metrics.store_errors.labels(operation).inc()
        return unavailable_page(store=True)

    def _login_cookie(self, app: Application, value: str, max_age: int) -> str:
        return session_cookie(
            steps.login_cookie_name(app),
            value,
            max_age=max_age,
            secure=app.secure,
            domain=app.cookie_domain,
        )

    async def start(
        self, request: AuthRequest, app: Application, oidc: OIDCClient | None, return_to: str
    ) -> Deny:
        """302 to the IdP's authorization endpoint, with the login state stored."""
        if oidc is None:
            return steps.challenge(request, app)
        try:
            discovery = await oidc.discovery()
        except IdPUnavailable:
            return unavailable(
                request, detail="identity provider unavailable", reason="idp_unavailable"
            )
        # Several tabs may sign in at once: they share one binding cookie.
        binding = get_cookie(request.header("cookie"), steps.login_cookie_name(app))
        if not binding or len(binding) < 32 or len(binding) > 128:
            binding = secrets.token_urlsafe(32)
        state, nonce, verifier = (
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(64),
        )
        # Small and bounded: a return URL over 2 KiB (or not ours) is external_host.
        record = {
            "verifier": verifier,
            "nonce": nonce,
            "return_to": safe_return_url(return_to, app),
            "created_at": self._clock(),
        }
        try:
            await self._logins.put(app.name, state, binding, record, LOGIN_TTL)
        except StoreUnavailable:
            self._metrics.store_errors.labels("login_put").inc()
            return unavailable(
                request, detail="session store unavailable", reason="store_unavailable"
            )
        assert app.oidc is not None
        location = authorize_url(
            discovery.authorization_endpoint,
            client_id=app.oidc.client_id,
            redirect_uri=app.redirect_uri,
            scopes=app.oidc.scopes,
            state=state,
            nonce=nonce,
            verifier=verifier,
        )
        return redirect(
            location, reason="login", cookies=(self._login_cookie(app, binding, int(LOGIN_TTL)),)
        )

    async def callback(
        self, request: AuthRequest, app: Application, oidc: OIDCClient | None
    ) -> Deny:
        """The IdP sent the browser back: check the state, exchange the code, sign in."""
        start_link = (app.external_host.rstrip("/") + START_PATH, "Sign in again")
        params = dict(parse_qsl(request.query, keep_blank_values=True))
        if oidc is None:
            return error_page(
                404,
                title="Not found",
                detail="this application has no sign-in",
                reason="callback_no_oidc",
            )
        if "error" in params:
            event(
                logging.INFO,
                "sign-in refused by the identity provider",
                app=app.name,
                error=params["error"][:100],
                request_id=request.request_id,
            )
            return error_page(
                403,
                title="Sign-in failed",
                detail=f"The identity provider answered: {params['error'][:100]}",
                reason="callback_idp_error",
                link=start_link,
            )
        state, code = params.get("state", ""), params.get("code", "")
        if not state or not code:
            return error_page(
                400,
                title="Sign-in failed",
                detail="The sign-in link is incomplete.",
                reason="callback_bad_request",
                link=start_link,
            )
        # The state is stored under (app, state, login cookie): a callback without this
        # browser's login cookie finds nothing and uses nothing up (SPEC §6 "Callback"),
        # so whoever sees a victim's callback URL cannot spoil that sign-in.
        binding = get_cookie(request.header("cookie"), steps.login_cookie_name(app)) or ""
        try:
            record = await self._logins.take(app.name, state, binding)
        except StoreUnavailable:
            return self._store_down_page("login_take")
        if record is None or float(record.get("created_at", 0)) + LOGIN_TTL < self._clock():
            event(
                logging.INFO, "sign-in state rejected", app=app.name, request_id=request.request_id
            )
            return error_page(
                400,
                title="Sign-in expired",
                detail="This sign-in link has expired or was already used.",
                reason="callback_bad_state",
                link=start_link,
            )
        assert app.oidc is not None
        try:
            # One deadline for the exchange, the JWKS and userinfo (SPEC §5): past it
            # the browser gets our 503 page, not Envoy's after its own timeout.
            async with asyncio.timeout(app.oidc.timeout):
                tokens = await oidc.exchange_code(code, str(record["verifier"]), app.redirect_uri)
                claims = await oidc.verify_id_token(tokens.id_token, nonce=str(record["nonce"]))
                attributes_claim = app.oidc.attributes_claim
                if not attributes_at(claims, attributes_claim) and tokens.access_token:
                    # The id_token lacks the attributes: userinfo fills what is missing,
                    # provided it speaks of the same subject (OIDC Core §5.3.2).
                    extra = await oidc.userinfo(tokens.access_token)
                    if extra.get("sub") == claims.get("sub"):
                        claims = {**extra, **claims}
        except (IdPUnavailable, TimeoutError):
            return unavailable_page(store=False)
        except TokenError as exc:
            event(
                logging.INFO,
                "sign-in token rejected",
                app=app.name,
                reason=str(exc)[:200],
                request_id=request.request_id,
            )
            return error_page(
                400,
                title="Sign-in failed",
                detail="The sign-in could not be completed.",
                reason="callback_token_error",
                link=start_link,
            )
        try:
            identity = identity_from_claims(
                claims,
                attributes_claim=app.oidc.attributes_claim,
                provider=app.oidc.client_id,
                token=tokens.id_token,
                id_token=tokens.id_token,
            )
        except ValueError:
            return error_page(
                400,
                title="Sign-in failed",
                detail="The identity has no subject.",
                reason="callback_token_error",
                link=start_link,
            )
        expires_at = steps.session_expiry(app, identity, self._clock())
        try:
            value = await self._sessions.create(app.name, identity, expires_at)
        except StoreUnavailable:
            return self._store_down_page("session_create")
        self._metrics.sessions_created.labels(app.name, "sign_in").inc()
        event(
            logging.INFO,
            "signed in",
            app=app.name,
            user=identity.preferred_username,
            request_id=request.request_id,
        )
        return_to = safe_return_url(str(record.get("return_to", "")), app)
        return redirect(
            return_to,
            reason="signed_in",
            cookies=(
                steps.session_set_cookie(app, value, expires_at, self._clock()),
                expire_cookie(
                    steps.login_cookie_name(app), secure=app.secure, domain=app.cookie_domain
                ),
            ),
        )

    async def sign_out(
        self, request: AuthRequest, app: Application, oidc: OIDCClient | None
    ) -> Deny:
        """End every session of this user in this application, then the IdP's."""
        home = app.external_host.rstrip("/") + "/"
        expired = steps.expire_session_cookie(app)
        value = get_cookie(request.header("cookie"), app.cookie_name)
        record = None
        if value:
            try:
                record = await self._sessions.get(app.name, value)
                if record is not None:
                    ended = await self._sessions.end_all_for(app.name, record.identity.sub)
                    self._metrics.sessions_ended.labels(app.name).inc(ended)
            except StoreUnavailable:
                return self._store_down_page("sign_out")
        if record is None:
            return redirect(home, reason="signed_out", cookies=(expired,) if value else ())
        event(
            logging.INFO,
            "signed out",
            app=app.name,
            user=record.identity.preferred_username,
            request_id=request.request_id,
        )
        location = home
        if oidc is not None:
            try:
                discovery = await oidc.discovery()
                location = end_session_url(
                    discovery.end_session_endpoint,
                    id_token=record.identity.id_token,
                    post_logout_redirect_uri=app.external_host,
                    fallback=home,
                )
            except IdPUnavailable:
                location = home
        return redirect(location, reason="signed_out", cookies=(expired,))
