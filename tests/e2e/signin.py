"""Driving the browser sign-in with httpx, as a browser would: through Envoy to the
IdP's login and consent forms and back to the callback. Shared by the sign-in tests."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from tests.stack.demo import DemoUser, Stack

HTML = {"Accept": "text/html"}


@dataclass
class SignIn:
    client: httpx.Client
    authorize_url: str
    callback_url: str
    final: httpx.Response  # the callback's answer (302 to the return URL)


def authorize_params(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def to_callback(
    stack: Stack,
    user: DemoUser,
    path: str = "/page",
    client: httpx.Client | None = None,
) -> tuple[httpx.Client, str, str]:
    """Open a protected page and sign in at the IdP, stopping *before* the callback:
    (the browser, the authorize URL, the callback URL the IdP sent it to).

    Redirects on the application's own site come first when the front sends the
    browser to /outpost.goauthentik.io/start itself (nginx's error_page)."""
    assert stack.idp is not None
    browser = client or stack.client()
    first = browser.get(stack.url("app", path), headers=HTML)
    for _ in range(3):
        assert first.status_code == 302, (first.status_code, first.text)
        if first.headers["location"].startswith(stack.idp.issuer):
            break
        first = browser.get(urljoin(str(first.url), first.headers["location"]), headers=HTML)
    authorize = first.headers["location"]
    assert authorize.startswith(stack.idp.issuer)
    return browser, authorize, idp_forms(browser, authorize, stack.idp.issuer, user)


def idp_forms(browser: httpx.Client, authorize: str, issuer: str, user: DemoUser) -> str:
    """Fill the IdP's login and consent forms from `authorize` on, as a browser would;
    return the URL the IdP sends the browser back to (the callback, not yet opened)."""
    url = authorize
    for _ in range(20):
        if not url.startswith(issuer):
            return url
        page = browser.get(url)
        if page.status_code in (302, 303):
            url = urljoin(url, page.headers["location"])
            continue
        assert page.status_code == 200, (page.status_code, page.text[:300])
        if 'name="login"' in page.text:
            answer = browser.post(
                url, data={"prompt": "login", "login": user.username, "password": user.idp_password}
            )
        else:
            answer = browser.post(url, data={"prompt": "consent"})
        assert answer.status_code in (302, 303), (answer.status_code, answer.text[:300])
        url = urljoin(url, answer.headers["location"])
    raise AssertionError("the IdP never sent the browser back")


def sign_in(
    stack: Stack,
    user: DemoUser,
    path: str = "/page",
    client: httpx.Client | None = None,
) -> SignIn:
    """Open a protected page, sign in at the IdP, and stop at the callback's answer."""
    browser, authorize, callback = to_callback(stack, user, path, client)
    final = browser.get(callback, headers=HTML)
    return SignIn(client=browser, authorize_url=authorize, callback_url=callback, final=final)
