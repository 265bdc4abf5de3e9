"""Cookie header parsing and Set-Cookie values (SPEC §6 "Session cookie")."""

from __future__ import annotations

import hashlib

import pytest

from ext_authz.core.cookies import (
    cookie_name_for,
    expire_cookie,
    get_cookie,
    parse_cookies,
    session_cookie,
    strip_cookies,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, [], id="absent"),
        pytest.param("", [], id="empty"),
        pytest.param("a=1", [("a", "1")], id="one"),
        pytest.param("a=1; b=2", [("a", "1"), ("b", "2")], id="semicolon-space"),
        pytest.param("a=1;b=2", [("a", "1"), ("b", "2")], id="semicolon"),
        pytest.param("a=1,b=2", [("a", "1"), ("b", "2")], id="envoy-comma-join"),
        pytest.param("a=1; b=2,c=3", [("a", "1"), ("b", "2"), ("c", "3")], id="both-forms"),
        pytest.param('a="quoted value"', [("a", "quoted value")], id="quoted"),
        pytest.param('a=""', [("a", "")], id="quoted-empty"),
        pytest.param('a="', [("a", '"')], id="lone-quote-kept"),
        pytest.param("a=", [("a", "")], id="empty-value"),
        pytest.param("tok=YWJj==", [("tok", "YWJj==")], id="equals-in-value"),
        pytest.param("flag; a=1", [("a", "1")], id="piece-without-equals-skipped"),
        pytest.param("=x; a=1", [("a", "1")], id="empty-name-skipped"),
        pytest.param(" a=1 ;\tb=2 ", [("a", "1"), ("b", "2")], id="whitespace"),
        pytest.param("a=1; a=2", [("a", "1"), ("a", "2")], id="repeated-kept-in-order"),
        pytest.param(";;,,", [], id="only-separators"),
    ],
)
def test_parse_cookies(header: str | None, expected: list[tuple[str, str]]) -> None:
    assert parse_cookies(header) == expected


@pytest.mark.parametrize(
    ("header", "name", "expected"),
    [
        pytest.param(None, "a", None, id="no-header"),
        pytest.param("a=1; b=2", "b", "2", id="found"),
        pytest.param("a=1,b=2", "b", "2", id="found-comma"),
        pytest.param("a=1; b=2", "c", None, id="missing"),
        pytest.param("a=1; a=2", "a", "1", id="first-wins"),
        pytest.param("A=1", "a", None, id="case-sensitive"),
        pytest.param('s="v"', "s", "v", id="unquoted"),
        pytest.param("ab=1", "a", None, id="no-prefix-match"),
    ],
)
def test_get_cookie(header: str | None, name: str, expected: str | None) -> None:
    assert get_cookie(header, name) == expected


@pytest.mark.parametrize(
    ("header", "names", "expected"),
    [
        pytest.param(None, {"s"}, None, id="no-header"),
        pytest.param("", {"s"}, "", id="empty-untouched"),
        pytest.param("s=1", {"s"}, None, id="nothing-left"),
        pytest.param("s=1; s_login=2", {"s", "s_login"}, None, id="nothing-left-two"),
        pytest.param("s=1;", {"s"}, None, id="only-a-separator-left"),
        pytest.param("a=1; s=2; b=3", {"s"}, "a=1; b=3", id="middle"),
        pytest.param("s=2; a=1", {"s"}, "a=1", id="first"),
        pytest.param("a=1; s=2", {"s"}, "a=1", id="last"),
        pytest.param("a=1 ; s=2 ", {"s"}, "a=1", id="last-with-spaces"),
        pytest.param("a=1,s=2,b=3", {"s"}, "a=1,b=3", id="comma-form-kept"),
        pytest.param("a=1,s=2; b=3", {"s"}, "a=1,b=3", id="header-join-wins-before"),
        pytest.param("a=1; s=2,b=3", {"s"}, "a=1,b=3", id="header-join-wins-after"),
        pytest.param("s=1; a=1,s=3", {"s"}, "a=1", id="repeated-all-removed"),
        pytest.param("a=1; s=1; s=2; b=2", {"s"}, "a=1; b=2", id="two-in-a-row"),
        pytest.param("sx=1; s=2", {"s"}, "sx=1", id="exact-names-only"),
        pytest.param("S=1; s=2", {"s"}, "S=1", id="names-are-case-sensitive"),
        # Untouched, the same object: not a byte changes when nothing is ours.
        pytest.param("a=1; b=2", {"s"}, "a=1; b=2", id="untouched"),
        pytest.param('c=3,4; b="2"', {"s"}, 'c=3,4; b="2"', id="untouched-comma-and-quotes"),
        pytest.param("s; a=1", {"s"}, "s; a=1", id="name-without-equals-is-not-a-cookie"),
        pytest.param("a=s=1", {"s"}, "a=s=1", id="name-in-a-value"),
        # Byte for byte around what goes.
        pytest.param('c=3,4; s=x; b="2"', {"s"}, 'c=3,4; b="2"', id="comma-in-a-value"),
        pytest.param('s=x; b="2"', {"s"}, 'b="2"', id="quotes-kept"),
        pytest.param("a=1;s=2;  b=3", {"s"}, "a=1;b=3", id="spacing-of-the-kept-separator"),
        pytest.param("a=1;  s=2;b=3", {"s"}, "a=1;  b=3", id="spacing-kept-after-a"),
        pytest.param("flag; s=2; x", {"s"}, "flag; x", id="pieces-without-equals-kept"),
        pytest.param("a=1;;s=2;;b=3", {"s"}, "a=1;;;b=3", id="empty-pieces-kept"),
        pytest.param(" s=1 ;\tb=2 ", {"s"}, "b=2 ", id="tab-and-spaces"),
    ],
)
def test_strip_cookies(header: str | None, names: set[str], expected: str | None) -> None:
    assert strip_cookies(header, names) == expected


@pytest.mark.parametrize("header", ["a=1; b=2", 'c=3,4; b="2"', "x", ""])
def test_strip_cookies_returns_the_header_itself_when_nothing_is_ours(header: str) -> None:
    assert strip_cookies(header, frozenset({"s", "s_login"})) is header


def _attributes(set_cookie: str) -> tuple[str, list[str]]:
    first, *rest = set_cookie.split("; ")
    return first, rest


def test_session_cookie_attributes_without_secure_or_domain() -> None:
    pair, attrs = _attributes(session_cookie("sid", "v4lue", max_age=3600, secure=False))
    assert pair == "sid=v4lue"
    assert "Path=/" in attrs
    assert "HttpOnly" in attrs
    assert "SameSite=Lax" in attrs
    assert "Max-Age=3600" in attrs
    assert "Secure" not in attrs
    assert not any(a.startswith("Domain=") for a in attrs)


def test_session_cookie_secure_and_domain_when_asked() -> None:
    _, attrs = _attributes(
        session_cookie("sid", "v", max_age=60, secure=True, domain=".example.com")
    )
    assert "Secure" in attrs
    assert "Domain=.example.com" in attrs
    assert {"Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=60"} <= set(attrs)


@pytest.mark.parametrize(
    ("max_age", "expected"),
    [
        pytest.param(0, "Max-Age=0", id="zero"),
        pytest.param(-5, "Max-Age=0", id="negative-clamped"),
        pytest.param(86399.9, "Max-Age=86399", id="float-truncated"),
    ],
)
def test_session_cookie_max_age(max_age: float, expected: str) -> None:
    _, attrs = _attributes(session_cookie("sid", "v", max_age=max_age, secure=False))  # type: ignore[arg-type]
    assert expected in attrs


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "plain"])
def test_expire_cookie(secure: bool) -> None:
    pair, attrs = _attributes(expire_cookie("sid", secure=secure, domain=".example.com"))
    assert pair == "sid="
    assert "Max-Age=0" in attrs
    assert "Expires=Thu, 01 Jan 1970 00:00:00 GMT" in attrs
    assert "Path=/" in attrs
    assert "Domain=.example.com" in attrs
    assert ("Secure" in attrs) is secure


@pytest.mark.parametrize("client_id", ["whoami", "app-client", "ünïcode", ""])
def test_cookie_name_for_is_authentiks(client_id: str) -> None:
    digest = hashlib.sha256(client_id.encode("utf-8")).hexdigest()
    assert cookie_name_for(client_id) == "authentik_proxy_" + digest[:8]


def test_cookie_name_for_known_value() -> None:
    # sha256("whoami") = f2529785...: pins the exact name browsers already hold.
    assert cookie_name_for("whoami") == "authentik_proxy_f2529785"
