"""The outpost's settings (SPEC §11): the `authentik` section, the YAML's local settings
per provider slug, and the environment-only start."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from ext_authz.config import (
    outpost_environment,
    parse_settings,
    redacted,
    settings_from_environment,
)
from ext_authz.errors import ConfigError
from tests.unit.conftest import SECRET

TOKEN = "outpost-token-0123456789"


def outpost(**extra: Any) -> dict[str, Any]:
    return {
        "secret": SECRET,
        "authentik": {"host": "https://ak.example.com", "token": TOKEN},
        **extra,
    }


def test_an_outpost_needs_no_applications_and_keeps_the_host_path() -> None:
    settings = parse_settings(
        outpost(authentik={"host": "https://ak.example.com/auth", "token": TOKEN}), environ={}
    )
    assert settings.applications == ()
    assert (
        settings.authentik is not None and settings.authentik.host == "https://ak.example.com/auth/"
    )
    assert settings.authentik.refresh_interval is None
    with pytest.raises(ConfigError, match=r"applications: at least one application is required"):
        parse_settings({"secret": SECRET}, environ={})


@pytest.mark.parametrize(
    ("authentik", "expected"),
    [
        ({"host": "ftp://x", "token": TOKEN}, "authentik.host: must start with http"),
        ({"host": "https://x", "token": " "}, "authentik.token: is empty"),
        ({"host": "https://x", "token": TOKEN, "refresh_interval": "10s"}, "at least 30s"),
        ({"host": "https://x"}, "authentik.token"),
    ],
)
def test_authentik_settings_errors_name_the_key(authentik: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(outpost(authentik=authentik), environ={})
    assert any(expected in line for line in caught.value.errors), caught.value.errors


def test_entries_without_external_host_are_local_settings_checked_at_load() -> None:
    settings = parse_settings(
        outpost(
            applications=[
                {"name": "grafana", "unauthenticated": "deny", "access": [{"groups": ["ops"]}]},
                {"name": "own", "external_host": "https://own.example.com", "oidc": None},
            ],
            directory={},
        ),
        environ={},
    )
    assert [a.name for a in settings.applications] == ["own"]
    assert settings.provider_settings == {
        "grafana": {"name": "grafana", "unauthenticated": "deny", "access": [{"groups": ["ops"]}]}
    }
    assert "provider_settings" not in redacted(settings)
    with pytest.raises(ConfigError, match=r"applications\[0\]\.unauthenticated"):
        parse_settings(
            outpost(applications=[{"name": "x", "unauthenticated": "maybe"}]), environ={}
        )
    with pytest.raises(ConfigError, match=r"provider_settings: is not a config key"):
        parse_settings(outpost(provider_settings={}), environ={})


def test_the_environment_only_start() -> None:
    env = {"AUTHENTIK_HOST": "https://ak.example.com", "AUTHENTIK_TOKEN": TOKEN}
    assert outpost_environment(env) and not outpost_environment({"AUTHENTIK_HOST": "x"})
    settings = settings_from_environment(env)
    assert settings.authentik is not None and settings.authentik.token.get_secret_value() == TOKEN
    assert settings.store.url == "memory://" and settings.server.listen == "127.0.0.1:9191"
    derived = hmac.new(TOKEN.encode(), b"ext-authz secret from the outpost token", hashlib.sha256)
    assert settings.secret.get_secret_value() == derived.hexdigest() != TOKEN
    full = settings_from_environment(
        {
            **env,
            "AUTHENTIK_HOST_BROWSER": "https://login.example.com",
            "AUTHENTIK_INSECURE": "true",
            "EXT_AUTHZ_SECRET": "s" * 40,
            "EXT_AUTHZ_STORE_URL": "redis://127.0.0.1:6379/0",
            "EXT_AUTHZ_LISTEN": "0.0.0.0:9191",
            "EXT_AUTHZ_HTTP_LISTEN": "0.0.0.0:9300",
            "EXT_AUTHZ_FORWARD_AUTH_LISTEN": "0.0.0.0:9400",
        }
    )
    assert full.authentik is not None and full.authentik.insecure
    assert full.authentik.host_browser == "https://login.example.com/"
    assert full.secret.get_secret_value() == "s" * 40
    assert full.server.forward_auth_listen == "0.0.0.0:9400"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AUTHENTIK_TOKEN": TOKEN}, "AUTHENTIK_HOST: required without a config file"),
        (
            {"AUTHENTIK_HOST": "https://a", "AUTHENTIK_TOKEN": TOKEN, "EXT_AUTHZ_SECRET": "short"},
            "EXT_AUTHZ_SECRET: must be at least 32 bytes",
        ),
        (
            {"AUTHENTIK_HOST": "https://a", "AUTHENTIK_TOKEN": TOKEN, "EXT_AUTHZ_LISTEN": "nope"},
            "EXT_AUTHZ_LISTEN:",
        ),
        ({"AUTHENTIK_HOST": "a.b", "AUTHENTIK_TOKEN": TOKEN}, "AUTHENTIK_HOST: must start"),
    ],
)
def test_environment_errors_name_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_environment(env)
    assert any(line.startswith(expected) for line in caught.value.errors), caught.value.errors
