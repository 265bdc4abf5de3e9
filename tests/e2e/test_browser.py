"""A real browser: headless Debian Chromium, driven by Playwright, through Envoy.

Open a protected page, get sent to the IdP, fill its login form, come back signed in,
see the echo app's page with the identity headers, sign out, and be sent to the IdP
again. Hosts are under `.localhost`, which Chromium resolves to loopback itself, so
cookies behave as in life.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.stack.demo import ALICE, SHARED_DOMAIN, Stack, shared_domain_url

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not shutil.which("chromium"):
        pytest.fail("Debian chromium is not installed: run `make apt` (as root)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
                # app.example.test / other.example.test: one sign-in across subdomains.
                f"--host-resolver-rules=MAP *{SHARED_DOMAIN} 127.0.0.1",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def test_sign_in_and_sign_out_in_chromium(stack: Stack, browser: Any) -> None:
    assert stack.idp is not None
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(stack.url("app", "/protected/page"), wait_until="load")
        assert page.url.startswith(stack.idp.issuer), page.url
        page.fill("input[name=login]", ALICE.username)
        page.fill("input[name=password]", ALICE.idp_password)
        page.click("button[type=submit]")
        page.wait_for_load_state("load")
        if page.url.startswith(stack.idp.issuer):  # the consent form
            page.click("button[type=submit]")
        page.wait_for_url(
            stack.url("app", "/protected/page"), timeout=30_000
        )  # bounds a failure only

        seen = json.loads(page.inner_text("pre"))
        headers = seen["headers"]
        assert headers["x-authentik-username"] == ["alice"]
        assert headers["x-authentik-email"] == [ALICE.email]
        assert "authorization" not in headers

        cookies = {c["name"]: c for c in context.cookies()}
        session = [
            c
            for name, c in cookies.items()
            if name.startswith("authentik_proxy_") and not name.endswith("_login")
        ]
        assert len(session) == 1
        cookie = session[0]
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Lax"
        assert cookie["path"] == "/"
        assert cookie["secure"] is False  # http://app.localhost
        assert cookie["domain"] == "app.localhost"

        page.goto(stack.url("app", "/outpost.goauthentik.io/sign_out"), wait_until="load")
        # The IdP's logout page submits itself; we end up back at the application,
        # which sends us to the IdP's login form again.
        page.wait_for_selector("input[name=login]", timeout=30_000)  # bounds a failure only
        assert page.url.startswith(stack.idp.issuer)
        names = {c["name"] for c in context.cookies() if c["domain"] == "app.localhost"}
        assert cookie["name"] not in names
    finally:
        context.close()


def _on_shared_domain(config: dict[str, Any]) -> dict[str, Any]:
    """Serve application `app` as app.example.test and other.example.test, with the
    session cookie on .example.test (authentik's cookie domain)."""
    apps = []
    for app in config["applications"]:
        if app["name"] == "app":
            port = urlsplit(app["external_host"]).port
            assert port is not None
            app = {
                **app,
                "external_host": shared_domain_url(port),
                "hosts": ["other" + SHARED_DOMAIN],
                "cookie_domain": SHARED_DOMAIN,
            }
        apps.append(app)
    return {**config, "applications": apps}


def test_one_sign_in_across_subdomains(make_stack: Any, browser: Any) -> None:
    stack: Stack = make_stack(config_overrides=_on_shared_domain)
    assert stack.idp is not None
    context = browser.new_context()
    page = context.new_page()
    try:
        first = shared_domain_url(stack.port) + "/first"
        page.goto(first, wait_until="load")
        assert page.url.startswith(stack.idp.issuer), page.url
        page.fill("input[name=login]", ALICE.username)
        page.fill("input[name=password]", ALICE.idp_password)
        page.click("button[type=submit]")
        page.wait_for_load_state("load")
        if page.url.startswith(stack.idp.issuer):
            page.click("button[type=submit]")
        page.wait_for_url(first, timeout=30_000)  # bounds a failure only
        session = [
            c
            for c in context.cookies()
            if c["name"].startswith("authentik_proxy_") and not c["name"].endswith("_login")
        ]
        assert len(session) == 1 and session[0]["domain"] == SHARED_DOMAIN

        # The other subdomain: signed in already, no trip to the IdP.
        other = shared_domain_url(stack.port, host="other") + "/second"
        page.goto(other, wait_until="load")
        assert page.url == other
        headers = json.loads(page.inner_text("pre"))["headers"]
        assert headers["x-authentik-username"] == ["alice"]
        assert headers["host"][0].startswith("other" + SHARED_DOMAIN)
    finally:
        context.close()
