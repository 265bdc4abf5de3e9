"""The outpost's API client and websocket (adapters/authentik.py) against the test
authentik (tests/stack/authentik.py), whose answers are authentik-client's models.

The OAuth endpoints named by the providers here are never called: these tests stop at
the application settings and the websocket's messages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from ext_authz.adapters.authentik import (
    HELLO_INTERVAL,
    AuthentikClient,
    OutpostLink,
    ProxyProvider,
    application_settings,
    version,
)
from ext_authz.config import AuthentikSettings, validate_application
from ext_authz.errors import AuthentikRefused, AuthentikUnavailable
from tests.stack.authentik import TestAuthentik, oidc_configuration, proxy_provider

pytestmark = pytest.mark.integration

TOKEN = "outpost-token-for-tests-0123456789"
DEADLINE = 20.0
DISCOVERY = {
    "issuer": "http://idp.example.test/",
    "authorization_endpoint": "http://idp.example.test/auth",
    "token_endpoint": "http://idp.example.test/token",
    "userinfo_endpoint": "http://idp.example.test/me",
    "end_session_endpoint": "http://idp.example.test/session/end",
    "introspection_endpoint": "http://idp.example.test/token/introspection",
    "jwks_uri": "http://idp.example.test/jwks",
}


def provider(pk: int, slug: str, **fields: Any) -> Any:
    return proxy_provider(
        pk,
        slug,
        f"https://{slug}.example.com",
        client_id=f"client-{slug}",
        client_secret=f"secret-{slug}-0123456789",
        oidc=oidc_configuration(DISCOVERY),
        **fields,
    )


@pytest.fixture(scope="module")
def authentik() -> Iterator[TestAuthentik]:
    with TestAuthentik(TOKEN, refresh_interval_s=45, path="/ak/") as server:
        yield server


def settings(authentik: TestAuthentik, token: str = TOKEN, **extra: Any) -> AuthentikSettings:
    return AuthentikSettings(host=authentik.url, token=SecretStr(token), **extra)


def test_providers_of_every_page_become_application_settings(authentik: TestAuthentik) -> None:
    authentik.set_providers([provider(i, f"app-{i:03d}") for i in range(1, 251)])
    authentik.refuse_token(False)

    async def scenario() -> Any:
        client = AuthentikClient(settings(authentik))
        try:
            return await client.fetch(), client.outpost_info
        finally:
            await client.close()

    fetched, info = asyncio.run(scenario())
    assert info is not None and info.pk == authentik.outpost_pk
    assert fetched.refresh_interval == 45
    assert [p["name"] for p in fetched.providers] == [f"app-{i:03d}" for i in range(1, 251)]
    assert authentik.requests("/api/v3/outposts/proxy/") >= 3  # 100 + 100 + 50
    for mapping in fetched.providers[:3]:
        app = validate_application(mapping, "provider")
        assert app.oidc is not None and app.oidc.endpoints is not None
        assert app.oidc.endpoints.id_token_signing_alg_values_supported == ("HS256",)


def test_a_refused_token_and_an_unreachable_authentik_are_told_apart(
    authentik: TestAuthentik,
) -> None:
    async def fetch(token: str) -> None:
        client = AuthentikClient(settings(authentik, token))
        try:
            await client.fetch()
        finally:
            await client.close()

    with pytest.raises(AuthentikRefused):
        asyncio.run(fetch("wrong-token"))
    authentik.refuse_token(True)
    try:
        with pytest.raises(AuthentikRefused):
            asyncio.run(fetch(TOKEN))
    finally:
        authentik.refuse_token(False)
    authentik.down()
    try:
        with pytest.raises(AuthentikUnavailable):
            asyncio.run(fetch(TOKEN))
    finally:
        authentik.up()
    asyncio.run(fetch(TOKEN))


def test_every_field_of_the_provider_is_mapped() -> None:
    raw = provider(
        7,
        "grafana",
        mode="forward_domain",
        cookie_domain="example.com",
        skip_path_regex="^/public/\n\n[unclosed\n^/health$",
        basic_auth_enabled=True,
        basic_auth_user_attribute="grafana_user",
        basic_auth_password_attribute="grafana_password",
        intercept_header_auth=False,
        access_token_validity=600,
        scopes_to_request=["openid", "email", "ak_proxy"],
    ).model_dump(mode="json", by_alias=True)
    mapping, notes = application_settings(ProxyProvider.parse(raw))
    assert notes == [
        "authentik provider grafana.skip_path_regex line 3: invalid (unterminated character "
        "set at position 0); ignored"
    ]
    app = validate_application(mapping, "provider")
    assert (app.name, app.external_host, app.mode, app.cookie_domain) == (
        "grafana",
        "https://grafana.example.com",
        "forward_domain",
        "example.com",
    )
    assert app.skip_path_regex == ("^/public/", "^/health$")
    assert app.intercept_header_auth is False and app.session_lifetime == 600
    assert app.send.basic.enabled
    assert (app.send.basic.username_attribute, app.send.basic.password_attribute) == (
        "grafana_user",
        "grafana_password",
    )
    assert app.receive.basic.verify == "authentik" and app.receive.bearer.verify == "auto"
    assert app.oidc is not None and app.oidc.client_id == "client-grafana"
    assert app.oidc.scopes == ("openid", "email", "ak_proxy")
    assert app.oidc.issuer == DISCOVERY["issuer"] and app.oidc.backchannel_host == ""


def test_host_browser_rewrites_what_browsers_see_and_the_back_channels_host() -> None:
    raw = provider(1, "app").model_dump(mode="json", by_alias=True)
    raw["oidc_configuration"]["issuer"] = "http://authentik:9000/application/o/app/"
    raw["oidc_configuration"]["authorization_endpoint"] = (
        "http://authentik:9000/application/o/authorize/"
    )
    mapping, _ = application_settings(ProxyProvider.parse(raw), "https://login.example.com/")
    app = validate_application(mapping, "provider")
    assert app.oidc is not None and app.oidc.endpoints is not None
    assert app.oidc.endpoints.authorization_endpoint == (
        "https://login.example.com/application/o/authorize/"
    )
    assert app.oidc.endpoints.end_session_endpoint.startswith("https://login.example.com/")
    assert app.oidc.endpoints.token_endpoint == DISCOVERY["token_endpoint"]  # back channel
    assert app.oidc.issuer == "https://login.example.com/application/o/app/"
    assert app.oidc.backchannel_host == "login.example.com"


def test_proxy_mode_says_its_internal_host_is_not_used() -> None:
    raw = provider(1, "app", mode="proxy", internal_host="http://upstream:8080").model_dump(
        mode="json", by_alias=True
    )
    _, notes = application_settings(ProxyProvider.parse(raw))
    assert notes == [
        "authentik provider app.internal_host: not used (the proxy in front routes to the upstream)"
    ]


def test_the_websocket_says_hello_and_follows_authentiks_instructions(
    authentik: TestAuthentik,
) -> None:
    """HELLO at connect and every interval (a short interval injected here; 10 s in the
    product), TRIGGER_UPDATE after the injected spread, SESSION_END with its id."""
    updates: list[float] = []
    ended: list[str] = []
    delays: list[float] = []
    got = asyncio.Event()

    async def scenario() -> None:
        async def on_update() -> None:
            updates.append(1)
            got.set()

        async def on_session_end(sid: str) -> None:
            ended.append(sid)
            got.set()

        real_sleep = asyncio.sleep

        async def sleep(seconds: float) -> None:
            delays.append(seconds)
            await real_sleep(min(seconds, 0.2))

        client = AuthentikClient(settings(authentik))
        link = OutpostLink(
            settings(authentik),
            lambda: _pk(client),
            on_update=on_update,
            on_session_end=on_session_end,
            instance_uuid="instance-one",
            rand=lambda: 0.5,
            sleep=sleep,
        )
        task = asyncio.ensure_future(link.run())
        try:
            await _until(lambda: len(authentik.hellos("instance-one")) >= 2)
            assert link.state == "connected"
            assert authentik.trigger_update() == 1
            await asyncio.wait_for(got.wait(), DEADLINE)
            got.clear()
            assert authentik.end_session("sid-123") == 1
            await asyncio.wait_for(got.wait(), DEADLINE)
        finally:
            task.cancel()
            await link.close()
            await client.close()

    asyncio.run(scenario())
    hello = authentik.hellos("instance-one")[0].args
    assert hello["version"] == version() and hello["uuid"] == "instance-one"
    assert set(hello) == {"version", "buildHash", "uuid", "hostname"}
    assert HELLO_INTERVAL in delays  # the HELLO loop's own interval
    assert 4.5 in delays  # TRIGGER_UPDATE: rand() x 9 s
    assert updates == [1] and ended == ["sid-123"]


def test_the_websocket_reconnects_with_back_off(authentik: TestAuthentik) -> None:
    delays: list[float] = []

    async def scenario() -> None:
        async def nothing(*args: Any) -> None:
            return None

        real_sleep = asyncio.sleep

        async def sleep(seconds: float) -> None:
            delays.append(seconds)
            await real_sleep(0.01)

        link = OutpostLink(
            settings(authentik, "wrong-token"),
            lambda: _constant(authentik.outpost_pk),
            on_update=nothing,
            on_session_end=nothing,
            instance_uuid="refused",
            sleep=sleep,
        )
        task = asyncio.ensure_future(link.run())
        try:
            await _until(lambda: len(delays) >= 11)
        finally:
            task.cancel()
            await link.close()
        assert link.state == "down"

    asyncio.run(scenario())
    assert delays[:11] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert authentik.hellos("refused") == []


async def _pk(client: AuthentikClient) -> str:
    return (await client.outpost()).pk


async def _constant(value: str) -> str:
    return value


async def _until(condition: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)
