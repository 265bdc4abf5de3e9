"""The small IdP world two integration suites share: alice, her groups, and what
her merged attributes must be (groups in name order, then her own)."""

from __future__ import annotations

from typing import Any

from tests.stack.idp import IdPUser, proxy_provider_client

# Registered as authentik registers a proxy provider: strict redirect URI, HS256 tokens.
HS_CLIENT = proxy_provider_client(
    "hs-app", "hs-secret-0123456789abcdef0123456789abcdef", ["http://hs.localhost:8080"]
)
ALICE = IdPUser(
    username="alice",
    password="alice-password",
    email="alice@example.com",
    name="Alice Example",
    groups=["zeta", "admins"],
    attributes={"app_username": "alice-own", "own_only": True},
    app_passwords=["alice-app-password-1", "alice-app-password-2"],
    entitlements=["billing"],
)
GROUPS: dict[str, dict[str, Any]] = {
    # Merged in group-name order (admins, then zeta), then the user's own attributes.
    "admins": {"app_username": "admin", "app_password": "s3cret", "from": "admins"},
    "zeta": {"from": "zeta"},
}
EXPECTED_ATTRIBUTES = {
    "app_username": "alice-own",
    "app_password": "s3cret",
    "from": "zeta",
    "own_only": True,
}
