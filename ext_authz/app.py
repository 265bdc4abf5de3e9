"""The composition root: builds every adapter from the settings and wires them.

Nothing else constructs concrete adapters (STYLE.md). `build()` does no network
I/O: a service whose store or IdP is down still starts, and `readiness()` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from ext_authz.adapters.authentik import AuthentikClient, OutpostLink
from ext_authz.adapters.directory import DirectoryVerifier
from ext_authz.adapters.oidc import OIDCClient
from ext_authz.adapters.store_factory import open_store
from ext_authz.config import Directory
from ext_authz.errors import IdPUnavailable, StoreUnavailable
from ext_authz.hash_pool import HashPool
from ext_authz.logs import event
from ext_authz.metrics import Metrics
from ext_authz.outpost import Composer, Outpost
from ext_authz.service import AppRuntime, BasicVerifier, BearerVerifier, CheckService
from ext_authz.sessions import CredentialCache, LoginStateRepository, SessionRepository
from ext_authz.table import AppTable, TableHolder
from ext_authz.throttle import Throttle

if TYPE_CHECKING:
    from ext_authz.config import Application, AuthentikSettings, Settings
    from ext_authz.ports import ByteStore

__all__ = ["Components", "TableBuilder", "build"]


class TableBuilder:
    """Builds application tables (ext_authz.table) from application settings.

    The one place that makes OIDC clients and verifiers for applications. What did not
    change is reused from the previous table: the runtime of the very same `Application`
    object (a source that re-validates only what changed hands those back), the OIDC
    client of equal OIDC settings (its discovery document and JWKS survive a refresh),
    and the directory of equal directory settings. So a refresh that changes one
    provider of a thousand costs about one provider."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        metrics: Metrics,
        *,
        secret: bytes,
        hash_pool: HashPool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._metrics = metrics
        self._secret = secret
        self._pool = hash_pool
        self._clock = clock
        self._generation = 0
        self._runtimes: dict[str, AppRuntime] = {}
        self._directory_settings: Directory | None = None
        self._directory: DirectoryVerifier | None = None
        self._known: DirectoryVerifier | None = None

    def build(
        self,
        applications: Sequence[Application],
        directory_settings: Directory | None,
        *,
        sources: Mapping[str, int] | None = None,
        built_at: float | None = None,
    ) -> AppTable:
        same_directory = self._known is not None and directory_settings == self._directory_settings
        if not same_directory:
            self._directory = (
                DirectoryVerifier(directory_settings, secret=self._secret, pool=self._pool)
                if directory_settings is not None
                else None
            )
            # Sessions and cached credentials made from the directory end with their
            # credential; without a directory, none of them is current any more.
            self._known = self._directory or DirectoryVerifier(
                Directory(), secret=self._secret, pool=self._pool
            )
            self._directory_settings = directory_settings
        directory, known = self._directory, self._known
        assert known is not None
        previous = self._runtimes
        runtimes: dict[str, AppRuntime] = {}
        for app in applications:
            kept = previous.get(app.name)
            if kept is not None and kept.app is app and same_directory:
                runtimes[app.name] = kept
                continue
            oidc = None
            if app.oidc is not None:
                old = kept.oidc if kept is not None else None
                oidc = (
                    old
                    if old is not None and old.settings == app.oidc
                    else OIDCClient(app.oidc, self._http, observe=self._metrics.observe_idp)
                )
            runtimes[app.name] = AppRuntime(
                app=app,
                verify_basic=_basic_verifier(app, oidc, directory),
                verify_bearer=_bearer_verifier(app, oidc, directory),
                oidc=oidc,
            )
        self._runtimes = runtimes
        self._generation += 1
        return AppTable.of(
            runtimes.values(),
            current=known.is_current,
            generation=self._generation,
            sources=sources,
            built_at=self._clock() if built_at is None else built_at,
        )


@dataclass
class Components:
    service: CheckService
    store: ByteStore
    http: httpx.AsyncClient
    tables: TableHolder
    builder: TableBuilder
    settings: Settings
    sessions: SessionRepository | None = None
    hash_pool: HashPool | None = None
    # An authentik outpost (SPEC §11): the refresh orchestration, the API client, the
    # websocket, and the tasks running them once started.
    outpost: Outpost | None = None
    authentik: AuthentikClient | None = None
    link: OutpostLink | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def oidc_clients(self) -> dict[str, OIDCClient]:
        """The OIDC clients of the current table's applications, by application name."""
        return {name: rt.oidc for name, rt in self.tables.current.runtimes.items() if rt.oidc}

    async def start(self) -> None:
        """Background work that needs a running loop (invalidation listener; with
        authentik, the refreshes and the websocket)."""
        if self.sessions is not None:
            # The store adapter re-subscribes by itself once the store is back.
            with contextlib.suppress(StoreUnavailable):
                await self.sessions.start_invalidation_listener()
        if self.outpost is not None:
            self._tasks.append(asyncio.ensure_future(self.outpost.run()))
        if self.link is not None:
            self._tasks.append(asyncio.ensure_future(self.link.run()))

    def _install(
        self, applications: Sequence[Application], sources: Mapping[str, int], fetched_at: float
    ) -> AppTable:
        """The outpost's install step: a table of these applications, swapped in."""
        table = self.builder.build(
            applications, self.settings.directory, sources=sources, built_at=fetched_at
        )
        self.tables.swap(table)
        return table

    def reload(self, settings: Settings) -> AppTable:
        """SIGHUP: a new table from re-read settings, swapped in at once (SPEC §11).

        Only the applications and the directory change in a running process; a change
        elsewhere (server, store, secret) needs a restart, and a log line says which."""
        needs_restart = [
            key
            for key in ("server", "store", "secret")
            if getattr(settings, key) != getattr(self.settings, key)
        ]
        if settings.authentik != self.settings.authentik:
            needs_restart.append("authentik")
        if needs_restart:
            event(logging.WARNING, "reload: restart to apply", keys=needs_restart)
        self.settings = settings
        if self.outpost is not None:
            # The providers last seen, with the new local settings, at once; then a
            # refresh from authentik.
            self.outpost.recompose(Composer(settings.applications, settings.provider_settings))
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to refresh
                task = asyncio.get_running_loop().create_task(self._refresh())
                self._tasks.append(task)
            return self.tables.current
        table = self.builder.build(settings.applications, settings.directory)
        self.tables.swap(table)
        return table

    async def _refresh(self) -> None:
        if self.outpost is not None:
            await self.outpost.refresh()

    async def readiness(self) -> dict[str, str]:
        """Problems by component; empty when ready (store reachable, discovery loaded)."""
        problems: dict[str, str] = {}
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            problems["store"] = str(exc) or "unavailable"
        if self.outpost is not None:
            problem = self.outpost.readiness_problem()
            if problem is not None:
                problems["authentik"] = problem
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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.link is not None:
            await self.link.close()
        if self.authentik is not None:
            await self.authentik.close()
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
    builder = TableBuilder(http, metrics, secret=secret, hash_pool=hash_pool)
    tables = TableHolder(builder.build(settings.applications, settings.directory))
    service = CheckService(
        tables,
        sessions=sessions,
        credentials=credentials,
        logins=logins,
        metrics=metrics,
        throttle=Throttle(store, secret=secret, metrics=metrics),
    )
    components = Components(
        service=service,
        store=store,
        http=http,
        tables=tables,
        builder=builder,
        settings=settings,
        sessions=sessions,
        hash_pool=hash_pool,
    )
    if settings.authentik is not None:
        _outpost(components, settings.authentik, metrics, secret)
    return components


def _outpost(
    components: Components, settings: AuthentikSettings, metrics: Metrics, secret: bytes
) -> None:
    """An authentik outpost (SPEC §11): applications from the outpost's providers."""
    client = AuthentikClient(settings)
    sessions = components.sessions
    outpost = Outpost(
        fetch=client.fetch,
        compose=Composer(components.settings.applications, components.settings.provider_settings),
        install=components._install,
        store=components.store,
        secret=secret,
        host=settings.host,
        metrics=metrics,
        interval=settings.refresh_interval,
    )

    async def outpost_pk() -> str:
        info = client.outpost_info
        return info.pk if info is not None else (await client.outpost()).pk

    async def session_end(sid: str) -> None:
        # Signing out of authentik ends that authentik session's sessions here too, on
        # every replica (the sid is an identifier of a user's session: not logged).
        if sessions is None:
            return
        try:
            ended = await sessions.end_all_for_sid(sid)
        except StoreUnavailable:
            event(logging.WARNING, "store unavailable", operation="session_end_sid")
            return
        event(logging.INFO, "authentik session ended", sessions=ended)

    components.outpost = outpost
    components.authentik = client
    components.link = OutpostLink(
        settings,
        outpost_pk,
        on_update=outpost.refresh,
        on_session_end=session_end,
        instance_uuid=str(uuid.uuid4()),
        on_state=lambda up: metrics.authentik_connected.set(1 if up else 0),
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
