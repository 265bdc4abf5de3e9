"""authentik's outpost API (SPEC §11): the providers of an outpost, and its websocket.

This adapter knows authentik's wire shapes and nothing of Envoy:

- `AuthentikClient.fetch()`: `GET {host}api/v3/outposts/instances/` (the token sees
  exactly its own outpost: results[0]) and `GET {host}api/v3/outposts/proxy/` page by
  page, following `pagination.next` (a page number; 0 when none); every answer is
  parsed with our own small models (`ProxyProvider`), never with the generated
  `authentik-client` package (~6 s and ~230 MB to import), and turned into
  application settings in the config's own shape (`application_settings`).
- `OutpostLink.run()`: the websocket `ws(s)://{host}ws/outpost/{pk}/?instance_uuid=...`
  as authentik's outpost consumer expects it: HELLO (1) at connect and every 10 s with
  version, build hash, instance uuid and hostname; TRIGGER_UPDATE (2) refreshes after a
  random 0-9 s delay (replicas spread); SESSION_END (4) ends the sessions of an
  authentik session; ACK (0) and anything else is ignored. It reconnects with a back-off
  from 1 s doubling to 5 min.

Faults are wrapped: `AuthentikRefused` (401/403: the token) and `AuthentikUnavailable`
(no connection, timeout, 5xx, an answer that is not what authentik sends). The token is
sent only to `host` and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import httpx

from ext_authz.config import AuthentikSettings
from ext_authz.errors import AuthentikRefused, AuthentikUnavailable
from ext_authz.logs import event
from ext_authz.outpost import Fetched

__all__ = [
    "AuthentikClient",
    "OutpostInfo",
    "OutpostLink",
    "ProxyProvider",
    "application_settings",
    "version",
]

PAGE_SIZE = 100
MAX_PAGES = 1000  # 100,000 providers: a loop of `next` pages ends here whatever it says
REQUEST_TIMEOUT = 10.0
HELLO_INTERVAL = 10.0
UPDATE_SPREAD = 9.0
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 300.0
BUILD_HASH = ""  # authentik's own outposts send their git hash; we have none to send

# Instructions of authentik's outpost websocket (authentik/outposts/consumer.py).
ACK, HELLO, TRIGGER_UPDATE, PROVIDER_SPECIFIC, SESSION_END = 0, 1, 2, 3, 4

_NAME = re.compile(r"[a-z0-9-]+")


def version() -> str:
    try:
        return metadata.version("ext-authz")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "0.0.0"


def user_agent() -> str:
    return f"ext-authz/{version()} (authentik outpost)"


# --- the models: only the fields used, checked as authentik sends them -------------------


def _str(data: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise ValueError(f"{key}: missing")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key}: not a string")
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{key}: not a boolean")
    return value


@dataclass(frozen=True)
class OutpostInfo:
    pk: str
    name: str
    refresh_interval_s: int

    @classmethod
    def parse(cls, data: Any) -> OutpostInfo:
        if not isinstance(data, Mapping):
            raise ValueError("outpost: not an object")
        interval = data.get("refresh_interval_s", 0)
        return cls(
            pk=str(data.get("pk") or ""),
            name=_str(data, "name"),
            refresh_interval_s=interval if isinstance(interval, int) else 0,
        )


@dataclass(frozen=True)
class ProxyProvider:
    """One `ProxyOutpostConfig` of authentik's API, the fields SPEC §11 maps."""

    pk: int
    name: str
    slug: str
    external_host: str
    internal_host: str
    mode: str
    cookie_domain: str
    skip_path_regex: str
    intercept_header_auth: bool
    basic_auth_enabled: bool
    basic_auth_user_attribute: str
    basic_auth_password_attribute: str
    access_token_validity: float
    scopes_to_request: tuple[str, ...]
    client_id: str
    client_secret: str
    oidc: Mapping[str, Any]

    @classmethod
    def parse(cls, data: Any) -> ProxyProvider:
        if not isinstance(data, Mapping):
            raise ValueError("not an object")
        oidc = data.get("oidc_configuration")
        if not isinstance(oidc, Mapping):
            raise ValueError("oidc_configuration: missing")
        scopes = data.get("scopes_to_request") or []
        validity = data.get("access_token_validity")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError("scopes_to_request: not a list of strings")
        if validity is not None and not isinstance(validity, int | float):
            raise ValueError("access_token_validity: not a number")
        return cls(
            pk=int(data.get("pk") or 0),
            name=_str(data, "name"),
            slug=_str(data, "assigned_application_slug", required=True),
            external_host=_str(data, "external_host", required=True),
            internal_host=_str(data, "internal_host"),
            mode=_str(data, "mode") or "proxy",
            cookie_domain=_str(data, "cookie_domain"),
            skip_path_regex=_str(data, "skip_path_regex"),
            intercept_header_auth=_bool(data, "intercept_header_auth", True),
            basic_auth_enabled=_bool(data, "basic_auth_enabled", False),
            basic_auth_user_attribute=_str(data, "basic_auth_user_attribute"),
            basic_auth_password_attribute=_str(data, "basic_auth_password_attribute"),
            access_token_validity=float(validity) if validity is not None else 0.0,
            scopes_to_request=tuple(scopes),
            client_id=_str(data, "client_id"),
            client_secret=_str(data, "client_secret"),
            oidc=dict(oidc),
        )


# --- the mapping (pure) -----------------------------------------------------------------


def _rebase(url: str, base: str) -> str:
    """`url` with the scheme and host of `base` (authentik's host_browser rewrite)."""
    if not url or not base:
        return url
    parts, to = urlsplit(url), urlsplit(base)
    return parts._replace(scheme=to.scheme, netloc=to.netloc).geturl()


def application_settings(
    provider: ProxyProvider, host_browser: str = ""
) -> tuple[dict[str, Any], list[str]]:
    """The provider as application settings in the config's shape (SPEC §3, §11), and
    what of it was left out (each line names the provider and the field)."""
    where = f"authentik provider {provider.slug}"
    notes: list[str] = []
    name = provider.slug.lower().replace("_", "-")
    skip: list[str] = []
    for number, line in enumerate(provider.skip_path_regex.splitlines(), start=1):
        pattern = line.strip()
        if not pattern:
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            # As authentik's outpost: an invalid line is logged and ignored.
            notes.append(f"{where}.skip_path_regex line {number}: invalid ({exc}); ignored")
            continue
        skip.append(pattern)
    if provider.mode == "proxy" and provider.internal_host:
        notes.append(f"{where}.internal_host: not used (the proxy in front routes to the upstream)")
    oidc = provider.oidc
    issuer = str(oidc.get("issuer") or "")
    endpoints: dict[str, Any] = {
        key: str(oidc.get(key) or "")
        for key in (
            "authorization_endpoint",
            "token_endpoint",
            "jwks_uri",
            "userinfo_endpoint",
            "end_session_endpoint",
            "introspection_endpoint",
        )
    }
    algs = oidc.get("id_token_signing_alg_values_supported") or []
    endpoints["id_token_signing_alg_values_supported"] = [a for a in algs if isinstance(a, str)]
    oidc_settings: dict[str, Any] = {
        "issuer": issuer,
        "client_id": provider.client_id,
        "scopes": list(provider.scopes_to_request) or ["openid", "profile", "email", "ak_proxy"],
        "endpoints": endpoints,
    }
    if provider.client_secret:
        oidc_settings["client_secret"] = provider.client_secret
    if host_browser:
        # Browsers sign in and out at the browser-facing host; the back channel goes to
        # `host` with the browser host's Host header, so authentik issues tokens for
        # (and its issuer is) the browser host, as authentik's own outpost arranges.
        for key in ("authorization_endpoint", "end_session_endpoint"):
            endpoints[key] = _rebase(endpoints[key], host_browser)
        oidc_settings["issuer"] = _rebase(issuer, host_browser)
        oidc_settings["backchannel_host"] = urlsplit(host_browser).netloc
    settings: dict[str, Any] = {
        "name": name,
        "external_host": provider.external_host.rstrip("/"),
        "mode": provider.mode,
        "cookie_domain": provider.cookie_domain,
        "skip_path_regex": skip,
        "intercept_header_auth": provider.intercept_header_auth,
        "oidc": oidc_settings,
        "receive": {"basic": {"verify": "authentik"}, "bearer": {"verify": "auto"}},
        "send": {
            "basic": {
                "enabled": provider.basic_auth_enabled,
                "username_attribute": provider.basic_auth_user_attribute,
                "password_attribute": provider.basic_auth_password_attribute,
            }
        },
    }
    if provider.access_token_validity >= 1:
        settings["session_lifetime"] = provider.access_token_validity
    if not _NAME.fullmatch(name):
        notes.append(f"{where}.assigned_application_slug: {provider.slug!r} is not [a-z0-9-]+")
    return settings, notes


# --- the API client -----------------------------------------------------------------------


class AuthentikClient:
    def __init__(self, settings: AuthentikSettings, http: httpx.AsyncClient | None = None) -> None:
        self._settings = settings
        self._http = http or httpx.AsyncClient(
            verify=not settings.insecure,
            timeout=REQUEST_TIMEOUT,
            follow_redirects=False,
        )
        self._headers = {
            "Authorization": f"Bearer {settings.token.get_secret_value()}",
            "User-Agent": user_agent(),
            "Accept": "application/json",
        }
        self.outpost_info: OutpostInfo | None = None

    @property
    def host(self) -> str:
        return self._settings.host

    async def close(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        url = self._settings.host + path
        try:
            response = await self._http.get(url, params=params, headers=self._headers)
        except httpx.HTTPError as exc:
            raise AuthentikUnavailable(f"{path}: {type(exc).__name__}") from exc
        if response.status_code in (401, 403):
            raise AuthentikRefused(f"{path}: HTTP {response.status_code} (the outpost token)")
        if response.status_code != 200:
            raise AuthentikUnavailable(f"{path}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise AuthentikUnavailable(f"{path}: not JSON") from exc

    async def outpost(self) -> OutpostInfo:
        page = await self._get("api/v3/outposts/instances/")
        results = page.get("results") if isinstance(page, Mapping) else None
        if not isinstance(results, list) or not results:
            raise AuthentikUnavailable("outposts/instances: this token sees no outpost")
        try:
            info = OutpostInfo.parse(results[0])
        except ValueError as exc:
            raise AuthentikUnavailable(f"outposts/instances: {exc}") from exc
        if not info.pk:
            raise AuthentikUnavailable("outposts/instances: the outpost has no pk")
        self.outpost_info = info
        return info

    async def providers(self) -> list[Any]:
        """The raw ProxyOutpostConfig objects of every page."""
        found: list[Any] = []
        page_number = 1
        for _ in range(MAX_PAGES):
            page = await self._get(
                "api/v3/outposts/proxy/", {"page": page_number, "page_size": PAGE_SIZE}
            )
            if not isinstance(page, Mapping) or not isinstance(page.get("results"), list):
                raise AuthentikUnavailable("outposts/proxy: not a page of results")
            found.extend(page["results"])
            pagination = page.get("pagination")
            following = pagination.get("next", 0) if isinstance(pagination, Mapping) else 0
            if not isinstance(following, int | float) or following <= page_number:
                break
            page_number = int(following)
        return found

    async def fetch(self) -> Fetched:
        """The outpost's providers as application settings (`outpost.Fetch`)."""
        info = await self.outpost()
        mappings: list[Mapping[str, Any]] = []
        problems: list[str] = []
        for raw in await self.providers():
            try:
                provider = ProxyProvider.parse(raw)
            except ValueError as exc:
                slug = raw.get("assigned_application_slug") if isinstance(raw, Mapping) else None
                problems.append(f"authentik provider {slug or '?'}: {exc}; left out")
                continue
            mapping, notes = application_settings(provider, self._settings.host_browser)
            mappings.append(mapping)
            problems.extend(notes)
        return Fetched(
            providers=tuple(mappings),
            problems=tuple(problems),
            refresh_interval=float(info.refresh_interval_s),
        )


# --- the websocket ------------------------------------------------------------------------


Connect = Callable[..., Any]


class OutpostLink:
    """The outpost's websocket to authentik; `run()` until cancelled."""

    def __init__(
        self,
        settings: AuthentikSettings,
        outpost_pk: Callable[[], Awaitable[str]],
        *,
        on_update: Callable[[], Awaitable[object]],
        on_session_end: Callable[[str], Awaitable[object]],
        instance_uuid: str,
        on_state: Callable[[bool], None] | None = None,
        hello_interval: float = HELLO_INTERVAL,
        spread: float = UPDATE_SPREAD,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        connect: Connect | None = None,
    ) -> None:
        self._settings = settings
        self._outpost_pk = outpost_pk
        self._on_update = on_update
        self._on_session_end = on_session_end
        self.instance_uuid = instance_uuid
        self._on_state = on_state
        self._hello_interval = hello_interval
        self._spread = spread
        self._rand = rand
        self._sleep = sleep
        self._connect = connect
        self._pending_update: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.state = "connecting"  # connecting | connected | down

    def url(self, pk: str) -> str:
        parts = urlsplit(self._settings.host)
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        return f"{scheme}://{parts.netloc}{path}ws/outpost/{pk}/?instance_uuid={self.instance_uuid}"

    def hello(self) -> dict[str, Any]:
        return {
            "instruction": HELLO,
            "args": {
                "version": version(),
                "buildHash": BUILD_HASH,
                "uuid": self.instance_uuid,
                "hostname": socket.gethostname(),
            },
        }

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        if self._on_state is not None:
            self._on_state(state == "connected")
        if state == "connected":
            event(logging.INFO, "authentik websocket connected", previous=previous)
        elif previous == "connected":
            event(logging.WARNING, "authentik websocket lost: reconnecting")

    async def run(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            connected = False
            try:
                pk = await self._outpost_pk()
                connected = await self._session(pk)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every fault of a connection is a reconnect
                if self.state != "down":
                    event(
                        logging.WARNING,
                        "authentik websocket unavailable",
                        reason=type(exc).__name__,
                    )
            self._set_state("down")
            if connected:
                delay = BACKOFF_FIRST
            await self._sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self, pk: str) -> bool:
        """One connection; True once it was established (the back-off starts again)."""
        connect = self._connect or _websockets_connect
        headers = {"Authorization": f"Bearer {self._settings.token.get_secret_value()}"}
        ssl_context: ssl.SSLContext | None = None
        if self._settings.host.startswith("https:") and self._settings.insecure:
            ssl_context = ssl.create_default_context()
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        async with connect(
            self.url(pk), additional_headers=headers, user_agent=user_agent(), ssl=ssl_context
        ) as ws:
            self._set_state("connected")
            hello = asyncio.ensure_future(self._hello_loop(ws))
            try:
                async for message in ws:
                    await self._dispatch(message)
            finally:
                hello.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await hello
        return True

    async def _hello_loop(self, ws: Any) -> None:
        while True:
            await ws.send(json.dumps(self.hello()))
            await self._sleep(self._hello_interval)

    async def _dispatch(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            return
        if not isinstance(data, Mapping):
            return
        instruction = data.get("instruction")
        args = data.get("args") if isinstance(data.get("args"), Mapping) else {}
        if instruction == TRIGGER_UPDATE:
            self._schedule_update()
        elif instruction == SESSION_END:
            session_id = args.get("session_id")  # type: ignore[union-attr]
            if isinstance(session_id, str) and session_id:
                self._spawn(self._on_session_end(session_id))

    def _schedule_update(self) -> None:
        """A refresh after a random 0-9 s (replicas spread); one pending at a time."""
        if self._pending_update is not None and not self._pending_update.done():
            return

        async def later() -> None:
            await self._sleep(self._rand() * self._spread)
            await self._on_update()

        self._pending_update = self._spawn(later())

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _websockets_connect(url: str, **kwargs: Any) -> Any:
    from websockets.asyncio.client import connect

    kwargs.setdefault("open_timeout", REQUEST_TIMEOUT)
    kwargs.setdefault("user_agent_header", kwargs.pop("user_agent", None))
    if kwargs.get("ssl") is None:
        kwargs.pop("ssl", None)
    return connect(url, **kwargs)
