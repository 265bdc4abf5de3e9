"""The one place that orders I/O for a Check (STYLE.md: service).

(The browser sign-in's own I/O, start/callback/sign-out, is `ext_authz.signin`.)

`CheckService.check(request)` resolves the application, asks the store and the
verifiers, lets `core` decide, applies the effects (create/delete sessions, cache
credentials, store login states) and maps faults to the documented answers:
store or IdP down is a 503 with Retry-After, never an allow. It never raises: any
unexpected fault becomes a deliberate denial and a log line with the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ext_authz.core import routing, steps
from ext_authz.core.cookies import get_cookie
from ext_authz.core.credentials import (
    BasicCredential,
    BearerCredential,
    MalformedCredential,
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
from ext_authz.errors import StoreUnavailable
from ext_authz.hash_pool import requester
from ext_authz.logs import event
from ext_authz.signin import BrowserSignIn

if TYPE_CHECKING:
    from ext_authz.adapters.oidc import OIDCClient
    from ext_authz.config import Application
    from ext_authz.core.model import VerifyOutcome
    from ext_authz.metrics import Metrics
    from ext_authz.sessions import (
        CachedCredential,
        CredentialCache,
        LoginStateRepository,
        SessionRepository,
    )
    from ext_authz.throttle import Throttle

__all__ = ["AppRuntime", "CheckService"]

_PEER_POLL = 0.02  # seconds between looks at the cache while another replica verifies
# How long one verification may take, waiting for a peer replica included, on an
# application without oidc (there `oidc.timeout` is the budget): hashing waits in a
# queue, and the answer must be ours before Envoy's ext_authz timeout (SPEC §5).
DIRECTORY_BUDGET = 3.0

BasicVerifier = Callable[[str, str], Awaitable["VerifyOutcome"]]
BearerVerifier = Callable[[str], Awaitable["VerifyOutcome"]]


@dataclass(frozen=True, slots=True)
class AppRuntime:
    """One application with the verifiers the composition root built for it."""

    app: Application
    verify_basic: BasicVerifier | None
    verify_bearer: BearerVerifier | None
    oidc: OIDCClient | None


class CheckService:
    def __init__(
        self,
        runtimes: Sequence[AppRuntime],
        *,
        sessions: SessionRepository,
        credentials: CredentialCache,
        logins: LoginStateRepository,
        metrics: Metrics,
        throttle: Throttle,
        clock: Callable[[], float] = time.time,
        credential_current: Callable[[Identity], bool] | None = None,
    ) -> None:
        self._runtimes = {rt.app.name: rt for rt in runtimes}
        self._apps = routing.ApplicationIndex([rt.app for rt in runtimes])
        # Stripped from every upstream's cookie header (SPEC §7), whichever app it is.
        self._cookie_names = steps.cookie_names(rt.app for rt in runtimes)
        self._sessions = sessions
        self._credentials = credentials
        self._logins = logins
        self._metrics = metrics
        self._throttle = throttle
        self._clock = clock
        self._signin = BrowserSignIn(sessions=sessions, logins=logins, metrics=metrics, clock=clock)
        self._inflight: dict[tuple[str, str], asyncio.Future[VerifyOutcome]] = {}
        self._waiting: dict[asyncio.Future[VerifyOutcome], int] = {}
        # Whether the directory still holds the credential an identity was made from
        # (SPEC §5 "Sessions from header auth"); checked on every session and cache hit.
        self._current = credential_current or (lambda identity: True)

    # --- the entry point -----------------------------------------------------------

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
                app = self._apps.select(request)
                if app is None:
                    decision = not_found_app(request)
                else:
                    app_name = app.name
                    runtime = self._runtimes[app.name]
                    decision = await self._decide(request, runtime, can_redirect)
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
        if isinstance(decision, Allow) and decision.dropped_headers:
            event(
                logging.WARNING,
                "identity header dropped: unsafe value",
                app=app,
                request_id=request.request_id,
                headers=list(decision.dropped_headers),
            )
        if isinstance(decision, Allow) and decision.undeclared_headers:
            # Names only: the values may be anything the IdP's attributes hold.
            event(
                logging.WARNING,
                "additional header dropped: not declared",
                app=app,
                request_id=request.request_id,
                headers=list(decision.undeclared_headers),
                hint="declare names in send.additional_headers",
            )

    # --- steps 3-7 -------------------------------------------------------------------

    async def _decide(
        self, request: AuthRequest, rt: AppRuntime, can_redirect: bool
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

        session, stale, store_down = await self._load_session(request, app)
        credential = verdict = None
        if session is None:
            credential = steps.credential_for(request, app)
            if isinstance(credential, BasicCredential | BearerCredential):
                verdict = await self._verify(request, rt, credential)
            elif isinstance(credential, MalformedCredential):
                self._log_rejected(request, app.name, credential.scheme, credential.reason)
        outcome = steps.decide(
            steps.Facts(
                request=request,
                app=app,
                session=session,
                stale_cookie=stale,
                store_down=store_down,
                credential=credential,
                verdict=verdict,
                cookie_names=self._cookie_names,
            )
        )
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
        self, request: AuthRequest, app: Application
    ) -> tuple[Identity | None, bool, bool]:
        """(identity, stale cookie, store down) for the request's session cookie."""
        value = get_cookie(request.header("cookie"), app.cookie_name)
        if not value:
            return None, False, False
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
            return None, False, True
        if record is None:
            return None, True, False
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
            return None, True, False
        return record.identity, False, False

    # --- step 5: verifying a credential, through the shared cache ----------------------

    async def _verify(
        self, request: AuthRequest, rt: AppRuntime, credential: BasicCredential | BearerCredential
    ) -> VerifyOutcome:
        app = rt.app
        header_value = (request.header("authorization") or "").split(",", 1)[0].strip()
        method = "basic" if isinstance(credential, BasicCredential) else "bearer"
        username = credential.username if isinstance(credential, BasicCredential) else None
        try:
            cached = await self._credentials.get(app.name, header_value)
        except StoreUnavailable:
            self._metrics.store_errors.labels("credential_get").inc()
            cached = None
        if cached is not None and cached.ok:
            # Verified already: passes whatever the client's guessing count (SPEC §5).
            self._metrics.count_cache("credential", "hit")
            return self._cached_outcome(cached)
        retry_after = await self._throttle.blocked(app, request.client, username)
        if retry_after is not None:
            return Throttled(retry_after)
        if cached is not None:
            self._metrics.count_cache("credential", "hit")
            await self._throttle.rejected(app, request.client, username)
            return self._cached_outcome(cached)
        self._metrics.count_cache("credential", "miss")

        # One verification per credential per process at a time, run as a task of its
        # own: a caller whose RPC is cancelled (Envoy's timeout, a client gone) must not
        # cancel it for the others waiting on the same credential. When the last of
        # them has gone, it is cancelled: nobody would read its answer, and a hash
        # still queued in the pool then never starts (SPEC §5).
        key = (app.name, header_value)
        task = self._inflight.get(key)
        first = task is None
        if task is None:
            context = contextvars.copy_context()
            context.run(requester.set, request.client)  # whose turn it is in the hash pool
            task = asyncio.get_running_loop().create_task(
                self._verify_shared(rt, credential, header_value), context=context
            )
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._verification_done(key, done))
        self._waiting[task] = self._waiting.get(task, 0) + 1
        try:
            outcome = await asyncio.shield(task)
        finally:
            self._stop_waiting(key, task)
        if isinstance(outcome, Rejected):
            await self._throttle.rejected(app, request.client, username)
        if not first:
            return outcome
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
        return outcome

    def _stop_waiting(self, key: tuple[str, str], task: asyncio.Future[VerifyOutcome]) -> None:
        left = self._waiting.get(task, 1) - 1
        if left > 0:
            self._waiting[task] = left
            return
        self._waiting.pop(task, None)
        if not task.done():
            task.cancel()
            if self._inflight.get(key) is task:
                del self._inflight[key]  # a caller arriving now starts afresh

    def _verification_done(self, key: tuple[str, str], task: asyncio.Future[VerifyOutcome]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters re-raise it themselves

    async def _verify_shared(
        self, rt: AppRuntime, credential: BasicCredential | BearerCredential, header_value: str
    ) -> VerifyOutcome:
        """Ask the verifier unless another replica is asking about the same credential
        right now: then wait for its answer in the shared cache, and ask ourselves only
        if it leaves none (SPEC §5: N replicas ask the IdP once per credential).

        All of it, the wait for a peer included, shares one deadline (`oidc.timeout`,
        or DIRECTORY_BUDGET): past it the answer is Unavailable, a 503 of ours well
        before Envoy's timeout would answer with its own bare 503."""
        app = rt.app
        window = _claim_window(app)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _budget(app)
        claimed = await self._claim(app.name, header_value, window)
        while not claimed and loop.time() < deadline:
            await asyncio.sleep(_PEER_POLL)
            try:
                cached = await self._credentials.get(app.name, header_value)
            except StoreUnavailable:
                break
            if cached is not None:
                self._metrics.count_cache("credential", "peer")
                return self._cached_outcome(cached)
            # The other replica finished without caching (IdP down, an expiring token):
            # the claim is free again, and this replica asks.
            claimed = await self._claim(app.name, header_value, window)
        if not claimed and loop.time() >= deadline:
            return Unavailable("another replica is verifying it")  # and it has not answered
        try:
            if claimed:
                # A peer may have verified it between our cache miss and our claim.
                try:
                    cached = await self._credentials.get(app.name, header_value)
                except StoreUnavailable:
                    cached = None
                if cached is not None:
                    self._metrics.count_cache("credential", "peer")
                    return self._cached_outcome(cached)
            try:
                async with asyncio.timeout_at(deadline):
                    outcome = await self._call_verifier(rt, credential)
            except TimeoutError:
                outcome = Unavailable("verification timed out")
            await self._cache_outcome(app, header_value, outcome)
        finally:
            if claimed:
                with contextlib.suppress(StoreUnavailable):
                    await self._credentials.release(app.name, header_value)
        return outcome

    def _cached_outcome(self, cached: CachedCredential) -> Verified | Rejected:
        """A cached verdict, unless its directory credential has left the directory
        since (the cache outlives restarts in Redis, and replicas may differ)."""
        if cached.identity is not None and not self._current(cached.identity):
            return Rejected("credential no longer in the directory")
        return cached.outcome()

    async def _claim(self, app: str, header_value: str, window: float) -> bool:
        try:
            return await self._credentials.claim(app, header_value, window)
        except StoreUnavailable:
            self._metrics.store_errors.labels("credential_claim").inc()
            return True  # without the store, every replica verifies for itself

    async def _call_verifier(
        self, rt: AppRuntime, credential: BasicCredential | BearerCredential
    ) -> VerifyOutcome:
        if isinstance(credential, BasicCredential):
            if rt.verify_basic is None:
                return Rejected("basic not enabled")
            return await rt.verify_basic(credential.username, credential.password)
        if rt.verify_bearer is None:
            return Rejected("bearer not enabled")
        return await rt.verify_bearer(credential.token)

    async def _cache_outcome(
        self, app: Application, header_value: str, outcome: VerifyOutcome
    ) -> None:
        try:
            if isinstance(outcome, Verified):
                ttl = app.receive.cache_ttl
                if outcome.ttl is not None:
                    ttl = min(ttl, outcome.ttl)
                if outcome.identity.expires_at is not None:
                    ttl = min(ttl, outcome.identity.expires_at - self._clock())
                if ttl > 0:
                    await self._credentials.put_verified(
                        app.name, header_value, outcome.identity, ttl
                    )
            elif isinstance(outcome, Rejected) and app.receive.negative_cache_ttl > 0:
                await self._credentials.put_rejected(
                    app.name, header_value, outcome.reason, app.receive.negative_cache_ttl
                )
        except StoreUnavailable:
            self._metrics.store_errors.labels("credential_put").inc()

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


def _budget(app: Application) -> float:
    """The deadline of one verification of a credential for `app` (SPEC §5)."""
    return app.oidc.timeout if app.oidc is not None else DIRECTORY_BUDGET


def _claim_window(app: Application) -> float:
    """How long one replica may hold a credential's verification for itself: long
    enough for a verification (discovery, JWKS and token calls, or argon2), short
    enough that the others do not wait long if it dies."""
    if app.oidc is None:
        return 2.0
    return min(10.0, 2 * app.oidc.timeout + 1)
