"""The one place that orders I/O for a Check (STYLE.md: service).

(The browser sign-in's own I/O, start/callback/sign-out, is `ext_authz.signin`; the
single flight and cross-replica claim of a new credential's verification is
`ext_authz.verification`.)

`CheckService.check(request)` resolves the application, asks the store and the
verifiers, lets `core` decide, applies the effects (create/delete sessions, cache
credentials, store login states) and maps faults to the documented answers:
store or IdP down is a 503 with Retry-After, never an allow. It never raises: any
unexpected fault becomes a deliberate denial and a log line with the request id.

`CheckService.check_now(request)` is the same decision when everything it needs is
already in this process's memory, answered without awaiting anything (issue 13): a
session or a verified credential held in the in-process cache, or a request with
neither a session cookie nor credentials (a skip path, a 401). It returns None where
the answer needs the store, a verifier or randomness; the caller then awaits `check`.
Both record the same metrics, so a transport calls `check_now` first and `check`
only when it returns None.

Per-identity work is done once: the upstream headers of an identity for an
application (`core.upstream.identity_part`) are kept in the `memo` of the cached
session or credential they came from, so they live exactly as long as that entry.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ext_authz.core import routing, steps
from ext_authz.core.cookies import CookieHeader
from ext_authz.core.credentials import (
    BasicCredential,
    BearerCredential,
    MalformedCredential,
    first_value,
)
from ext_authz.core.decision import (
    Allow,
    Deny,
    deny_no_http,
    not_found_app,
    throttled_page,
    unavailable,
)
from ext_authz.core.login import safe_return_url, start_return_url
from ext_authz.core.model import (
    AuthRequest,
    Identity,
    Rejected,
    Throttled,
    Unavailable,
    Verified,
)
from ext_authz.core.upstream import IdentityPart, identity_part
from ext_authz.errors import StoreUnavailable
from ext_authz.logs import event
from ext_authz.signin import BrowserSignIn
from ext_authz.table import AppTable, TableHolder
from ext_authz.verification import (
    DIRECTORY_BUDGET,
    AppRuntime,
    BasicVerifier,
    BearerVerifier,
    SharedVerification,
)

if TYPE_CHECKING:
    from ext_authz.config import Application
    from ext_authz.core.model import VerifyOutcome
    from ext_authz.metrics import Metrics
    from ext_authz.sessions import CredentialCache, LoginStateRepository, SessionRepository
    from ext_authz.throttle import Throttle

__all__ = [
    "DIRECTORY_BUDGET",
    "AppRuntime",
    "BasicVerifier",
    "BearerVerifier",
    "CheckService",
]

Memo = dict[str, Any]
# Memo key of how a cached credential authenticates ("basic", "bearer"); the other keys
# are application names, which never hold a space.
_SCHEME = " scheme"
# What the decision needs of a cached credential it will not verify again: its kind
# (for the metrics label). No secret of the credential is kept anywhere.
_KINDS: dict[str, BasicCredential | BearerCredential] = {
    "basic": BasicCredential("", ""),
    "bearer": BearerCredential(""),
}


class CheckService:
    def __init__(
        self,
        tables: TableHolder | Sequence[AppRuntime],
        *,
        sessions: SessionRepository,
        credentials: CredentialCache,
        logins: LoginStateRepository,
        metrics: Metrics,
        throttle: Throttle,
        clock: Callable[[], float] = time.time,
        credential_current: Callable[[Identity], bool] | None = None,
    ) -> None:
        if not isinstance(tables, TableHolder):
            # A fixed list of applications (tests, tools): a table that never changes.
            tables = TableHolder(AppTable.of(tables, current=credential_current))
        # The application table (SPEC §11): read once per Check, replaced as a whole.
        self.tables = tables
        self._sessions = sessions
        self._credentials = credentials
        self._logins = logins
        self._metrics = metrics
        self._throttle = throttle
        self._clock = clock
        self._signin = BrowserSignIn(sessions=sessions, logins=logins, metrics=metrics, clock=clock)
        self._verification = SharedVerification(
            credentials, metrics, current=self._current, wall=clock
        )

    def _current(self, identity: Identity) -> bool:
        """Whether the directory still holds the credential an identity was made from
        (SPEC §5 "Sessions from header auth"); checked on every session and cache hit."""
        return self.tables.current.current(identity)

    # --- the entry points ------------------------------------------------------------

    def check_now(self, request: AuthRequest, transport: str = "grpc") -> Allow | Deny | None:
        """The answer from this process's memory alone, or None (then await `check`).

        Never awaits, never raises (a fault here leaves the request to `check`)."""
        started = time.perf_counter()
        try:
            decision = self._decide_now(request)
        except Exception:
            return None
        if decision is not None:
            app = decision[0].name if decision[0] is not None else "-"
            self._record(request, app, decision[1], time.perf_counter() - started, transport)
            return decision[1]
        return None

    async def check(
        self, request: AuthRequest, transport: str = "grpc", *, can_redirect: bool = True
    ) -> Allow | Deny:
        """The answer to one request, from any transport (`transport` labels metrics).

        `can_redirect=False`: the asking proxy cannot relay a redirect to the IdP
        (nginx's auth_request; its error_page sends browsers to /start), so where the
        decision is "sign in" the answer is the 401 challenge, and no login state is
        stored for a redirect nobody will follow."""
        started = time.perf_counter()
        app_name = "-"
        try:
            if not request.has_http:
                decision: Allow | Deny = deny_no_http()
            else:
                table = self.tables.current
                runtime = table.select(request)
                if runtime is None:
                    decision = not_found_app(request)
                else:
                    app_name = runtime.app.name
                    decision = await self._decide(request, runtime, can_redirect, table)
        except Exception:  # Check never raises: fail closed, with a trace for operators.
            self._metrics.internal_errors.inc()
            event(
                logging.ERROR,
                "internal error",
                request_id=request.request_id,
                app=app_name,
                exc_info=True,
            )
            decision = unavailable(request, detail="internal error", reason="internal_error")
        self._record(request, app_name, decision, time.perf_counter() - started, transport)
        return decision

    def _record(
        self, request: AuthRequest, app: str, decision: Allow | Deny, spent: float, transport: str
    ) -> None:
        if isinstance(decision, Allow):
            result, method = "allow", decision.method
        else:
            result, method = decision.reason, decision.method or "-"
        self._metrics.count_check(app, result, method, transport)
        self._metrics.check_latency.observe(spent)

    def _log_part(
        self, request: AuthRequest, app: str, dropped: Sequence[str], undeclared: Sequence[str]
    ) -> None:
        """The names an identity's upstream headers left out: once per identity."""
        if dropped:
            event(
                logging.WARNING,
                "identity header dropped: unsafe value",
                app=app,
                request_id=request.request_id,
                headers=list(dropped),
            )
        if undeclared:
            # Names only: the values may be anything the IdP's attributes hold.
            event(
                logging.WARNING,
                "additional header dropped: not declared",
                app=app,
                request_id=request.request_id,
                headers=list(undeclared),
                hint="declare names in send.additional_headers",
            )

    def _part(
        self, request: AuthRequest, app: Application, identity: Identity, memo: Memo | None
    ) -> IdentityPart:
        """The identity's upstream headers for `app`, kept in the memo of the cached
        entry it came from; computed (and its left-out names logged) once per entry.

        The memo holds the very `Application` object the part was computed for: after a
        table swap the application's settings are a new object, so a part made from the
        old ones is never served (SPEC §11 "Swap")."""
        kept: tuple[Application, IdentityPart] | None = (
            memo.get(app.name) if memo is not None else None
        )
        if kept is not None and kept[0] is app:
            return kept[1]
        part = identity_part(identity, app)
        if memo is not None:
            memo[app.name] = (app, part)
        if part.dropped or part.undeclared:
            self._log_part(request, app.name, part.dropped, part.undeclared)
        return part

    # --- from memory alone -------------------------------------------------------------

    def _decide_now(self, request: AuthRequest) -> tuple[Application | None, Allow | Deny] | None:
        if not request.has_http:
            return None, deny_no_http()
        table = self.tables.current
        app = table.index.select(request)
        if app is None:
            return None, not_found_app(request)
        if routing.outpost_route(request) is not None:
            return None
        headers = request.headers
        cookie_header = headers.get("cookie")
        cookies = CookieHeader.parse(cookie_header) if cookie_header else None
        value = cookies.get(app.cookie_name) if cookies is not None else None
        session = part = credential = verdict = None
        if value:
            record = self._sessions.peek(app.name, value)
            if record is None or not self._current(record.identity):
                return None  # the store knows more, or the session must be ended
            session = record.identity
            part = self._part(request, app, session, record.memo)
        elif "authorization" in headers and (
            app.receive.basic.enabled or app.receive.bearer.enabled
        ):
            # Looked up on the raw value, before any Basic or Bearer parsing.
            cached = self._credentials.peek(app.name, first_value(headers["authorization"]))
            if cached is None:
                return None
            outcome = self._verification.cached_outcome(cached)
            if not isinstance(outcome, Verified):
                return None  # a rejection counts against the client's guessing limit
            credential = self._cached_method(request, app, cached.memo)
            if credential is None:
                return None
            verdict = outcome
            part = self._part(request, app, outcome.identity, cached.memo)
        outcome_now = steps.decide(
            self._facts(
                request,
                table,
                app,
                cookies,
                part,
                session=session,
                credential=credential,
                verdict=verdict,
            )
        )
        if isinstance(outcome_now, steps.Refused):
            return app, self._refused(request, app, outcome_now)
        if isinstance(outcome_now, steps.StartLogin):
            return None  # a login state to store
        if isinstance(outcome_now, Allow) and outcome_now.create_session:
            return None  # a session to store
        return app, outcome_now

    def _facts(
        self,
        request: AuthRequest,
        table: AppTable,
        app: Application,
        cookies: CookieHeader | None,
        part: IdentityPart | None,
        **found: Any,
    ) -> steps.Facts:
        """The facts of one request, with what this service computed once."""
        return steps.Facts(
            request=request,
            app=app,
            cookie_names=table.cookie_names,
            cookies=cookies,
            part=part,
            **found,
        )

    def _cached_method(
        self, request: AuthRequest, app: Application, memo: Memo
    ) -> BasicCredential | BearerCredential | None:
        """The kind of a cached credential, parsed once per cache entry."""
        scheme: str | None = memo.get(_SCHEME)
        if scheme is None:
            parsed = steps.credential_for(request, app)
            if not isinstance(parsed, BasicCredential | BearerCredential):
                return None
            scheme = memo[_SCHEME] = "basic" if isinstance(parsed, BasicCredential) else "bearer"
        return _KINDS[scheme]

    # --- steps 3-7 -------------------------------------------------------------------

    async def _decide(
        self, request: AuthRequest, rt: AppRuntime, can_redirect: bool, table: AppTable
    ) -> Allow | Deny:
        app = rt.app
        route = routing.outpost_route(request)
        if route is routing.OutpostRoute.PING:
            return Deny(status=204, reason="ping")
        if route is routing.OutpostRoute.START:
            rd = start_return_url(request.query)
            return await self._start_login(request, rt, safe_return_url(rd, app))
        if route is routing.OutpostRoute.CALLBACK:
            return await self._signin.callback(request, app, rt.oidc)
        if route is routing.OutpostRoute.SIGN_OUT:
            return await self._signin.sign_out(request, app, rt.oidc)

        cookie_header = request.header("cookie")
        cookies = CookieHeader.parse(cookie_header) if cookie_header else None
        session, memo, stale, store_down = await self._load_session(request, app, cookies)
        credential = verdict = None
        part = self._part(request, app, session, memo) if session is not None else None
        if session is None:
            credential = steps.credential_for(request, app)
            if isinstance(credential, BasicCredential | BearerCredential):
                verdict, memo = await self._verify(request, rt, credential)
                if isinstance(verdict, Verified):
                    part = self._part(request, app, verdict.identity, memo)
            elif isinstance(credential, MalformedCredential):
                self._log_rejected(request, app.name, credential.scheme, credential.reason)
        outcome = steps.decide(
            self._facts(
                request,
                table,
                app,
                cookies,
                part,
                session=session,
                stale_cookie=stale,
                store_down=store_down,
                credential=credential,
                verdict=verdict,
            )
        )
        if isinstance(outcome, steps.Refused):
            return self._refused(request, app, outcome)
        if isinstance(outcome, steps.StartLogin):
            if can_redirect:
                answer = await self._start_login(request, rt, outcome.return_to)
            else:
                answer = steps.challenge(request, app)
            if outcome.expire_session:
                answer = answer.with_headers(("set-cookie", steps.expire_session_cookie(app)))
            return answer
        if isinstance(outcome, Allow) and outcome.create_session and outcome.identity:
            allowed = await self._with_new_session(request, app, outcome, outcome.identity)
            if stale and not allowed.response_headers:
                # No new session replaced the stale cookie (store down): expire it.
                allowed = allowed.with_response_headers(
                    ("set-cookie", steps.expire_session_cookie(app))
                )
            return allowed
        return outcome

    async def _start_login(self, request: AuthRequest, rt: AppRuntime, return_to: str) -> Deny:
        """The sign-in redirect, unless the client started too many (SPEC §6)."""
        if rt.oidc is not None:
            retry_after = await self._throttle.login_started(rt.app, request.client)
            if retry_after is not None:
                return throttled_page(retry_after=retry_after)
        return await self._signin.start(request, rt.app, rt.oidc, return_to)

    async def _load_session(
        self, request: AuthRequest, app: Application, cookies: CookieHeader | None
    ) -> tuple[Identity | None, Memo | None, bool, bool]:
        """(identity, its entry's memo, stale cookie, store down) for the request's
        session cookie."""
        value = cookies.get(app.cookie_name) if cookies is not None else None
        if not value:
            return None, None, False, False
        try:
            record = await self._sessions.get(app.name, value)
        except StoreUnavailable:
            self._metrics.store_errors.labels("session_get").inc()
            event(
                logging.WARNING,
                "store unavailable",
                operation="session_get",
                app=app.name,
                request_id=request.request_id,
            )
            return None, None, False, True
        if record is None:
            return None, None, True, False
        if not self._current(record.identity):
            # Its directory credential is gone (a restart with a changed config): the
            # session ends here, on every replica, and its cookie is expired.
            with contextlib.suppress(StoreUnavailable):
                await self._sessions.end(value)
            event(
                logging.INFO,
                "session ended: credential no longer in the directory",
                app=app.name,
                user=record.identity.preferred_username,
                request_id=request.request_id,
            )
            return None, None, True, False
        return record.identity, record.memo, False, False

    # --- step 5: verifying a credential, through the shared cache ----------------------

    async def _verify(
        self, request: AuthRequest, rt: AppRuntime, credential: BasicCredential | BearerCredential
    ) -> tuple[VerifyOutcome, Memo | None]:
        """The outcome for the request's credential, and the memo of the cache entry it
        came from (None when it was verified just now)."""
        app = rt.app
        header_value = first_value(request.header("authorization") or "")
        method = "basic" if isinstance(credential, BasicCredential) else "bearer"
        username = credential.username if isinstance(credential, BasicCredential) else None
        try:
            cached = await self._credentials.get(app.name, header_value)
        except StoreUnavailable:
            self._metrics.store_errors.labels("credential_get").inc()
            cached = None
        if cached is not None and isinstance(cached.outcome, Verified):
            # Verified already: passes whatever the client's guessing count (SPEC §5).
            self._metrics.count_cache("credential", "hit")
            return self._verification.cached_outcome(cached), cached.memo
        retry_after = await self._throttle.blocked(app, request.client, username)
        if retry_after is not None:
            return Throttled(retry_after), None
        if cached is not None:
            self._metrics.count_cache("credential", "hit")
            await self._throttle.rejected(app, request.client, username)
            return self._verification.cached_outcome(cached), None
        self._metrics.count_cache("credential", "miss")

        outcome, first = await self._verification.run(rt, credential, header_value, request.client)
        if isinstance(outcome, Rejected):
            await self._throttle.rejected(app, request.client, username)
        if not first:
            return outcome, None
        if isinstance(outcome, Rejected):
            self._log_rejected(request, app.name, method, outcome.reason)
        elif isinstance(outcome, Unavailable):
            event(
                logging.WARNING,
                "identity provider unavailable",
                app=app.name,
                method=method,
                reason=outcome.reason,
                request_id=request.request_id,
            )
        return outcome, None

    def _refused(self, request: AuthRequest, app: Application, refused: steps.Refused) -> Deny:
        """SPEC §12's one log line for a refusal: who and which rule, never the claim
        values the rule looked at. The session stays as it is."""
        event(
            logging.INFO,
            "access refused",
            app=app.name,
            sub=refused.identity.sub,
            rule=refused.rule if refused.rule >= 0 else "none",
            method=refused.deny.method,
            request_id=request.request_id,
        )
        return refused.deny

    def _log_rejected(self, request: AuthRequest, app: str, method: str, reason: str) -> None:
        event(
            logging.INFO,
            "credential rejected",
            app=app,
            method=method,
            reason=reason,
            request_id=request.request_id,
        )

    # --- sessions --------------------------------------------------------------------

    async def _with_new_session(
        self, request: AuthRequest, app: Application, allow: Allow, identity: Identity
    ) -> Allow:
        expires_at = steps.session_expiry(app, identity, self._clock(), from_header=True)
        if expires_at - self._clock() < 1:
            return allow
        try:
            value = await self._sessions.create(app.name, identity, expires_at)
        except StoreUnavailable:
            self._metrics.store_errors.labels("session_create").inc()
            event(
                logging.WARNING,
                "store unavailable: no session created",
                app=app.name,
                request_id=request.request_id,
            )
            return allow
        self._metrics.sessions_created.labels(app.name, allow.method).inc()
        return allow.with_response_headers(
            ("set-cookie", steps.session_set_cookie(app, value, expires_at, self._clock()))
        )
