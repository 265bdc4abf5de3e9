"""identity_from_claims and merge_attributes: pure, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from ext_authz.core.claims import attributes_at, identity_from_claims, merge_attributes

CLAIM = "ak_proxy.user_attributes"


def _identity(claims: dict[str, Any]) -> Any:
    return identity_from_claims(claims, attributes_claim=CLAIM, provider="app", token="tok")


@pytest.mark.parametrize(
    ("claims", "field", "expected"),
    [
        ({"sub": "u1"}, "preferred_username", "u1"),
        ({"sub": "u1", "username": "alice"}, "preferred_username", "alice"),
        ({"sub": "u1", "username": "a", "preferred_username": "b"}, "preferred_username", "b"),
        ({"sub": "u1", "preferred_username": 5, "username": "a"}, "preferred_username", "a"),
        ({"sub": "u1", "email": "a@x"}, "email", "a@x"),
        ({"sub": "u1", "email": None}, "email", ""),
        ({"sub": "u1", "name": "Alice"}, "name", "Alice"),
        ({"sub": "u1"}, "groups", ()),
        ({"sub": "u1", "groups": ["a", "b"]}, "groups", ("a", "b")),
        ({"sub": "u1", "groups": "admins"}, "groups", ()),
        ({"sub": "u1", "groups": ["a", 3, None]}, "groups", ("a",)),
        ({"sub": "u1", "entitlements": ["e1"]}, "entitlements", ("e1",)),
        ({"sub": "u1", "exp": 100}, "expires_at", 100.0),
        ({"sub": "u1", "exp": "100"}, "expires_at", None),
        ({"sub": "u1", "exp": True}, "expires_at", None),
        ({"sub": "u1"}, "expires_at", None),
        ({"sub": 42}, "sub", "42"),
        ({"sub": "u1"}, "provider", "app"),
        ({"sub": "u1"}, "token", "tok"),
        ({"sub": "u1"}, "id_token", ""),
        ({"sub": "u1", "sid": "ak-session"}, "sid", "ak-session"),
        ({"sub": "u1"}, "sid", ""),
        ({"sub": "u1", "sid": 7}, "sid", ""),
    ],
)
def test_identity_fields(claims: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(_identity(claims), field) == expected


@pytest.mark.parametrize("claims", [{}, {"sub": ""}, {"sub": None}, {"sub": True}, {"sub": []}])
def test_sub_is_required(claims: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _identity(claims)


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"ak_proxy": {"user_attributes": {"k": "v"}}}, {"k": "v"}),
        ({"ak_proxy": {"user_attributes": "nope"}}, {}),
        ({"ak_proxy": "nope"}, {}),
        ({"ak_proxy": {}}, {}),
        ({}, {}),
        ({"ak_proxy.user_attributes": {"flat": 1}}, {"flat": 1}),
        ({"ak_proxy": {"user_attributes": {"nested": {"a": [1, 2]}}}}, {"nested": {"a": [1, 2]}}),
    ],
)
def test_attributes_claim(claims: dict[str, Any], expected: dict[str, Any]) -> None:
    claims = {"sub": "u1", **claims}
    assert dict(_identity(claims).attributes) == expected


@pytest.mark.parametrize(
    ("path", "claims", "expected"),
    [
        ("attrs", {"attrs": {"a": 1}}, {"a": 1}),
        ("a.b.c", {"a": {"b": {"c": {"x": 1}}}}, {"x": 1}),
        ("a.b.c", {"a": {"b": [1]}}, {}),
        ("", {"": {"a": 1}}, {}),
    ],
)
def test_attributes_at(path: str, claims: dict[str, Any], expected: dict[str, Any]) -> None:
    assert dict(attributes_at(claims, path)) == expected


def test_identity_attributes_are_read_only() -> None:
    identity = _identity({"sub": "u", "ak_proxy": {"user_attributes": {"k": "v"}}})
    with pytest.raises(TypeError):
        identity.attributes["k"] = "w"  # type: ignore[index]


GROUPS = {
    "admins": {"role": "admin", "shared": "admins", "a": 1},
    "billing": {"role": "billing", "b": 2},
    "zeta": {"shared": "zeta"},
}


@pytest.mark.parametrize(
    ("names", "user", "expected"),
    [
        ((), {}, {}),
        ((), {"u": 1}, {"u": 1}),
        (("admins",), {}, {"role": "admin", "shared": "admins", "a": 1}),
        # name order, not the user's listing order: billing after admins
        (("billing", "admins"), {}, {"role": "billing", "shared": "admins", "a": 1, "b": 2}),
        (("zeta", "admins"), {}, {"role": "admin", "shared": "zeta", "a": 1}),
        # the user's own attributes win
        (("admins", "zeta"), {"shared": "mine"}, {"role": "admin", "shared": "mine", "a": 1}),
        # unknown groups add nothing
        (("ghosts",), {"u": 1}, {"u": 1}),
        # shallow: a nested mapping is replaced, not merged
        (("admins",), {"a": {"x": 1}}, {"role": "admin", "shared": "admins", "a": {"x": 1}}),
    ],
)
def test_merge_attributes(
    names: tuple[str, ...], user: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert merge_attributes(GROUPS, names, user) == expected


def test_merge_does_not_mutate_inputs() -> None:
    groups = {"g": {"k": "v"}}
    user = {"u": 1}
    merge_attributes(groups, ["g"], user)
    assert groups == {"g": {"k": "v"}} and user == {"u": 1}
