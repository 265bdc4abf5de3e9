"""Sending identity upstream (SPEC §7): identity headers, upstream Basic, spoofed headers."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from ext_authz.core.claims import merge_attributes
from ext_authz.core.model import Identity
from ext_authz.core.upstream import (
    additional_header_problem,
    client_authentik_headers,
    client_declared_headers,
    identity_headers,
    is_safe_header_value,
    upstream_basic,
)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def identity(**fields: Any) -> Identity:
    fields.setdefault("sub", "uid-1")
    fields.setdefault("email", "alice@example.com")
    return Identity(**fields)


# --- HTTP Basic for the upstream -----------------------------------------------------

# The example: the group "admins" sets app_username, the user sets app_password.
GROUPS = {"admins": {"app_username": "group-user"}, "zeta": {"app_username": "zeta-user"}}


@pytest.mark.parametrize(
    ("attributes", "username_attribute", "password_attribute", "expected"),
    [
        pytest.param(
            merge_attributes(GROUPS, ["admins"], {"app_password": "user-pw"}),
            "app_username",
            "app_password",
            basic("group-user", "user-pw"),
            id="group-username-user-password",
        ),
        pytest.param(
            merge_attributes(
                GROUPS, ["admins"], {"app_username": "own-user", "app_password": "own-pw"}
            ),
            "app_username",
            "app_password",
            basic("own-user", "own-pw"),
            id="user-attributes-win-over-group",
        ),
        pytest.param(
            merge_attributes(GROUPS, ["zeta", "admins"], {}),
            "app_username",
            "app_password",
            basic("zeta-user", ""),
            id="later-group-by-name-wins",
        ),
        pytest.param(
            {},
            "app_username",
            "app_password",
            basic("alice@example.com", ""),
            id="neither-set-email-and-empty",
        ),
        pytest.param(
            {"app_username": "u", "app_password": "p"},
            "",
            "",
            basic("alice@example.com", ""),
            id="attributes-not-configured",
        ),
        pytest.param(
            {"app_password": "p"},
            "app_username",
            "app_password",
            basic("alice@example.com", "p"),
            id="only-password",
        ),
        pytest.param(
            {"app_username": 42, "app_password": ["p"]},
            "app_username",
            "app_password",
            basic("alice@example.com", ""),
            id="non-string-fallback",
        ),
        pytest.param(
            {"app_username": None, "app_password": {"x": 1}},
            "app_username",
            "app_password",
            basic("alice@example.com", ""),
            id="null-and-mapping",
        ),
        pytest.param(
            {"app_username": "", "app_password": ""},
            "app_username",
            "app_password",
            basic("", ""),
            id="empty-strings-are-strings",
        ),
        pytest.param(
            {"u": "jürgen", "p": "pässwörd:Ω"},
            "u",
            "p",
            "Basic " + base64.b64encode("jürgen:pässwörd:Ω".encode()).decode(),
            id="non-ascii-utf8",
        ),
    ],
)
def test_upstream_basic(
    attributes: dict[str, Any], username_attribute: str, password_attribute: str, expected: str
) -> None:
    value = upstream_basic(
        identity(attributes=attributes),
        username_attribute=username_attribute,
        password_attribute=password_attribute,
    )
    assert value == expected


def test_upstream_basic_non_ascii_is_utf8_before_base64() -> None:
    value = upstream_basic(
        identity(attributes={"u": "é", "p": "ü"}), username_attribute="u", password_attribute="p"
    )
    assert base64.b64decode(value.removeprefix("Basic ")) == b"\xc3\xa9:\xc3\xbc"


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param({"u": "bad\ud800", "p": "pw"}, id="lone-surrogate-username"),
        pytest.param({"u": "user", "p": "\udfff"}, id="lone-surrogate-password"),
    ],
)
def test_upstream_basic_never_raises_on_unencodable_attributes(attributes: dict[str, str]) -> None:
    # JSON claims may carry "\ud800" escapes: they decode to strings UTF-8 cannot encode.
    value = upstream_basic(
        identity(attributes=attributes), username_attribute="u", password_attribute="p"
    )
    assert value.startswith("Basic ")
    base64.b64decode(value.removeprefix("Basic ")).decode("utf-8")


# --- identity headers ----------------------------------------------------------------

FULL = identity(
    sub="uid-1",
    preferred_username="alice",
    email="alice@example.com",
    name="Alice Example",
    groups=("admins", "staff"),
    entitlements=("read", "write"),
    token="eyJ.token.sig",
)


def test_identity_headers_names_and_values() -> None:
    built = identity_headers(FULL, app_name="whoami", provider="whoami-client")
    assert dict(built.headers) == {
        "X-authentik-username": "alice",
        "X-authentik-groups": "admins|staff",
        "X-authentik-entitlements": "read|write",
        "X-authentik-email": "alice@example.com",
        "X-authentik-name": "Alice Example",
        "X-authentik-uid": "uid-1",
        "X-authentik-jwt": "eyJ.token.sig",
        "X-authentik-meta-app": "whoami",
        "X-authentik-meta-provider": "whoami-client",
    }
    assert built.dropped == ()


def test_identity_headers_empty_values_are_present_as_empty() -> None:
    built = identity_headers(identity(sub="u"), app_name="a", provider="directory")
    headers = dict(built.headers)
    assert headers["X-authentik-groups"] == ""
    assert headers["X-authentik-jwt"] == ""
    assert headers["X-authentik-meta-provider"] == "directory"


@pytest.mark.parametrize(
    ("fields", "dropped"),
    [
        pytest.param({"name": "Alice\r\nX-Evil: 1"}, "X-authentik-name", id="crlf-name"),
        pytest.param({"email": "a@x\n"}, "X-authentik-email", id="lf-email"),
        pytest.param({"preferred_username": "al\x00ice"}, "X-authentik-username", id="nul"),
        pytest.param({"groups": ("ok", "bad\rgroup")}, "X-authentik-groups", id="cr-group"),
        pytest.param({"entitlements": ("e\x7f",)}, "X-authentik-entitlements", id="del"),
        pytest.param({"token": "tok\x0b"}, "X-authentik-jwt", id="vertical-tab"),
        pytest.param({"sub": "u\ud800"}, "X-authentik-uid", id="lone-surrogate"),
    ],
)
def test_identity_headers_drop_unsafe_values(fields: dict[str, Any], dropped: str) -> None:
    built = identity_headers(identity(**fields), app_name="a", provider="p")
    assert dropped in built.dropped
    assert dropped not in dict(built.headers)
    for _, value in built.headers:
        assert is_safe_header_value(value)


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        pytest.param("plain", True, id="plain"),
        pytest.param("", True, id="empty"),
        pytest.param("tab\tinside", True, id="tab"),
        pytest.param("ünïcödé Ω", True, id="non-ascii"),
        pytest.param("a\rb", False, id="cr"),
        pytest.param("a\nb", False, id="lf"),
        pytest.param("a\x00b", False, id="nul"),
        pytest.param("a\x1fb", False, id="unit-separator"),
        pytest.param("a\x7fb", False, id="del"),
    ],
)
def test_is_safe_header_value(value: str, safe: bool) -> None:
    assert is_safe_header_value(value) is safe


def test_declared_additional_headers_are_added() -> None:
    who = identity(attributes={"additionalHeaders": {"X-Team": "blue", "X-Level": "3"}})
    built = identity_headers(who, app_name="a", provider="p", declared={"x-team", "x-level"})
    headers = dict(built.headers)
    assert headers["X-Team"] == "blue"
    assert headers["X-Level"] == "3"
    assert built.undeclared == ()


@pytest.mark.parametrize(
    ("extra", "declared", "sent", "undeclared"),
    [
        pytest.param({"X-Team": "blue"}, set(), {}, ("X-Team",), id="nothing-declared"),
        pytest.param(
            {"X-Team": "blue", "X-Floor": "3"},
            {"x-team"},
            {"X-Team": "blue"},
            ("X-Floor",),
            id="only-the-declared-one",
        ),
        pytest.param({"x-TEAM": "blue"}, {"x-team"}, {"x-TEAM": "blue"}, (), id="any-case"),
        pytest.param(
            {"X_Team": "blue"}, {"x-team"}, {}, ("X_Team",), id="underscore-spelling-is-another"
        ),
        pytest.param(
            {"x_authentik_username": "root", "X_authentik_uid": "0"},
            {"x-team"},
            {},
            ("x_authentik_username", "X_authentik_uid"),
            id="our-names-with-underscores",
        ),
        pytest.param(
            {"X-authentik-username": "root", "Authorization": "Basic eDp5"},
            {"x-team"},
            {},
            ("X-authentik-username", "Authorization"),
            id="ours-and-authorization",
        ),
    ],
)
def test_only_declared_additional_headers_are_sent(
    extra: dict[str, str], declared: set[str], sent: dict[str, str], undeclared: tuple[str, ...]
) -> None:
    who = identity(preferred_username="alice", attributes={"additionalHeaders": extra})
    built = identity_headers(who, app_name="a", provider="p", declared=declared)
    ours = {n for n, _ in identity_headers(identity(), app_name="a", provider="p").headers}
    assert {n: v for n, v in built.headers if n not in ours} == sent
    assert dict(built.headers)["X-authentik-username"] == "alice"
    assert built.undeclared == undeclared
    assert built.dropped == ()


@pytest.mark.parametrize(
    "name",
    [
        "X-authentik-username",
        "x-authentik-username",
        "X-AUTHENTIK-UID",
        "x-authentik-meta-app",
        "Authorization",
        "authorization",
        "Cookie",
        "Host",
        "Proxy-Authorization",
        "Set-Cookie",
        "Content-Length",
        "Transfer-Encoding",
        ":authority",
        "bad name",
        "x-bad\r\nname",
    ],
)
def test_additional_headers_cannot_override_ours_or_reserved(name: str) -> None:
    # Even declared (the config refuses these names; a caller might not check).
    who = identity(preferred_username="alice", attributes={"additionalHeaders": {name: "evil"}})
    built = identity_headers(who, app_name="a", provider="p", declared={name.lower()})
    assert all(value != "evil" for _, value in built.headers)
    assert dict(built.headers)["X-authentik-username"] == "alice"


@pytest.mark.parametrize(
    ("extra", "kept", "dropped"),
    [
        pytest.param({"X-Ok": "1", "X-Bad": "a\r\nb"}, {"X-Ok": "1"}, ("X-Bad",), id="crlf"),
        pytest.param({"X-Num": 5}, {}, ("X-Num",), id="non-string-value"),
        pytest.param({"X-A": "1", "x-a": "2"}, {"X-A": "1"}, (), id="first-spelling-wins"),
        pytest.param({5: "x"}, {}, (), id="non-string-name-ignored"),
    ],
)
def test_additional_headers_values(
    extra: dict[Any, Any], kept: dict[str, str], dropped: tuple[str, ...]
) -> None:
    built = identity_headers(
        identity(attributes={"additionalHeaders": extra}),
        app_name="a",
        provider="p",
        declared={"x-ok", "x-bad", "x-num", "x-a"},
    )
    ours = {n for n, _ in identity_headers(identity(), app_name="a", provider="p").headers}
    assert {n: v for n, v in built.headers if n not in ours} == kept
    assert built.dropped == dropped


@pytest.mark.parametrize(
    "additional",
    [
        pytest.param("X-A: 1", id="string"),
        pytest.param(["X-A"], id="list"),
        pytest.param(None, id="null"),
    ],
)
def test_additional_headers_not_a_mapping_is_ignored(additional: Any) -> None:
    built = identity_headers(
        identity(attributes={"additionalHeaders": additional}), app_name="a", provider="p"
    )
    assert len(built.headers) == 9
    assert built.dropped == ()


# --- the client's own x-authentik-* headers -------------------------------------------


@pytest.mark.parametrize(
    ("name", "spoofable"),
    [
        pytest.param("x-authentik-username", True, id="lower"),
        pytest.param("X-Authentik-Username", True, id="title"),
        pytest.param("X-AUTHENTIK-GROUPS", True, id="upper"),
        pytest.param("X_authentik_username", True, id="underscores"),
        pytest.param("x_authentik-meta_app", True, id="mixed-separators"),
        pytest.param("x-authentik-anything-new", True, id="unknown-suffix"),
        pytest.param("x-authentik-", True, id="bare-prefix"),
        pytest.param("x-authentikate", False, id="longer-word"),
        pytest.param("x-authentik", False, id="no-dash"),
        pytest.param("x-auth", False, id="x-auth"),
        pytest.param("x-auth-request-user", False, id="oauth2-proxy-name"),
        pytest.param("authorization", False, id="authorization"),
        pytest.param("xx-authentik-username", False, id="prefixed"),
    ],
)
def test_client_authentik_headers(name: str, spoofable: bool) -> None:
    assert client_authentik_headers([name, "accept"]) == ([name] if spoofable else [])


@pytest.mark.parametrize(
    ("name", "copy"),
    [
        pytest.param("x-team", True, id="lower"),
        pytest.param("X-Team", True, id="title"),
        pytest.param("X_Team", True, id="underscore"),
        pytest.param("x_TEAM", True, id="underscore-upper"),
        pytest.param("x-teams", False, id="longer"),
        pytest.param("team", False, id="shorter"),
        pytest.param("x--team", False, id="doubled-dash"),
        pytest.param("x-floor", False, id="not-declared"),
    ],
)
def test_client_declared_headers(name: str, copy: bool) -> None:
    names = [name, "accept", "x-authentik-uid"]
    assert client_declared_headers(names, frozenset({"x-team"})) == ([name] if copy else [])


def test_client_declared_headers_without_declarations() -> None:
    assert client_declared_headers(["x-team", "X_Team"], frozenset()) == []


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        pytest.param("X-Team", None, id="ok"),
        pytest.param("x-forwarded-user", None, id="ok-forwarded-user"),
        pytest.param("X-authentikate", None, id="ok-longer-word"),
        pytest.param("X_Team", "must not contain '_'", id="underscore"),
        pytest.param("x_authentik_username", "must not contain '_'", id="ours-underscored"),
        pytest.param("X-authentik-username", "X-authentik-*", id="ours"),
        pytest.param("x-authentik-anything", "X-authentik-*", id="our-prefix"),
        pytest.param("x-envoy-original-path", "Envoy", id="envoy"),
        pytest.param("Authorization", "credential", id="authorization"),
        pytest.param("proxy-authorization", "credential", id="proxy-authorization"),
        pytest.param("Cookie", "credential", id="cookie"),
        pytest.param("Host", "credential", id="host"),
        pytest.param("Content-Length", "framing", id="content-length"),
        pytest.param("Connection", "hop-by-hop", id="connection"),
        pytest.param("keep-alive", "hop-by-hop", id="keep-alive"),
        pytest.param("TE", "hop-by-hop", id="te"),
        pytest.param("Trailer", "hop-by-hop", id="trailer"),
        pytest.param("Transfer-Encoding", "hop-by-hop", id="transfer-encoding"),
        pytest.param("Upgrade", "hop-by-hop", id="upgrade"),
        pytest.param("X Team", "token", id="space"),
        pytest.param("X-Team:", "token", id="colon"),
        pytest.param(":authority", "token", id="pseudo-header"),
        pytest.param("", "token", id="empty"),
        pytest.param("X-Téam", "token", id="non-ascii"),
    ],
)
def test_additional_header_problem(name: str, problem: str | None) -> None:
    found = additional_header_problem(name)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_client_authentik_headers_keeps_names_as_given_and_order() -> None:
    names = ["X_Authentik_Uid", "accept", "x-authentik-jwt", "cookie"]
    assert client_authentik_headers(names) == ["X_Authentik_Uid", "x-authentik-jwt"]
