"""Browser sign-in, pure parts (SPEC §6): return URLs, PKCE, authorize and end-session URLs."""

from __future__ import annotations

import json
import string
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from ext_authz.core.login import (
    MAX_RETURN_URL,
    authorize_url,
    code_challenge,
    end_session_url,
    safe_return_url,
    start_return_url,
)
from tests.unit.conftest import make_app

APP = make_app(
    external_host="https://app.example.com", cookie_domain=".example.com", hosts=["alias.test"]
)
PLAIN = make_app(external_host="https://app.example.com")
FALLBACK = "https://app.example.com/"


@pytest.mark.parametrize(
    "candidate",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("https://evil.com/", id="other-host"),
        pytest.param("http://evil.com", id="other-host-http"),
        pytest.param("//evil.com", id="protocol-relative"),
        pytest.param("//evil.com/path", id="protocol-relative-path"),
        pytest.param("///evil.com", id="triple-slash"),
        pytest.param("////evil.com", id="quad-slash"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("JavaScript:alert(1)//https://app.example.com/", id="javascript-case"),
        pytest.param("javascript://app.example.com/%0aalert(1)", id="javascript-with-host"),
        pytest.param("data:text/html,<script>alert(1)</script>", id="data"),
        pytest.param("vbscript:msgbox(1)", id="vbscript"),
        pytest.param("ftp://app.example.com/", id="ftp-own-host"),
        pytest.param("file:///etc/passwd", id="file"),
        pytest.param("/\\evil.com", id="slash-backslash"),
        pytest.param("\\\\evil.com", id="double-backslash"),
        pytest.param("https:\\\\evil.com", id="scheme-backslashes"),
        pytest.param("https://app.example.com\\@evil.com/", id="backslash-userinfo"),
        pytest.param("https://app.example.com@evil.com/", id="userinfo-own-host-as-user"),
        pytest.param("https://evil.com@app.example.com/", id="userinfo-on-own-host"),
        pytest.param("https://user:pw@app.example.com/", id="userinfo-with-password"),
        pytest.param("https://@app.example.com/", id="empty-userinfo"),
        pytest.param("%2F%2Fevil.com", id="encoded-protocol-relative"),
        pytest.param("https://evil.com%2F@app.example.com/", id="encoded-slash-userinfo"),
        pytest.param("https://app.example.com%2eevil.com/", id="encoded-dot"),
        pytest.param("https://app.example.com%00.evil.com/", id="encoded-nul"),
        pytest.param("https://evil-example.com/", id="not-on-dot-boundary"),
        pytest.param("https://xexample.com/", id="suffix-without-dot"),
        pytest.param("https://example.com.evil.com/", id="cookie-domain-as-prefix"),
        pytest.param("https://app.example.com.evil.com/", id="own-host-as-prefix"),
        pytest.param("https://app.example.com\t.evil.com/", id="tab-in-host"),
        pytest.param("https://app.exa\nmple.com/", id="newline-in-host"),
        pytest.param("/path\r\nSet-Cookie: x=1", id="crlf-in-path"),
        pytest.param("/pa th", id="space-in-path"),
        pytest.param(" https://app.example.com/", id="leading-space"),
        pytest.param("https://app.example.com/\x00", id="nul"),
        pytest.param("https://app.example.com:8443/", id="wrong-port-own-host"),
        pytest.param("http://app.example.com/", id="downgrade-to-http"),
        pytest.param("https://app.example.com:abc/", id="bad-port"),
        pytest.param("https://app.example.com:99999/", id="port-out-of-range"),
        pytest.param("https:/evil.com", id="one-slash"),
        pytest.param("https:evil.com", id="no-slashes"),
        pytest.param("https://", id="no-host"),
        pytest.param("evil.com", id="bare-host"),
        pytest.param("app.example.com/x", id="bare-own-host"),
        pytest.param("x/y", id="relative-without-slash"),
        pytest.param("https://app.example.com\u3002evil.com/", id="ideographic-dot"),
        pytest.param("https://[::1]/", id="ipv6-literal"),
    ],
)
def test_safe_return_url_falls_back_to_external_host(candidate: str | None) -> None:
    assert safe_return_url(candidate, APP) == FALLBACK


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        pytest.param("https://app.example.com/", None, id="own-host-root"),
        pytest.param("https://app.example.com/x?y=1#frag", None, id="own-host-absolute"),
        pytest.param("https://app.example.com:443/x", None, id="own-host-explicit-port"),
        pytest.param("HTTPS://APP.Example.com/x", None, id="own-host-case"),
        pytest.param("/x?y=1", "https://app.example.com/x?y=1", id="relative-path"),
        pytest.param("/", "https://app.example.com/", id="relative-root"),
        pytest.param("/@evil.com", "https://app.example.com/@evil.com", id="relative-at"),
        pytest.param(
            "/%2F%2Fevil.com",
            "https://app.example.com/%2F%2Fevil.com",
            id="relative-encoded-slashes-stays-on-host",
        ),
        pytest.param("https://other.example.com/page", None, id="subdomain-in-cookie-domain"),
        pytest.param("https://a.b.example.com/", None, id="deep-subdomain"),
        pytest.param("https://example.com/", None, id="bare-cookie-domain"),
        pytest.param("http://other.example.com/", None, id="subdomain-http"),
        pytest.param("https://alias.test/x", None, id="extra-host"),
    ],
)
def test_safe_return_url_accepts(candidate: str, expected: str | None) -> None:
    assert safe_return_url(candidate, APP) == (expected if expected is not None else candidate)


@pytest.mark.parametrize(
    "candidate",
    [
        pytest.param("https://other.example.com/", id="subdomain"),
        pytest.param("https://example.com/", id="parent"),
        pytest.param("https://\u0430pp.example.com/", id="cyrillic-a-homograph"),
    ],
)
def test_without_cookie_domain_only_the_own_host_is_accepted(candidate: str) -> None:
    assert safe_return_url(candidate, PLAIN) == FALLBACK
    assert safe_return_url("https://app.example.com/ok", PLAIN) == "https://app.example.com/ok"


def test_fallback_keeps_a_non_default_port() -> None:
    app = make_app(external_host="http://app.localhost:8080")
    assert safe_return_url("https://evil.com/", app) == "http://app.localhost:8080/"
    assert safe_return_url("http://app.localhost:8080/x", app) == "http://app.localhost:8080/x"
    assert safe_return_url("http://app.localhost/x", app) == "http://app.localhost:8080/"
    assert safe_return_url("/x", app) == "http://app.localhost:8080/x"


def _url_of_length(prefix: str, length: int, fill: str = "a") -> str:
    url = prefix + fill * ((length - len(prefix.encode())) // len(fill.encode()))
    assert len(url.encode()) == length
    return url


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("https://app.example.com/p?q=", id="absolute"),
        pytest.param("https://other.example.com/p?q=", id="cookie-domain-host"),
    ],
)
def test_a_return_url_over_2_kib_falls_back(prefix: str) -> None:
    """SPEC §6: a return URL longer than 2 KiB is replaced by external_host, so it is
    never stored whole in a login state."""
    assert MAX_RETURN_URL == 2048
    longest = _url_of_length(prefix, MAX_RETURN_URL)
    assert safe_return_url(longest, APP) == longest
    assert safe_return_url(longest + "a", APP) == FALLBACK
    assert safe_return_url(prefix + "a" * 50_000, APP) == FALLBACK


def test_the_2_kib_bound_counts_the_stored_url_percent_encoded() -> None:
    # A path-only candidate becomes external_host + path: that is what is measured.
    base = "https://app.example.com"
    path = "/p?q=" + "a" * (MAX_RETURN_URL - len(base) - len("/p?q="))
    assert safe_return_url(path, APP) == base + path
    assert safe_return_url(path + "a", APP) == FALLBACK
    # A non-ASCII character counts as its percent-encoded UTF-8 (`%C3%A9`, 6 bytes):
    # its JSON escape in the login state (`\\u00e9`) is no longer, so the record stays
    # small whatever the characters.
    prefix = "https://app.example.com/p?q="
    wide = (
        prefix
        + "\u00e9" * ((MAX_RETURN_URL - len(prefix)) // 6)
        + "a" * ((MAX_RETURN_URL - len(prefix)) % 6)
    )
    assert len(quote(wide, safe=string.printable)) == MAX_RETURN_URL
    assert safe_return_url(wide, APP) == wide
    assert safe_return_url(wide + "a", APP) == FALLBACK
    quotes = prefix + '"' * ((MAX_RETURN_URL - len(prefix)) // 3 + 1)
    assert safe_return_url(quotes, APP) == FALLBACK
    for url in (wide, base + path):
        stored = json.dumps({"return_to": url})
        assert len(stored) <= MAX_RETURN_URL + len('{"return_to": ""}')


# --- PKCE and the authorize URL --------------------------------------------------------

RFC7636_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
# RFC 7636 appendix B prints "...URWbuGJSstw-cM" (G before J).
RFC7636_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_code_challenge_rfc7636_appendix_b() -> None:
    assert code_challenge(RFC7636_VERIFIER) == RFC7636_CHALLENGE


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def test_authorize_url_parameters() -> None:
    url = authorize_url(
        "https://idp.example.com/authorize",
        client_id="app-client",
        redirect_uri="https://app.example.com/outpost.goauthentik.io/callback",
        scopes=["openid", "profile", "email", "ak_proxy"],
        state="st&ate=1",
        nonce="n0nce",
        verifier=RFC7636_VERIFIER,
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://idp.example.com/authorize"
    assert _query(url) == {
        "response_type": ["code"],
        "client_id": ["app-client"],
        "redirect_uri": ["https://app.example.com/outpost.goauthentik.io/callback"],
        "scope": ["openid profile email ak_proxy"],
        "state": ["st&ate=1"],
        "nonce": ["n0nce"],
        "code_challenge": [RFC7636_CHALLENGE],
        "code_challenge_method": ["S256"],
    }
    assert RFC7636_VERIFIER not in url  # only the challenge leaves


def test_authorize_url_keeps_an_existing_query() -> None:
    url = authorize_url(
        "https://idp.example.com/auth?tenant=t1",
        client_id="c",
        redirect_uri="https://a/cb",
        scopes=["openid"],
        state="s",
        nonce="n",
        verifier=RFC7636_VERIFIER,
    )
    assert url.startswith("https://idp.example.com/auth?tenant=t1&")
    assert _query(url)["tenant"] == ["t1"]
    assert _query(url)["response_type"] == ["code"]


# --- sign-out ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "id_token", "post_logout", "expected_base", "expected_query"),
    [
        pytest.param(
            None,
            "tok",
            "https://app.example.com",
            "https://app.example.com/",
            {},
            id="no-endpoint-fallback",
        ),
        pytest.param("", "tok", None, "https://app.example.com/", {}, id="empty-endpoint"),
        pytest.param(
            "https://idp/end",
            "tok",
            "https://app.example.com",
            "https://idp/end",
            {"id_token_hint": ["tok"], "post_logout_redirect_uri": ["https://app.example.com"]},
            id="hint-and-redirect",
        ),
        pytest.param(
            "https://idp/end",
            "tok",
            None,
            "https://idp/end",
            {"id_token_hint": ["tok"]},
            id="hint-only",
        ),
        pytest.param("https://idp/end", "", None, "https://idp/end", {}, id="bare-endpoint"),
    ],
)
def test_end_session_url(
    endpoint: str | None,
    id_token: str,
    post_logout: str | None,
    expected_base: str,
    expected_query: dict[str, list[str]],
) -> None:
    url = end_session_url(
        endpoint,
        id_token=id_token,
        post_logout_redirect_uri=post_logout,
        fallback="https://app.example.com/",
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == expected_base
    assert _query(url) == expected_query


def test_end_session_url_keeps_an_existing_query() -> None:
    url = end_session_url(
        "https://idp/end?x=1", id_token="t", post_logout_redirect_uri=None, fallback="/"
    )
    assert _query(url) == {"x": ["1"], "id_token_hint": ["t"]}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(
            "rd=http://app.example.com/p?a=1&b=2",
            "http://app.example.com/p?a=1&b=2",
            id="nginx-unencoded-keeps-its-query",
        ),
        pytest.param(
            "rd=http%3A%2F%2Fapp.example.com%2Fp%3Fa%3D1%26b%3D2&x=1",
            "http://app.example.com/p?a=1&b=2",
            id="encoded",
        ),
        pytest.param("x=1&rd=%2Fhome", "/home", id="not-first"),
        pytest.param("rd=/relative?a=1&b=2", "/relative?a=1", id="relative-parsed-plainly"),
        pytest.param("", None, id="none"),
    ],
)
def test_start_return_url(query: str, expected: str | None) -> None:
    assert start_return_url(query) == expected
