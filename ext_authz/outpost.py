"""Applications from authentik's API (SPEC §11): refresh, swap, and the last good copy.

    fetch()  ->  Fetched (one application-settings mapping per proxy provider)
       |            |
       |            +--> sealed into the store (Namespace.TABLE): the last good copy
       v
    compose(providers)  ->  validated Applications (+ the YAML's own), problems logged
       v
    install(applications)  ->  a new AppTable, swapped in at once (app.py builds it)

`Outpost` orders these steps and keeps the state SPEC §11 asks for: which source the
current table came from, whether authentik answered the last time, when the table's
applications were fetched. It does no HTTP itself: `fetch` is the authentik adapter's
(adapters/authentik.py), and `install` is the composition root's, so this module knows
neither authentik's wire shapes nor how adapters are built.

Faults: a refresh that fails (authentik unreachable, the token refused) keeps the
current table; one log line per change of state. At start, while authentik cannot be
reached, the last good copy from the store is served at once; without one, the table
holds only the YAML's own applications, `/readyz` says `authentik`, and refreshes are
retried with back-off (1 s doubling, at most the refresh interval) until one succeeds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ext_authz.config import validate_application
from ext_authz.crypto import hmac_hex, open_sealed, seal
from ext_authz.errors import (
    AuthentikRefused,
    AuthentikUnavailable,
    ConfigError,
    StoreUnavailable,
)
from ext_authz.logs import event
from ext_authz.ports import Namespace

if TYPE_CHECKING:
    from ext_authz.config import Application
    from ext_authz.metrics import Metrics
    from ext_authz.ports import ByteStore
    from ext_authz.table import AppTable

__all__ = ["Composer", "Fetched", "Outpost", "merge_local"]

DEFAULT_INTERVAL = 300.0  # authentik's outpost: refresh_interval_s <= 0 means 5 minutes
MIN_INTERVAL = 30.0
RETRY_FIRST = 1.0
SNAPSHOT_TTL = 30 * 86400.0
_SNAPSHOT_CONTEXT = b"ext-authz application table v1"


@dataclass(frozen=True)
class Fetched:
    """One answer of authentik: an application-settings mapping (the config's shape,
    SPEC §3) per proxy provider of the outpost, what the mapping left out, and the
    outpost's own refresh interval (seconds; None or <= 0: the default)."""

    providers: tuple[Mapping[str, Any], ...]
    problems: tuple[str, ...] = ()
    refresh_interval: float | None = None
    fetched_at: float = 0.0


Fetch = Callable[[], Awaitable[Fetched]]
# The providers' mappings merged with the YAML's local settings and validated: the
# applications of the next table (the YAML's own included), and problems to log.
Compose = Callable[[Sequence[Mapping[str, Any]]], tuple[list["Application"], list[str]]]
# Builds a table of these applications and swaps it in: (applications, sources, fetched_at).
Install = Callable[[Sequence["Application"], Mapping[str, int], float], "AppTable"]


def merge_local(
    provider: Mapping[str, Any], local: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """A provider's settings with the YAML's local settings of the same name added
    (SPEC §11 "Local settings"): what authentik has no field for. A key both set is a
    ConfigError naming it (one source of truth); nested sections merge key by key."""
    problems: list[str] = []

    def merge(a: Mapping[str, Any], b: Mapping[str, Any], path: str) -> dict[str, Any]:
        out = dict(a)
        for key, value in b.items():
            loc = f"{path}.{key}"
            if key not in out:
                out[key] = value
            elif isinstance(out[key], Mapping) and isinstance(value, Mapping):
                out[key] = merge(out[key], value, loc)
            elif key != "name":
                problems.append(
                    f"{loc}: set by the authentik provider; remove it from the YAML "
                    "(one source of truth)"
                )
        return out

    merged = merge(provider, local, where)
    if problems:
        raise ConfigError(problems)
    return merged


class Composer:
    """The applications of a table from the providers' settings (SPEC §11): each merged
    with its local YAML settings and validated, beside the YAML's own applications.

    A provider that fails validation, whose local settings clash with it, or whose
    host another application already serves is left out with a problem naming it and
    the field; the others stand. The `Application` of a mapping seen before is reused
    (keyed by its canonical JSON), so an unchanged provider costs a dictionary lookup
    and keeps its place in the table builder's reuse (and the service's memos)."""

    def __init__(
        self, file_apps: Sequence[Application], local: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self._file_apps = tuple(file_apps)
        self._local = {name: dict(values) for name, values in local.items()}
        self._cache: dict[str, Application] = {}

    def __call__(
        self, providers: Sequence[Mapping[str, Any]]
    ) -> tuple[list[Application], list[str]]:
        problems: list[str] = []
        routes: dict[tuple[str, int], str] = {}
        names: set[str] = set()
        for app in self._file_apps:
            names.add(app.name)
            for host in app.all_host_names:
                routes[(host, app.port)] = app.name
        chosen: list[Application] = []
        cache: dict[str, Application] = {}
        for mapping in providers:
            name = str(mapping.get("name", ""))
            where = f"authentik provider {name or '?'}"
            try:
                merged = merge_local(mapping, self._local.get(name, {}), where)
                key = json.dumps(merged, sort_keys=True, separators=(",", ":"), default=str)
                app = self._cache.get(key) or validate_application(merged, where)
            except ConfigError as exc:
                problems.extend(exc.errors)
                continue
            if app.name in names:
                problems.append(f"{where}.name: {app.name!r} is already an application")
                continue
            clash = next(
                (routes[(h, app.port)] for h in app.all_host_names if (h, app.port) in routes),
                None,
            )
            if clash is not None:
                problems.append(
                    f"{where}.external_host: {app.host_name} port {app.port} is already "
                    f"served by {clash}"
                )
                continue
            cache[key] = app
            names.add(app.name)
            for host in app.all_host_names:
                routes[(host, app.port)] = app.name
            chosen.append(app)
        self._cache = cache
        return [*chosen, *self._file_apps], problems


@dataclass
class _State:
    authentik: str = "starting"  # starting | ok | unavailable | refused
    source: str = ""  # "" (no table from authentik yet) | authentik | stored
    last: Fetched | None = None
    interval: float = DEFAULT_INTERVAL
    problems: frozenset[str] = field(default_factory=frozenset)


class Outpost:
    def __init__(
        self,
        *,
        fetch: Fetch,
        compose: Compose,
        install: Install,
        store: ByteStore,
        secret: bytes,
        host: str,
        metrics: Metrics,
        interval: float | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._fetch = fetch
        self._compose = compose
        self._install = install
        self._store = store
        self._secret = secret
        self._key = hmac_hex(secret, "table", host)
        self._metrics = metrics
        self._configured_interval = interval
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._state = _State()
        if interval:
            self._state.interval = max(MIN_INTERVAL, interval)

    # --- what operations see -----------------------------------------------------------

    @property
    def state(self) -> str:
        """Whether authentik answered the last refresh: starting, ok, unavailable, refused."""
        return self._state.authentik

    @property
    def source(self) -> str:
        """Where the providers of the current table came from: authentik, stored, or ""."""
        return self._state.source

    @property
    def interval(self) -> float:
        return self._state.interval

    def readiness_problem(self) -> str | None:
        """None once the table holds authentik's providers (fetched or stored)."""
        if self._state.source:
            return None
        return f"no applications from authentik yet ({self._state.authentik})"

    # --- the steps -----------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch, compose, install and keep a copy; False (the table unchanged) when
        authentik does not answer. One refresh at a time."""
        async with self._lock:
            try:
                fetched = await self._fetch()
            except AuthentikRefused as exc:
                self._failed("refused", str(exc))
                return False
            except AuthentikUnavailable as exc:
                self._failed("unavailable", str(exc))
                return False
            if not fetched.fetched_at:
                fetched = Fetched(
                    fetched.providers, fetched.problems, fetched.refresh_interval, self._clock()
                )
            self._use(fetched, source="authentik")
            self._metrics.table_refreshes.labels("ok").inc()
            self._set_state("ok", "")
        await self._keep(fetched)
        return True

    async def restore(self) -> bool:
        """Install the last good copy from the store; False when there is none."""
        try:
            blob = await self._store.get(Namespace.TABLE, self._key)
        except StoreUnavailable:
            event(logging.WARNING, "authentik: stored applications unreadable", reason="store")
            return False
        fetched = self._unseal(blob) if blob is not None else None
        if fetched is None:
            return False
        async with self._lock:
            if self._state.source == "authentik":
                return True  # a refresh won meanwhile: it is newer
            self._use(fetched, source="stored")
        self._metrics.table_refreshes.labels("stored").inc()
        event(
            logging.WARNING,
            "authentik unreachable: serving the stored applications",
            applications=len(fetched.providers),
            fetched_at=int(fetched.fetched_at),
        )
        return True

    def recompose(self, compose: Compose) -> None:
        """New local settings (SIGHUP): compose the providers last seen with them now;
        the caller refreshes from authentik afterwards."""
        self._compose = compose
        last = self._state.last
        if last is not None:
            self._use(last, source=self._state.source or "stored")

    async def run(self) -> None:
        """Refresh every interval until cancelled; at start, the stored copy while
        authentik cannot be reached, and back-off until a refresh succeeds."""
        delay = RETRY_FIRST
        ok = await self.refresh()
        if not ok:
            await self.restore()
        while True:
            if ok:
                delay = RETRY_FIRST
                await self._sleep(self._state.interval)
            else:
                await self._sleep(delay)
                delay = min(delay * 2, self._state.interval)
            ok = await self.refresh()

    # --- internals -----------------------------------------------------------------------

    def _use(self, fetched: Fetched, *, source: str) -> None:
        applications, problems = self._compose(fetched.providers)
        self._log_problems((*fetched.problems, *problems))
        provider_names = {str(p.get("name", "")) for p in fetched.providers}
        from_providers = sum(1 for app in applications if app.name in provider_names)
        sources = {source: from_providers, "file": len(applications) - from_providers}
        self._install(applications, sources, fetched.fetched_at)
        for name in ("authentik", "stored", "file"):
            self._metrics.applications.labels(name).set(sources.get(name, 0))
        self._metrics.table_built.set(fetched.fetched_at)
        self._state.last = fetched
        self._state.source = source
        if not self._configured_interval:
            given = fetched.refresh_interval or 0
            self._state.interval = max(MIN_INTERVAL, given) if given > 0 else DEFAULT_INTERVAL

    def _log_problems(self, problems: Sequence[str]) -> None:
        """Each problem once while it lasts (not again at every refresh)."""
        now = frozenset(problems)
        for problem in sorted(now - self._state.problems):
            event(logging.WARNING, "authentik: provider setting left out", problem=problem)
        self._state.problems = now

    def _failed(self, state: str, detail: str) -> None:
        self._metrics.table_refreshes.labels(state).inc()
        self._set_state(state, detail)

    def _set_state(self, state: str, detail: str) -> None:
        if state == self._state.authentik:
            return
        previous, self._state.authentik = self._state.authentik, state
        if state == "ok":
            event(logging.INFO, "authentik: applications refreshed", previous=previous)
        else:
            event(
                logging.WARNING,
                f"authentik {state}: keeping the current applications",
                previous=previous,
                detail=detail,
                table=self._state.source or "none",
            )

    async def _keep(self, fetched: Fetched) -> None:
        payload = json.dumps(
            {
                "providers": [dict(p) for p in fetched.providers],
                "problems": list(fetched.problems),
                "refresh_interval": fetched.refresh_interval,
                "fetched_at": fetched.fetched_at,
            },
            separators=(",", ":"),
        ).encode()
        blob = seal(self._secret, payload, context=_SNAPSHOT_CONTEXT)
        try:
            await self._store.set(Namespace.TABLE, self._key, blob, SNAPSHOT_TTL)
        except StoreUnavailable:
            event(logging.WARNING, "authentik: applications not stored", reason="store")

    def _unseal(self, blob: bytes) -> Fetched | None:
        plain = open_sealed(self._secret, blob, context=_SNAPSHOT_CONTEXT)
        if plain is None:
            return None
        try:
            data = json.loads(plain)
            return Fetched(
                providers=tuple(data["providers"]),
                problems=tuple(data["problems"]),
                refresh_interval=data["refresh_interval"],
                fetched_at=float(data["fetched_at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
