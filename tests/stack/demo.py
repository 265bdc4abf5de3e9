"""The demo and test world, described once: users, groups, the OIDC client, configs.

`make run` (tests.stack.__main__) and the pytest fixtures (tests/conftest.py) both
build their IdP and ext-authz configuration from here, so what the demo shows is
what the tests check.

- alice: in `admins` (attributes app_username=admin), own attributes app_password=s3cret,
  IdP password ALICE.idp_password, app password "alice-app-password".
- bob: in `devs`, no attributes, app password "bob-app-password", static bearer
  token "bob-static-token" (directory only).
- carol: in `devs` and `admins`, her own upstream attributes, and additionalHeaders
  X-Team (declared), X-Floor (not declared) and names that may never be sent.
- application `whoami` (http://whoami.localhost:<envoy port>): no OIDC; Basic and
  Bearer verified against the directory; `^/public/` needs no authentication;
  `^/admin/` only for group `admins` (WHOAMI_ACCESS, SPEC §12): alice and carol, not bob.
- application `app` (http://app.localhost:<envoy port>), only with an IdP: OIDC client
  `whoami-oidc` at the IdP (client_secret_post), browser sign-in, Basic verified
  authentik-style (app passwords at the IdP), Bearer JWT/introspection.
- both declare X-Team in `send.additional_headers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from argon2 import PasswordHasher

from ext_authz.crypto import hash_token
from tests.stack.caddy import Caddy
from tests.stack.echo import EchoServer
from tests.stack.envoy import HTTP_TEMPLATE, Envoy
from tests.stack.extauthz import ExtAuthz
from tests.stack.idp import IdP, IdPClient, IdPUser, proxy_provider_client
from tests.stack.nginx import API_401_TEMPLATE, BROWSER_TEMPLATE, Nginx
from tests.stack.proc import START_BOUND, free_port
from tests.stack.redis import RedisServer

# >= 32 bytes; test/demo only.
SECRET = "demo-secret-not-for-production-0123456789abcdef"

GROUPS: dict[str, dict[str, Any]] = {
    "admins": {"app_username": "admin"},
    "devs": {"team": "dev"},
}


@dataclass(frozen=True)
class DemoUser:
    username: str
    email: str
    name: str
    idp_password: str  # the IdP's login form and password grant
    app_password: str  # Basic: directory (whoami) and the IdP's app passwords (app)
    groups: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    tokens: tuple[str, ...] = ()  # static bearer tokens (directory)


ALICE = DemoUser(
    username="alice",
    email="alice@example.com",
    name="Alice Example",
    idp_password="alice-idp-password",
    app_password="alice-app-password",
    groups=("admins",),
    attributes={"app_password": "s3cret"},
)
BOB = DemoUser(
    username="bob",
    email="bob@example.com",
    name="Bob Example",
    idp_password="bob-idp-password",
    app_password="bob-app-password",
    groups=("devs",),
    tokens=("bob-static-token",),
)
# Carol sets both upstream attributes herself (they override her groups'), is in two
# groups, and asks for extra upstream headers: X-Team, which both applications declare
# (send.additional_headers), X-Floor, which none does, and names that may never be
# sent (ours, in any spelling, and authorization).
CAROL = DemoUser(
    username="carol",
    email="carol@example.com",
    name="Carol Example",
    idp_password="carol-idp-password",
    app_password="carol-app-password",
    groups=("devs", "admins"),
    attributes={
        "app_username": "carol-upstream",
        "app_password": "pässwörd:with:colons",
        "additionalHeaders": {
            "X-Team": "blue",
            "X-Floor": "3",
            "Authorization": "Basic ZXZpbDpldmls",
            "X-authentik-username": "root",
            "x_authentik_username": "root",
        },
    },
)
USERS: tuple[DemoUser, ...] = (ALICE, BOB, CAROL)
# The additionalHeaders names both applications declare (send.additional_headers).
ADDITIONAL_HEADERS = ("X-Team",)
BOB_STATIC_TOKEN = "bob-static-token"

OIDC_CLIENT_ID = "whoami-oidc"
OIDC_CLIENT_SECRET = "whoami-oidc-client-secret-0123456789abcdef"  # >= 32 chars
OTHER_CLIENT_ID = "other-oidc"
OTHER_CLIENT_SECRET = "other-oidc-client-secret-0123456789abcdef"


# One sign-in across subdomains (cookie_domain): the browser test serves `app` as
# app.example.test and other.example.test, mapped to loopback by Chromium's resolver rules.
SHARED_DOMAIN = ".example.test"


def shared_domain_url(envoy_port: int, host: str = "app") -> str:
    return f"http://{host}{SHARED_DOMAIN}:{envoy_port}"


def host_url(app: str, envoy_port: int) -> str:
    """The external_host of a demo application: http://<app>.localhost:<port>."""
    return f"http://{app}.localhost:{envoy_port}"


# -- the IdP ---------------------------------------------------------------------------


def idp_clients(
    envoy_ports: Sequence[int],
    *,
    shared_domain: bool = False,
    extra_hosts: Sequence[str] = (),
) -> list[IdPClient]:
    """The OIDC client of application `app`, valid for every Envoy port given
    (redirect URIs must match exactly, and each test stack has its own Envoy port),
    and for `extra_hosts` (external hosts of more applications on the same client)."""
    hosts = [host_url("app", p) for p in envoy_ports]
    if shared_domain:  # the cookie_domain browser test serves `app` as app.example.test
        hosts += [shared_domain_url(p) for p in envoy_ports]
    hosts += list(extra_hosts)
    # Both are authentik proxy providers: strict redirect URIs, HS256 tokens.
    return [
        proxy_provider_client(
            OIDC_CLIENT_ID,
            OIDC_CLIENT_SECRET,
            hosts,
            post_logout_redirect_uris=hosts,
            token_endpoint_auth_method="client_secret_post",
        ),
        # Another application's client: its tokens must not open `app` (audience).
        proxy_provider_client(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET, ["http://other.localhost"]),
    ]


def idp_users() -> list[IdPUser]:
    return [
        IdPUser(
            username=u.username,
            password=u.idp_password,
            email=u.email,
            name=u.name,
            groups=list(u.groups),
            attributes=dict(u.attributes),
            app_passwords=[u.app_password],
        )
        for u in USERS
    ]


def build_idp(
    workdir: Path,
    envoy_ports: Sequence[int],
    port: int | None = None,
    *,
    shared_domain: bool = False,
    extra_hosts: Sequence[str] = (),
) -> IdP:
    """The demo IdP (not started)."""
    return IdP(
        clients=idp_clients(envoy_ports, shared_domain=shared_domain, extra_hosts=extra_hosts),
        users=idp_users(),
        groups=GROUPS,
        workdir=Path(workdir),
        port=port,
    )


# -- the ext-authz config --------------------------------------------------------------


@cache
def _hash(secret: str) -> str:
    # argon2id (PasswordHasher's default type); cached: hashing costs ~50 ms each.
    return PasswordHasher().hash(secret)


@cache
def _hash_token(token: str, secret: str = SECRET) -> str:
    # A static token's hash carries its keyed lookup digest as salt (ext_authz.crypto),
    # as `ext-authz hash-password --token -c CONFIG` makes it.
    return hash_token(secret.encode(), token)


def directory() -> dict[str, Any]:
    return {
        "groups": {g: {"attributes": dict(attrs)} for g, attrs in GROUPS.items()},
        "users": [
            {
                "username": u.username,
                "email": u.email,
                "name": u.name,
                "groups": list(u.groups),
                "attributes": dict(u.attributes),
                "app_passwords": [_hash(u.app_password)],
                "tokens": [_hash_token(t) for t in u.tokens],
            }
            for u in USERS
        ],
    }


# whoami's access rules (SPEC §12): /admin/ for admins, every other path for anyone
# signed in, so the demo shows bob's 403 beside alice's 200.
WHOAMI_ACCESS: list[dict[str, Any]] = [{"paths": ["^/admin/"], "groups": ["admins"]}, {}]


def whoami_app(envoy_port: int) -> dict[str, Any]:
    return {
        "name": "whoami",
        "external_host": host_url("whoami", envoy_port),
        "skip_path_regex": ["^/public/"],
        "access": [dict(rule) for rule in WHOAMI_ACCESS],
        "receive": {
            "basic": {"enabled": True, "verify": "directory"},
            "bearer": {"enabled": True, "verify": "directory"},
        },
        "send": {"additional_headers": list(ADDITIONAL_HEADERS)},
    }


def oidc_app(envoy_port: int, issuer: str, name: str = "app") -> dict[str, Any]:
    """Application `name` at http://<name>.localhost:<port>, on the demo OIDC client."""
    return {
        "name": name,
        "external_host": host_url(name, envoy_port),
        "oidc": {
            "issuer": issuer,
            "client_id": OIDC_CLIENT_ID,
            "client_secret": OIDC_CLIENT_SECRET,
            "client_auth": "client_secret_post",
        },
        "send": {"additional_headers": list(ADDITIONAL_HEADERS)},
    }


def ext_authz_config(
    envoy_port: int,
    store_url: str = "memory://",
    idp: IdP | None = None,
    *,
    key_prefix: str = "ext-authz:",
    log_level: str = "info",
) -> dict[str, Any]:
    """The ext-authz config dict (SPEC §3) of the demo world behind Envoy on `envoy_port`.

    `server.listen`/`http_listen` are left out: tests.stack.extauthz.ExtAuthz fills them.
    """
    apps = [whoami_app(envoy_port)]
    if idp is not None:
        apps.append(oidc_app(envoy_port, idp.issuer))
    return {
        "server": {"grace_period": "2s", "log_level": log_level, "log_format": "json"},
        "secret": SECRET,
        "store": {"url": store_url, "key_prefix": key_prefix},
        "directory": directory(),
        "applications": apps,
    }


def merge_config(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in (a new dict; neither argument changes).

    Mappings merge recursively and other values replace, except `applications`: given
    as a mapping {name: {...}} it merges into the application of that name (a new name
    appends a new application); given as a list it replaces the list.  A value of None
    deletes the key.
    """
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif key == "applications" and isinstance(value, dict):
            apps = [dict(a) for a in out.get("applications", [])]
            for name, patch in value.items():
                for i, app in enumerate(apps):
                    if app.get("name") == name:
                        apps[i] = merge_config(app, patch)
                        break
                else:
                    apps.append(merge_config({"name": name}, patch))
            out["applications"] = apps
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


# -- the running world -----------------------------------------------------------------


class LoopbackTransport(httpx.BaseTransport):
    """Sends requests for `*.localhost` to 127.0.0.1, keeping the Host header.

    The system resolver here does not map `whoami.localhost` to loopback (browsers and
    curl do), and the cookie jar should see the real host names.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._inner = httpx.HTTPTransport(**kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if not (host == "localhost" or host.endswith(".localhost")):
            return self._inner.handle_request(request)
        # Send a copy to 127.0.0.1, but answer with the original request attached:
        # the cookie jar files cookies under response.request's host.
        rewritten = httpx.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1"),
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )
        response = self._inner.handle_request(rewritten)
        response.request = request
        return response

    def close(self) -> None:
        self._inner.close()


def _fqdn(host: str) -> str:
    """'whoami' -> 'whoami.localhost'; names with a dot (or 127.0.0.1) stay."""
    host = host.split(":", 1)[0]
    return host if "." in host or host == "localhost" else f"{host}.localhost"


# The proxy in front of the replicas, and how it asks them (SPEC §10 for all but envoy).
FRONTS = ("envoy", "envoy-http", "nginx", "nginx-api", "caddy")
Front = Envoy | Nginx | Caddy


class Stack:
    """ext-authz replica(s) behind one proxy, routing to an echo upstream.

    `front` names the proxy: "envoy" (gRPC ext_authz, envoy/envoy.yaml.tmpl; the
    default), "envoy-http" (ext_authz http_service, envoy/envoy-http.yaml.tmpl),
    "nginx" (deploy/nginx, authentik's auth_request snippet), "nginx-api" (its variant
    that answers API clients 401) or "caddy" (deploy/caddy). The applications'
    external hosts are on the front's port, so sign-in lands back on it. nginx and
    Caddy ask the first replica only.

    The echo server, the IdP and Redis are handed in (already started; the Stack
    neither starts nor stops them).  `config` is the ext-authz config every replica
    runs (before the launcher fills its ports).
    """

    def __init__(
        self,
        *,
        workdir: Path,
        echo: EchoServer,
        envoy_port: int | None = None,
        admin_port: int | None = None,
        idp: IdP | None = None,
        store_url: str = "memory://",
        redis: RedisServer | None = None,
        replicas: int = 1,
        config_overrides: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        context_app: str = "whoami",
        key_prefix: str = "ext-authz:",
        env: dict[str, str] | None = None,
        name: str = "stack",
        front: str = "envoy",
    ) -> None:
        if front not in FRONTS:
            raise ValueError(f"front: one of {FRONTS}, not {front!r}")
        self.front_kind = front
        self.workdir = Path(workdir)
        self.name = name
        self.echo = echo
        self.idp = idp
        self.redis = redis
        self.port = envoy_port if envoy_port is not None else free_port()
        config = ext_authz_config(self.port, store_url, idp, key_prefix=key_prefix)
        if callable(config_overrides):
            config = config_overrides(config)
        elif config_overrides:
            config = merge_config(config, config_overrides)
        self.config: dict[str, Any] = config
        self.replicas: list[ExtAuthz] = [
            ExtAuthz(config, self.workdir, env=env, name=f"{name}-ext-authz-{i + 1}")
            for i in range(replicas)
        ]
        self.front: Front = self._front(front, admin_port, context_app, name)
        self._client: httpx.Client | None = None

    def _front(self, front: str, admin_port: int | None, context_app: str, name: str) -> Front:
        upstream = f"127.0.0.1:{self.echo.port}"
        if front in ("envoy", "envoy-http"):
            http = front == "envoy-http"
            return Envoy(
                listen_port=self.port,
                admin_port=admin_port,
                ext_authz_ports=[
                    (r.forward_auth_port if http else r.port) or 0 for r in self.replicas
                ],
                echo_port=self.echo.port,
                context_app=context_app,
                workdir=self.workdir,
                name=f"{name}-{front}",
                **({"template": HTTP_TEMPLATE} if http else {}),
            )
        asking = self.replicas[0].forward_auth_address
        if front == "caddy":
            return Caddy(
                upstream=upstream,
                ext_authz=asking,
                workdir=self.workdir,
                listen_port=self.port,
                name=f"{name}-caddy",
            )
        return Nginx(
            upstream=upstream,
            ext_authz=asking,
            workdir=self.workdir,
            listen_port=self.port,
            template=API_401_TEMPLATE if front == "nginx-api" else BROWSER_TEMPLATE,
            name=f"{name}-{front}",
        )

    @property
    def envoy(self) -> Envoy:
        """The front, when it is an Envoy (every stack but the nginx and Caddy ones)."""
        if not isinstance(self.front, Envoy):
            raise AttributeError(f"{self.name} has {self.front_kind} in front, not Envoy")
        return self.front

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = START_BOUND) -> Stack:
        try:
            for replica in self.replicas:
                replica.start(timeout)
            if isinstance(self.front, Envoy):
                # The http_service cluster has no health checks to wait for.
                self.front.start(timeout, wait_healthy=self.front_kind == "envoy")
            else:
                self.front.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.front.stop()
        for replica in self.replicas:
            replica.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- requests ----------------------------------------------------------------------

    def url(self, host: str = "whoami", path: str = "/") -> str:
        """http://<host>.localhost:<envoy port><path>; `host` "whoami" or a full name."""
        return f"http://{_fqdn(host)}:{self.port}{path}"

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client that reaches *.localhost through Envoy (cookies kept;
        redirects not followed unless asked)."""
        kwargs.setdefault("timeout", 15.0)
        kwargs.setdefault("follow_redirects", False)
        return httpx.Client(transport=LoopbackTransport(), **kwargs)

    def request(
        self,
        method: str,
        host: str = "whoami",
        path: str = "/",
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request through Envoy with Host `<host>.localhost:<port>`; no cookie jar,
        no redirects followed (pass cookies in `headers` or `cookies=`)."""
        if self._client is None:
            self._client = self.client()
        try:
            return self._client.request(method, self.url(host, path), headers=headers, **kwargs)
        finally:
            self._client.cookies.clear()

    def get(self, host: str = "whoami", path: str = "/", **kwargs: Any) -> httpx.Response:
        return self.request("GET", host, path, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<Stack {self.name} {self.front_kind}=http://127.0.0.1:{self.port} "
            f"replicas={len(self.replicas)}>"
        )


@contextmanager
def private_idp_stack(
    workdir: Path,
    echo: EchoServer,
    redis: RedisServer,
    *,
    name: str,
    replicas: int = 1,
    config_overrides: dict[str, Any] | None = None,
    id_token_alg: str | None = None,
) -> Iterator[tuple[Stack, IdP]]:
    """A stack with an IdP of its own (and a key prefix of its own), for tests that
    stop the IdP without hurting the rest of the session. `id_token_alg` re-registers
    the clients with another signature (RS256: an IdP whose tokens need its JWKS)."""
    port = free_port()
    idp = build_idp(Path(workdir) / f"{name}-idp", [port])
    if id_token_alg is not None:
        idp.clients = [replace(c, id_token_signed_response_alg=id_token_alg) for c in idp.clients]
    idp.start()
    stack = Stack(
        workdir=Path(workdir) / name,
        echo=echo,
        envoy_port=port,
        idp=idp,
        store_url=redis.url,
        redis=redis,
        replicas=replicas,
        config_overrides=config_overrides,
        key_prefix=f"{name}:",
        name=name,
    )
    try:
        stack.start()
        yield stack, idp
    finally:
        stack.stop()
        idp.stop()
