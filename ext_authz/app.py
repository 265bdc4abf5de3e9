"""The composition root: builds every adapter from the settings and wires them.

Nothing else constructs concrete adapters (STYLE.md). `build()` does no network
I/O: a service whose store or IdP is down still starts, and `readiness()` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from ext_authz.adapters.directory import DirectoryVerifier
from ext_authz.adapters.oidc import OIDCClient
from ext_authz.adapters.store_factory import open_store
from ext_authz.config import Directory
from ext_authz.errors import IdPUnavailable, StoreUnavailable
from ext_authz.hash_pool import HashPool
from ext_authz.metrics import Metrics
from ext_authz.service import AppRuntime, BasicVerifier, BearerVerifier, CheckService
from ext_authz.sessions import CredentialCache, LoginStateRepository, SessionRepository
from ext_authz.throttle import Throttle

if TYPE_CHECKING:
    from ext_authz.config import Application, Settings
    from ext_authz.ports import ByteStore

__all__ = ["Components", "build"]


@dataclass
class Components:
    service: CheckService
    store: ByteStore
    http: httpx.AsyncClient
    oidc_clients: dict[str, OIDCClient] = field(default_factory=dict)
    sessions: SessionRepository | None = None
    hash_pool: HashPool | None = None

    async def start(self) -> None:
        """Background work that needs a running loop (invalidation listener)."""
        if self.sessions is not None:
            # The store adapter re-subscribes by itself once the store is back.
            with contextlib.suppress(StoreUnavailable):
                await self.sessions.start_invalidation_listener()

    async def readiness(self) -> dict[str, str]:
        """Problems by component; empty when ready (store reachable, discovery loaded)."""
        problems: dict[str, str] = {}
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            problems["store"] = str(exc) or "unavailable"
        for name, client in self.oidc_clients.items():
            try:
                await asyncio.wait_for(client.discovery(), timeout=5)
            except (IdPUnavailable, TimeoutError) as exc:
                problems[f"idp:{name}"] = str(exc) or "unavailable"
        return problems

    def begin_drain(self, grace: float) -> None:
        """The process stops in `grace` seconds: queued hashing that could not finish by
        then is answered 503 now rather than cut off."""
        if self.hash_pool is not None:
            self.hash_pool.drain(asyncio.get_running_loop().time() + grace)

    async def close(self) -> None:
        await self.store.close()
        await self.http.aclose()
        if self.hash_pool is not None:
            self.hash_pool.close()


def build(settings: Settings, metrics: Metrics) -> Components:
    store = open_store(
        settings.store.url, key_prefix=settings.store.key_prefix, timeout=settings.store.timeout
    )
    secret = settings.secret.get_secret_value().encode()
    local_ttl = settings.store.local_cache_ttl
    sessions = SessionRepository(store, secret=secret, local_ttl=local_ttl)
    credentials = CredentialCache(store, secret=secret, local_ttl=local_ttl)
    logins = LoginStateRepository(store, secret=secret)
    http = httpx.AsyncClient(
        follow_redirects=False,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        headers={"user-agent": "ext-authz"},
    )
    # Password hashing gets its own bounded, fair pool (SPEC §5 "Cost and abuse").
    hash_pool = HashPool()
    directory = (
        DirectoryVerifier(settings.directory, secret=secret, pool=hash_pool)
        if settings.directory is not None
        else None
    )
    # Sessions and cached credentials made from the directory end with their credential;
    # without a directory, none of them is current any more.
    known = directory or DirectoryVerifier(Directory(), secret=secret, pool=hash_pool)
    oidc_clients: dict[str, OIDCClient] = {}
    runtimes = []
    for app in settings.applications:
        oidc = None
        if app.oidc is not None:
            oidc = OIDCClient(app.oidc, http, observe=metrics.observe_idp)
            oidc_clients[app.name] = oidc
        runtimes.append(
            AppRuntime(
                app=app,
                verify_basic=_basic_verifier(app, oidc, directory),
                verify_bearer=_bearer_verifier(app, oidc, directory),
                oidc=oidc,
            )
        )
    service = CheckService(
        runtimes,
        sessions=sessions,
        credentials=credentials,
        logins=logins,
        metrics=metrics,
        throttle=Throttle(store, secret=secret, metrics=metrics),
        credential_current=known.is_current,
    )
    return Components(
        service=service,
        store=store,
        http=http,
        oidc_clients=oidc_clients,
        sessions=sessions,
        hash_pool=hash_pool,
    )


def _basic_verifier(
    app: Application, oidc: OIDCClient | None, directory: DirectoryVerifier | None
) -> BasicVerifier | None:
    receive = app.receive.basic
    if not receive.enabled:
        return None
    if receive.verify == "directory":
        return directory.verify_password if directory is not None else None
    if oidc is None:
        return None
    if receive.verify == "password":
        return oidc.verify_password_grant
    return oidc.verify_app_password


def _bearer_verifier(
    app: Application, oidc: OIDCClient | None, directory: DirectoryVerifier | None
) -> BearerVerifier | None:
    receive = app.receive.bearer
    if not receive.enabled:
        return None
    if receive.verify == "directory":
        return directory.verify_token if directory is not None else None
    if oidc is None:
        return None
    mode, audiences, client = receive.verify, app.receive.audiences, oidc

    async def verify(token: str) -> object:
        return await client.verify_bearer(token, mode, audiences)

    return verify  # type: ignore[return-value]
