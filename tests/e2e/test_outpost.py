"""ext-authz as an authentik outpost (SPEC §11), through a real Envoy.

Two replicas started with only AUTHENTIK_HOST, AUTHENTIK_TOKEN and a store URL (the
environment-only start, `serve` with no -c), on one real Redis, behind one Envoy
(ext_authz over gRPC) in front of the echo upstream. authentik is the test double of
tests/stack/authentik.py (answers built from authentik-client's models, its websocket
as authentik's outpost consumer); its providers' OAuth side is a private oidc-provider
IdP registered as authentik registers proxy providers (the strict redirect URI, HS256
with the client secret).

Providers of all three modes:
  fs   forward_single, Send HTTP-Basic on (app_username / app_password), token validity 600 s
  px   proxy (internal host given, unused), skip path ^/public/
  fd   forward_domain, cookie domain fd.localhost, a whole-URL skip regex
  open forward_single, intercept header authentication off
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.signin import idp_forms
from tests.stack.authentik import TestAuthentik, fetch_discovery, oidc_configuration, proxy_provider
from tests.stack.demo import ALICE, BOB, GROUPS, DemoUser, LoopbackTransport, idp_users
from tests.stack.echo import EchoServer
from tests.stack.envoy import Envoy
from tests.stack.extauthz import ExtAuthz
from tests.stack.idp import IdP, proxy_provider_client
from tests.stack.proc import free_port, wait_until
from tests.stack.redis import RedisServer
from tests.support import basic

pytestmark = pytest.mark.e2e

TOKEN = "ak-outpost-token-for-the-e2e-tests-0123456789"
DEADLINE = 40.0  # bounds a failure (TRIGGER_UPDATE spreads refreshes over 0-9 s)
HTML = {"Accept": "text/html"}
OUTPOST = "/outpost.goauthentik.io"
SLUGS = ("fs", "px", "fd", "open")


def client_secret(slug: str) -> str:
    return f"{slug}-client-secret-0123456789abcdef-0123"


@dataclass
class World:
    port: int
    authentik: TestAuthentik
    idp: IdP
    redis: RedisServer
    envoy: Envoy
    replicas: list[ExtAuthz]
    workdir: Path
    oidc: Any  # the providers' OpenIDConnectConfiguration

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"

    def browser(self) -> httpx.Client:
        return httpx.Client(transport=LoopbackTransport(), timeout=15.0, follow_redirects=False)

    def get(self, host: str, path: str = "/", **headers: str) -> httpx.Response:
        with self.browser() as client:
            return client.get(self.url(host, path), headers=headers)

    def provider(self, pk: int, slug: str, **fields: Any) -> Any:
        host = fields.pop("host", f"{slug}.localhost")
        return proxy_provider(
            pk,
            slug,
            self.url(host).rstrip("/"),
            client_id=f"{slug}-client",
            client_secret=client_secret(slug),
            oidc=self.oidc,
            **fields,
        )

    def providers(self, **changes: dict[str, Any]) -> list[Any]:
        base: dict[str, dict[str, Any]] = {
            "fs": {
                "basic_auth_enabled": True,
                "basic_auth_user_attribute": "app_username",
                "basic_auth_password_attribute": "app_password",
                "access_token_validity": 600,
            },
            "px": {
                "mode": "proxy",
                "internal_host": "http://upstream.internal:8080",
                "skip_path_regex": "^/public/",
            },
            "fd": {
                "mode": "forward_domain",
                "host": "auth.fd.localhost",
                "cookie_domain": "fd.localhost",
                "skip_path_regex": f"^http://open\\.fd\\.localhost:{self.port}/",
            },
            "open": {"intercept_header_auth": False},
        }
        for slug, fields in changes.items():
            base[slug] = {**base.get(slug, {}), **fields}
        return [
            self.provider(i + 1, slug, **fields)
            for i, (slug, fields) in enumerate(base.items())
            if fields.get("remove") is not True
        ]

    def replica(self, name: str, store_url: str | None = None) -> ExtAuthz:
        return ExtAuthz(
            {},
            self.workdir,
            name=name,
            config_file=False,
            env={
                "AUTHENTIK_HOST": self.authentik.url,
                "AUTHENTIK_TOKEN": TOKEN,
                "EXT_AUTHZ_STORE_URL": store_url or self.redis.url,
            },
        )


def ask(replica: ExtAuthz, host: str, path: str = "/", **headers: str) -> httpx.Response:
    """One Check of this replica alone, over its forward-auth port (Envoy's dialect)."""
    assert replica.forward_auth_url is not None
    return httpx.get(
        f"{replica.forward_auth_url}{OUTPOST}/auth/envoy{path}",
        headers={"Host": host, **headers},
        timeout=15.0,
    )


def readyz(replica: ExtAuthz) -> httpx.Response:
    assert replica.http_url is not None
    return httpx.get(replica.http_url + "/readyz", timeout=15.0)


@pytest.fixture(scope="module")
def world(workdir: Path, echo_server: EchoServer) -> Iterator[World]:
    root = workdir / "outpost"
    port = free_port()
    hosts = {slug: f"http://{slug}.localhost:{port}" for slug in (*SLUGS, "new")}
    hosts["fd"] = f"http://auth.fd.localhost:{port}"
    idp = IdP(
        clients=[
            proxy_provider_client(
                f"{slug}-client", client_secret(slug), [host], post_logout_redirect_uris=[host]
            )
            for slug, host in hosts.items()
        ],
        users=idp_users(),
        groups=GROUPS,
        workdir=root,
        name="outpost-idp",
    ).start()
    redis = RedisServer(root, name="outpost-redis").start()
    authentik = TestAuthentik(TOKEN).start()
    oidc = oidc_configuration(fetch_discovery(idp.issuer))
    replicas: list[ExtAuthz] = []
    envoy: Envoy | None = None
    try:
        probe = World(port, authentik, idp, redis, None, [], root, oidc)  # type: ignore[arg-type]
        authentik.set_providers(probe.providers())
        replicas = [probe.replica("outpost-a"), probe.replica("outpost-b")]
        for replica in replicas:
            replica.start()
        envoy = Envoy(
            listen_port=port,
            ext_authz_ports=[r.port for r in replicas],
            echo_port=echo_server.port,
            workdir=root,
            name="outpost-envoy",
        )
        envoy.start()
        world = World(port, authentik, idp, redis, envoy, replicas, root, oidc)
        for replica in replicas:
            wait_until(
                lambda r=replica: readyz(r).status_code == 200,  # type: ignore[misc]
                DEADLINE,
                f"{replica.name} ready with authentik's providers",
                replica.process,
            )
        yield world
    finally:
        if envoy is not None:
            envoy.stop()
        for replica in replicas:
            replica.stop()
        authentik.stop()
        redis.stop()
        idp.stop()


@pytest.fixture(autouse=True)
def _providers_as_shipped(world: World) -> Iterator[None]:
    """Each test starts from the providers of the module's docstring, refreshed on both
    replicas (a test that changes them puts them back)."""
    yield
    if world.authentik.providers != world.providers():
        world.authentik.up()
        world.authentik.refuse_token(False)
        world.authentik.set_providers(world.providers())
        world.authentik.trigger_update()
        for replica in world.replicas:
            wait_until(
                lambda r=replica: ask(r, "open.localhost").status_code in (302, 401),  # type: ignore[misc]
                DEADLINE,
                "the providers back as shipped",
                replica.process,
            )


def upstream(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 200, (response.status_code, response.text[:300])
    data = json.loads(response.text)
    headers = data["headers"]
    assert isinstance(headers, dict)
    return headers


def expected_basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@contextmanager
def sign_in(world: World, user: DemoUser, host: str, path: str = "/page") -> Iterator[httpx.Client]:
    """A browser signed in at `host` through the IdP's forms; its cookie jar holds the
    session."""
    browser = world.browser()
    try:
        first = browser.get(world.url(host, path), headers=HTML)
        assert first.status_code == 302, (first.status_code, first.text[:300])
        authorize = first.headers["location"]
        assert authorize.startswith(world.idp.issuer), authorize
        callback = idp_forms(browser, authorize, world.idp.issuer, user)
        assert "X-authentik-auth-callback=true" in callback  # authentik's strict redirect URI
        final = browser.get(callback, headers=HTML)
        assert final.status_code == 302, (final.status_code, final.text[:300])
        yield browser
    finally:
        browser.close()


# --- every provider's settings, from the two variables alone -----------------------------


def test_upstream_basic_from_the_two_attribute_keys_with_the_email_fallback(world: World) -> None:
    alice = upstream(
        world.get("fs.localhost", Authorization=basic(ALICE.username, ALICE.app_password))
    )
    # Alice: app_username from her group admins, app_password her own attribute.
    assert alice["authorization"] == [expected_basic("admin", "s3cret")]
    assert alice["x-authentik-username"] == ["alice"]
    bob = upstream(world.get("fs.localhost", Authorization=basic(BOB.username, BOB.app_password)))
    # Bob has neither attribute: the email and an empty password, as authentik sends.
    assert bob["authorization"] == [expected_basic("bob@example.com", "")]
    # Basic auth off on px: the client's Authorization goes nowhere, none is sent.
    px = upstream(
        world.get("px.localhost", Authorization=basic(ALICE.username, ALICE.app_password))
    )
    assert "authorization" not in px and px["x-authentik-username"] == ["alice"]


def test_intercept_header_authentication_on_and_off(world: World) -> None:
    wrong = basic(ALICE.username, "not-her-password")
    assert world.get("fs.localhost", Authorization=wrong).status_code == 401
    # Intercept off: an invalid Authorization is not ours to judge; the browser signs in.
    answer = world.get("open.localhost", Authorization=wrong, Accept="text/html")
    assert answer.status_code == 302
    assert answer.headers["location"].startswith(world.idp.issuer)


def test_newline_separated_skip_paths_and_the_whole_url_in_domain_mode(world: World) -> None:
    assert world.get("px.localhost", "/public/logo.png").status_code == 200
    assert world.get("px.localhost", "/private").status_code == 302  # to sign in
    # forward_domain: the regex sees scheme://host/path, so a whole host is open.
    assert world.get("open.fd.localhost", "/anything").status_code == 200
    assert world.get("closed.fd.localhost", "/anything").status_code == 302


def test_a_browser_signs_in_with_authentiks_redirect_uri_and_hs256(world: World) -> None:
    with sign_in(world, ALICE, "fs.localhost") as browser:
        cookie = next(c for c in browser.cookies.jar if c.name.startswith("authentik_proxy_"))
        # The provider's token validity (600 s) is the session's lifetime.
        assert cookie.expires is not None and 0 < cookie.expires - time.time() <= 600
        page = browser.get(world.url("fs.localhost", "/page"), headers=HTML)
        assert page.status_code == 200, page.text[:300]
        assert "x-authentik-username" in page.text


def test_forward_domain_serves_every_host_of_its_cookie_domain(world: World) -> None:
    with sign_in(world, BOB, "app.fd.localhost", "/start-here") as browser:
        cookie = next(c for c in browser.cookies.jar if c.name.startswith("authentik_proxy_"))
        assert cookie.domain.lstrip(".") == "fd.localhost"
        for host in ("app.fd.localhost", "other.fd.localhost"):
            seen = upstream(
                browser.get(world.url(host, "/x"), headers={"Accept": "application/json"})
            )
            assert seen["x-authentik-username"] == ["bob"]


# --- live changes ------------------------------------------------------------------------


def test_provider_changes_reach_every_replica_with_no_check_failing(world: World) -> None:
    alice_basic = basic(ALICE.username, ALICE.app_password)
    with sign_in(world, ALICE, "fs.localhost") as browser:
        failures: list[int] = []
        stop = threading.Event()

        def keep_asking() -> None:
            # A signed-in user of an unchanged provider, throughout the refreshes.
            while not stop.is_set():
                status = browser.get(world.url("fs.localhost", "/busy"), headers=HTML).status_code
                if status != 200:
                    failures.append(status)

        load = threading.Thread(target=keep_asking)
        load.start()
        try:
            world.authentik.set_providers(
                world.providers(
                    px={"skip_path_regex": "^/public/\n^/added/"},
                    open={"remove": True},
                    new={},
                    fd={
                        "basic_auth_enabled": True,
                        "basic_auth_password_attribute": "app_password",
                    },
                )
            )
            assert world.authentik.trigger_update() >= 2
            for replica in world.replicas:
                changed: Callable[[], bool] = lambda r=replica: (  # noqa: E731
                    ask(r, "px.localhost", "/added/x").status_code == 200
                    and ask(r, "open.localhost").status_code == 403
                    and ask(r, "new.localhost").status_code == 302
                )
                wait_until(changed, DEADLINE, f"{replica.name} refreshed", replica.process)
                # Envoy's http_service dialect: the upstream's headers come as headers.
                sent = ask(replica, "app.fd.localhost", "/", Authorization=alice_basic)
                assert sent.status_code == 200, sent.text
                assert sent.headers["authorization"] == expected_basic(
                    "alice@example.com", "s3cret"
                )
        finally:
            stop.set()
            load.join(30)
        assert failures == []
        # The session of the unchanged provider survived on both replicas.
        cookie = browser.cookies
        for replica in world.replicas:
            header = "; ".join(f"{c.name}={c.value}" for c in cookie.jar)
            assert ask(replica, "fs.localhost", "/after", Cookie=header).status_code == 200
        removed = world.get("open.localhost")
        assert removed.status_code == 403 and "unknown host" in removed.text


def test_session_end_for_a_sid_ends_the_users_sessions_on_both_replicas(world: World) -> None:
    with sign_in(world, ALICE, "fs.localhost") as browser:
        header = "; ".join(f"{c.name}={c.value}" for c in browser.cookies.jar)
        for replica in world.replicas:
            assert ask(replica, "fs.localhost", "/", Cookie=header).status_code == 200
        sids = world.idp.sids(ALICE.username)
        assert sids, "the IdP told no sid for alice"
        for sid in sids:
            world.authentik.end_session(sid)
        for replica in world.replicas:
            wait_until(
                lambda r=replica: (
                    ask(r, "fs.localhost", "/", Cookie=header, Accept="text/html").status_code
                    == 302
                ),
                DEADLINE,
                f"{replica.name} ended alice's session",
                replica.process,
            )


def test_authentik_sees_hello_from_each_instance_every_ten_seconds(world: World) -> None:
    def two_each() -> bool:
        instances = world.authentik.instances()
        return len(instances) >= 2 and all(len(world.authentik.hellos(i)) >= 2 for i in instances)

    wait_until(two_each, DEADLINE, "two HELLOs from each instance")
    for instance in world.authentik.instances():
        hellos = world.authentik.hellos(instance)
        assert {h.args["uuid"] for h in hellos} == {instance}
        assert all(h.args["version"] and "hostname" in h.args for h in hellos)
        gaps = [b.at - a.at for a, b in itertools.pairwise(hellos)]
        # Every 10 s: never sooner (a lower bound only; a busy machine may be later).
        assert all(gap >= 9.5 for gap in gaps), gaps


# --- faults --------------------------------------------------------------------------------


def test_a_replica_started_while_authentik_is_down_serves_the_stored_table(world: World) -> None:
    world.authentik.down()
    late = world.replica("outpost-late")
    try:
        late.start()
        wait_until(lambda: readyz(late).status_code == 200, DEADLINE, "ready", late.process)
        answer = ask(late, "fs.localhost", Authorization=basic(ALICE.username, ALICE.app_password))
        assert answer.status_code == 200
        assert "authentik unreachable: serving the stored applications" in late.logs()
    finally:
        late.stop()
        world.authentik.up()


def test_one_with_nothing_stored_is_not_ready_and_recovers_without_a_restart(world: World) -> None:
    world.authentik.down()
    empty = world.replica("outpost-empty", store_url="memory://")
    try:
        empty.start()
        first = readyz(empty)
        assert first.status_code == 503 and "authentik" in first.text
        assert ask(empty, "fs.localhost").status_code == 403  # no application yet
        world.authentik.up()
        wait_until(lambda: readyz(empty).status_code == 200, DEADLINE, "recovered", empty.process)
        assert ask(empty, "fs.localhost").status_code == 302
    finally:
        empty.stop()
        world.authentik.up()


def test_a_refused_token_keeps_the_current_table(world: World) -> None:
    world.authentik.refuse_token(True)
    try:
        world.authentik.trigger_update()
        replica = world.replicas[0]
        wait_until(
            lambda: "authentik refused: keeping the current applications" in replica.logs(),
            DEADLINE,
            "the refusal logged",
            replica.process,
        )
        assert ask(replica, "fs.localhost").status_code == 302
        assert replica.http_url is not None
        metrics = httpx.get(replica.http_url + "/metrics", timeout=15).text
        assert 'ext_authz_table_refreshes_total{outcome="refused"}' in metrics
        assert 'ext_authz_applications{source="authentik"} 4.0' in metrics
    finally:
        world.authentik.refuse_token(False)
