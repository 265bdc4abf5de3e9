"""A test double of authentik's outpost API and websocket (SPEC §11), for tests and
`make run`. authentik itself cannot run on these machines; this plays the part of it
an outpost talks to, and nothing else:

- `GET /api/v3/outposts/instances/` and `GET /api/v3/outposts/proxy/?page=&page_size=`:
  every answer is built from the generated `authentik-client` package's own models
  (`PaginatedOutpostList`, `Outpost`, `PaginatedProxyOutpostConfigList`,
  `ProxyOutpostConfig`, `OpenIDConnectConfiguration`, `Pagination`) and serialised with
  pydantic (`model_dump(mode="json", by_alias=True)`: the generated `to_dict()` leaves
  out read-only fields such as `assigned_application_slug`, which authentik's server
  does send), so the shapes are authentik's schema and cannot drift from it;
- `/ws/outpost/<pk>/?instance_uuid=...`: as authentik's outpost consumer
  (authentik/outposts/consumer.py): the token is checked at the handshake, every
  message is answered with ACK (0), HELLO (1) arguments are recorded per instance with
  their arrival time; `trigger_update()` sends TRIGGER_UPDATE (2) and
  `end_session(sid)` SESSION_END (4) `{"session_id": sid}` to every connected instance;
- faults: `down()` closes the port and every websocket (connections refused until
  `up()`), `refuse_token(True)` answers 403 as authentik does for a revoked token.

The OAuth side is not here: providers point their `oidc_configuration` at the
oidc-provider IdP (tests/stack/idp.py), configured as authentik configures a proxy
provider (strict redirect URI, HS256 with the client secret). The HTTP and websocket
server is the `websockets` package's, on 127.0.0.1 in a thread of this process.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.stack.proc import free_port

ACK, HELLO, TRIGGER_UPDATE, SESSION_END = 0, 1, 2, 4


def _models() -> Any:
    """authentik-client's models (imported once, when a double is first built)."""
    from authentik_client import models

    return models


def oidc_configuration(discovery: dict[str, Any], *, hs256: bool = True) -> Any:
    """authentik's OpenIDConnectConfiguration of a proxy provider, from the IdP's
    discovery document: authentik lists only the provider's own signing algorithm
    (HS256 when the provider has no signing key)."""
    m = _models()
    return m.OpenIDConnectConfiguration(
        issuer=discovery["issuer"],
        authorization_endpoint=discovery["authorization_endpoint"],
        token_endpoint=discovery["token_endpoint"],
        userinfo_endpoint=discovery["userinfo_endpoint"],
        end_session_endpoint=discovery["end_session_endpoint"],
        introspection_endpoint=discovery["introspection_endpoint"],
        jwks_uri=discovery["jwks_uri"],
        response_types_supported=discovery.get("response_types_supported", ["code"]),
        id_token_signing_alg_values_supported=["HS256"] if hs256 else ["RS256"],
        subject_types_supported=discovery.get("subject_types_supported", ["public"]),
        token_endpoint_auth_methods_supported=discovery.get(
            "token_endpoint_auth_methods_supported", ["client_secret_post"]
        ),
    )


def fetch_discovery(issuer: str) -> dict[str, Any]:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    doc = httpx.get(url, timeout=10).json()
    assert isinstance(doc, dict)
    return doc


def proxy_provider(
    pk: int,
    slug: str,
    external_host: str,
    *,
    client_id: str,
    client_secret: str,
    oidc: Any,
    mode: str = "forward_single",
    **fields: Any,
) -> Any:
    """One ProxyOutpostConfig as authentik's API serves it (fields as in its UI)."""
    m = _models()
    values: dict[str, Any] = {
        "pk": pk,
        "name": f"Provider for {slug}",
        "internal_host": "",
        "external_host": external_host,
        "internal_host_ssl_validation": True,
        "client_id": client_id,
        "client_secret": client_secret,
        "oidc_configuration": oidc,
        "cookie_secret": "cookie-secret-unused-by-ext-authz",
        "certificate": None,
        "skip_path_regex": "",
        "basic_auth_enabled": False,
        "basic_auth_password_attribute": "",
        "basic_auth_user_attribute": "",
        "mode": m.ProxyMode(mode),
        "cookie_domain": "",
        "access_token_validity": 86400,
        "intercept_header_auth": True,
        "scopes_to_request": ["openid", "email", "profile", "ak_proxy"],
        "assigned_application_slug": slug,
        "assigned_application_name": slug.title(),
    }
    values.update(fields)
    return m.ProxyOutpostConfig(**values)


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True)


@dataclass
class Hello:
    at: float  # time.monotonic() when it arrived
    instance_uuid: str  # from the websocket URL
    args: dict[str, Any]


@dataclass
class _World:
    providers: list[Any] = field(default_factory=list)
    refusing: bool = False
    hellos: list[Hello] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)


class TestAuthentik:
    """authentik's outpost API for one outpost and its token, on 127.0.0.1:`port`."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        token: str,
        *,
        port: int | None = None,
        refresh_interval_s: int = 300,
        path: str = "/",
    ) -> None:
        self.token = token
        self.port = port or free_port()
        self.path = path if path.endswith("/") else path + "/"
        self.outpost_pk = str(uuid.uuid4())
        self.refresh_interval_s = refresh_interval_s
        self._world = _World()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._sockets: set[Any] = set()
        _models()  # pay the import before the first request, not during it

    # -- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """AUTHENTIK_HOST: http://127.0.0.1:P/ (with the path, when given)."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    # -- control -------------------------------------------------------------------------

    def set_providers(self, providers: list[Any]) -> None:
        with self._lock:
            self._world.providers = list(providers)

    @property
    def providers(self) -> list[Any]:
        with self._lock:
            return list(self._world.providers)

    def refuse_token(self, refusing: bool = True) -> None:
        with self._lock:
            self._world.refusing = refusing

    def hellos(self, instance_uuid: str | None = None) -> list[Hello]:
        with self._lock:
            return [h for h in self._world.hellos if instance_uuid in (None, h.instance_uuid)]

    def instances(self) -> set[str]:
        return {h.instance_uuid for h in self.hellos()}

    def requests(self, name: str) -> int:
        with self._lock:
            return self._world.requests[name]

    def connected(self) -> int:
        return len(self._sockets)

    def trigger_update(self) -> int:
        """TRIGGER_UPDATE to every connected instance; how many were sent."""
        return self._send_all({"instruction": TRIGGER_UPDATE, "args": {}})

    def end_session(self, session_id: str) -> int:
        """SESSION_END (a user signed out of authentik) to every connected instance."""
        return self._send_all({"instruction": SESSION_END, "args": {"session_id": session_id}})

    def _send_all(self, message: dict[str, Any]) -> int:
        loop = self._loop
        if loop is None:
            return 0

        async def send() -> int:
            sent = 0
            for ws in list(self._sockets):
                try:
                    await ws.send(json.dumps(message))
                    sent += 1
                except Exception:  # a closing socket: not connected any more
                    continue
            return sent

        return asyncio.run_coroutine_threadsafe(send(), loop).result(timeout=10)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> TestAuthentik:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="test-authentik", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("the test authentik did not start within 30 s")
        if failure:
            raise failure[0]
        return self

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._server = await serve(
            self._socket,
            "127.0.0.1",
            self.port,
            process_request=self._http,
            ping_interval=None,
        )

    def down(self) -> None:
        """authentik unreachable: the port closed, every websocket cut."""
        loop = self._loop
        if loop is None or self._server is None:
            return

        async def close() -> None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=15)

    def up(self) -> None:
        """Reachable again (a no-op when it is)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("not started")
        if self._server is not None:
            return
        asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=15)

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self.down()
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> TestAuthentik:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP: the API ---------------------------------------------------------------------

    def _authorized(self, headers: Any) -> bool:
        with self._lock:
            refusing = self._world.refusing
        return not refusing and headers.get("Authorization") == f"Bearer {self.token}"

    def _http(self, connection: Any, request: Any) -> Any:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        def answer(status: int, body: Any) -> Any:
            data = json.dumps(body).encode()
            headers = Headers(
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(data))),
                    ("Connection", "close"),
                ]
            )
            return Response(status, HTTPStatus(status).phrase, headers, data)

        target = urlsplit(request.path)
        route = target.path.removeprefix(self.path.rstrip("/"))
        if route.startswith(f"/ws/outpost/{self.outpost_pk}/"):
            if not self._authorized(request.headers):
                return answer(403, {"detail": "Token invalid/expired"})
            return None  # the websocket handshake goes on
        with self._lock:
            self._world.requests[route] += 1
        if not self._authorized(request.headers):
            return answer(403, {"detail": "Token invalid/expired"})
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        if route == "/api/v3/outposts/instances/":
            return answer(200, self._instances())
        if route == "/api/v3/outposts/proxy/":
            page = max(1, int(query.get("page", "1")))
            size = max(1, min(100, int(query.get("page_size", "20"))))
            return answer(200, self._proxy_page(page, size))
        return answer(404, {"detail": "Not found."})

    def _pagination(self, page: int, size: int, count: int) -> Any:
        m = _models()
        pages = max(1, -(-count // size))
        return m.Pagination(
            next=page + 1 if page < pages else 0,
            previous=page - 1 if page > 1 else 0,
            count=count,
            current=page,
            total_pages=pages,
            start_index=(page - 1) * size + 1 if count else 0,
            end_index=min(page * size, count),
        )

    def _instances(self) -> Any:
        m = _models()
        providers = self.providers
        outpost = m.Outpost(
            pk=self.outpost_pk,
            name="ext-authz outpost",
            type=m.OutpostTypeEnum.PROXY,
            providers=[p.pk for p in providers],
            providers_obj=[],
            service_connection=None,
            service_connection_obj=None,
            refresh_interval_s=self.refresh_interval_s,
            token_identifier=f"ak-outpost-{self.outpost_pk}-api",
            config={"authentik_host": self.url, "log_level": "info"},
            managed=None,
        )
        page = m.PaginatedOutpostList(
            pagination=self._pagination(1, 20, 1), results=[outpost], autocomplete={}
        )
        return _dump(page)

    def _proxy_page(self, page: int, size: int) -> Any:
        m = _models()
        providers = self.providers
        chunk = providers[(page - 1) * size : page * size]
        listing = m.PaginatedProxyOutpostConfigList(
            pagination=self._pagination(page, size, len(providers)),
            results=chunk,
            autocomplete={},
        )
        return _dump(listing)

    # -- the websocket -------------------------------------------------------------------

    async def _socket(self, ws: Any) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        instance = (query.get("instance_uuid") or [""])[0]
        self._sockets.add(ws)
        try:
            async for message in ws:
                try:
                    data = json.loads(message)
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("instruction") == HELLO:
                    args = data.get("args") if isinstance(data.get("args"), dict) else {}
                    with self._lock:
                        self._world.hellos.append(Hello(time.monotonic(), instance, dict(args)))
                await ws.send(json.dumps({"instruction": ACK, "args": {}}))
        except Exception:  # the instance went away
            return
        finally:
            self._sockets.discard(ws)
