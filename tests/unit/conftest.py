"""Builders for the unit tests of the decision core: real, validated `Application`s.

Applications go through `parse_settings` like a config file would, so the derived
values (host name, port, cookie name, compiled skip paths) are the real ones.
"""

from __future__ import annotations

from typing import Any

from ext_authz.config import Application, parse_settings

SECRET = "unit-test-secret-0123456789abcdef-0123"
ISSUER = "https://idp.example.com/application/o/app/"
CLIENT_ID = "app-client"

_OIDC = {"issuer": ISSUER, "client_id": CLIENT_ID, "client_secret": "client-secret"}


def app_config(
    name: str = "app",
    external_host: str = "https://app.example.com",
    *,
    oidc: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """One application's config mapping; `oidc=False` leaves the OIDC client out."""
    data: dict[str, Any] = {"name": name, "external_host": external_host, **settings}
    if oidc:
        data.setdefault("oidc", dict(_OIDC))
    return data


def apps(*configs: dict[str, Any]) -> tuple[Application, ...]:
    """Validate several application mappings together (host/port clashes are checked)."""
    settings = parse_settings(
        {"secret": SECRET, "directory": {}, "applications": list(configs)}, environ={}
    )
    return settings.applications


def make_app(
    name: str = "app",
    external_host: str = "https://app.example.com",
    *,
    oidc: bool = True,
    **settings: Any,
) -> Application:
    """One validated application; keyword arguments are its config keys."""
    return apps(app_config(name, external_host, oidc=oidc, **settings))[0]
