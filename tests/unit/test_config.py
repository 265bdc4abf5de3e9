"""ext_authz.config: loading, defaults, substitution, secrets files, durations, errors."""

from __future__ import annotations

import copy
import hashlib
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from ext_authz.config import (
    REDACTED,
    Application,
    ReceiveSettings,
    Settings,
    load_secret,
    load_settings,
    parse_duration,
    parse_settings,
    parse_store_url,
    redact_store_url,
    redacted,
)
from ext_authz.crypto import hash_token
from ext_authz.durations import MAX_SECONDS
from ext_authz.errors import ConfigError

CONFIGS = Path(__file__).parent / "configs"
SECRET = "0123456789abcdef0123456789abcdef"
HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$28ReOsux0AoA/2qmAnoN3A$"
    "iILBx/NStoi/pXpLCZZpD+pDeD6PQgOxdbdZKqaL1a8"
)
OIDC = {"issuer": "https://idp.example.com/", "client_id": "app", "client_secret": "cs-1"}


def base() -> dict[str, Any]:
    """A valid config: one app with oidc, one without, and a directory."""
    return {
        "secret": SECRET,
        "directory": {
            "groups": {"admins": {"attributes": {"role": "admin"}}},
            "users": [{"username": "alice", "groups": ["admins"], "app_passwords": [HASH]}],
        },
        "applications": [
            {"name": "app", "external_host": "https://app.example.com", "oidc": dict(OIDC)},
            {"name": "local", "external_host": "http://local.example.com:8080"},
        ],
    }


def errors_of(data: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(data, environ or {})
    assert info.value.errors, "a ConfigError must carry at least one line"
    return info.value.errors


# --- good configurations ----------------------------------------------------------------


def test_good_file_loads_with_every_value() -> None:
    settings = load_settings(CONFIGS / "good.yaml", environ={})
    assert settings.server.listen == "127.0.0.1:19191"
    assert settings.server.http_listen == ""
    assert settings.server.workers == 4
    assert settings.server.grace_period == pytest.approx(1.5)
    assert settings.server.log_level == "debug"
    assert settings.server.log_format == "console"
    assert settings.secret.get_secret_value() == "top-secret-value-0123456789abcdefghij"
    assert settings.store.timeout == pytest.approx(0.25)
    assert settings.store.local_cache_ttl == 0
    assert settings.store.key_prefix == "test:"
    url = settings.store.parsed_url
    assert (url.kind, url.master_name, url.db, url.password) == (
        "sentinel",
        "mymaster",
        2,
        "redis-pass-5f0e",
    )
    assert url.hosts == (("127.0.0.1", 26379), ("127.0.0.1", 26380))
    assert settings.directory is not None
    assert settings.directory.users[0].groups == ("admins",)

    whoami, local = settings.applications
    assert whoami.oidc is not None
    assert whoami.oidc.client_auth == "client_secret_basic"
    assert whoami.oidc.scopes == ("openid", "profile", "email", "ak_proxy")
    assert whoami.receive.basic.verify == "authentik"  # the default with oidc
    assert whoami.receive.bearer.verify == "jwt"
    assert whoami.receive.cache_ttl == 90
    assert whoami.session_lifetime == 8 * 3600
    assert whoami.unauthenticated == "auto"
    assert whoami.send.basic.enabled is True
    assert whoami.host_name == "whoami.example.com"
    assert whoami.port == 443
    assert whoami.secure is True
    assert whoami.all_host_names == frozenset({"whoami.example.com", "whoami.internal"})
    assert whoami.redirect_uri == (
        "https://whoami.example.com/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"
    )
    digest = hashlib.sha256(b"whoami").hexdigest()[:8]
    assert whoami.cookie_name == f"authentik_proxy_{digest}"
    assert whoami.provider_name == "whoami"
    assert [p.pattern for p in whoami.skip_paths] == ["^/public/", "^/healthz$"]
    assert whoami.skip_paths[0].search("/public/x")

    assert local.oidc is None
    assert local.receive.basic.verify == "directory"  # the defaults without oidc
    assert local.receive.bearer.verify == "directory"
    assert local.port == 8080
    assert local.secure is False
    assert local.redirect_uri == (
        "http://local.example.com:8080/outpost.goauthentik.io/callback"
        "?X-authentik-auth-callback=true"
    )
    local_digest = hashlib.sha256(b"local-only").hexdigest()[:8]
    assert local.cookie_name == f"authentik_proxy_{local_digest}"
    assert local.provider_name == "directory"
    assert local.skip_paths == ()


def test_minimal_config_takes_the_documented_defaults() -> None:
    settings = load_settings(CONFIGS / "minimal.yaml", environ={})
    server, store = settings.server, settings.store
    assert (server.listen, server.http_listen, server.workers) == (
        "127.0.0.1:9191",
        "127.0.0.1:9300",
        1,
    )
    assert (server.grace_period, server.log_level, server.log_format) == (10, "info", "json")
    assert (store.url, store.key_prefix, store.timeout, store.local_cache_ttl) == (
        "memory://",
        "ext-authz:",
        0.5,
        2.0,
    )
    assert settings.directory is None
    (app,) = settings.applications
    assert app.hosts == () and app.cookie_domain == "" and app.skip_path_regex == ()
    assert (app.unauthenticated, app.session_lifetime, app.intercept_header_auth) == (
        "redirect",
        86400,
        True,
    )
    assert app.oidc is not None
    assert app.oidc.client_auth == "client_secret_post"
    assert app.oidc.scopes == ("openid", "profile", "email", "ak_proxy")
    assert app.oidc.attributes_claim == "ak_proxy.user_attributes"
    assert app.oidc.timeout == 3
    receive = app.receive
    assert (receive.basic.enabled, receive.basic.verify) == (True, "authentik")
    assert (receive.bearer.enabled, receive.bearer.verify) == (True, "auto")
    assert (receive.audiences, receive.cache_ttl, receive.negative_cache_ttl) == ((), 60, 5)
    assert receive.create_session is True
    assert receive.header_session_lifetime == 3600
    send = app.send
    assert (send.basic.enabled, send.basic.username_attribute, send.basic.password_attribute) == (
        False,
        "",
        "",
    )
    assert send.identity_headers is True and send.strip_session_cookie is True
    assert send.additional_headers == () and send.declared_headers == frozenset()


def test_additional_headers_are_stored_lower_case_once() -> None:
    data = base()
    data["applications"][0]["send"] = {"additional_headers": ["X-Team", "x-team", "X-Floor"]}
    send = parse_settings(data, {}).applications[0].send
    assert send.additional_headers == ("x-team", "x-floor")
    assert send.declared_headers == frozenset({"x-team", "x-floor"})


def test_defaults_without_oidc_are_directory_even_in_a_partial_section() -> None:
    data = base()
    data["applications"][1]["receive"] = {"basic": {"enabled": True}, "bearer": None}
    app = parse_settings(data, {}).applications[1]
    assert (app.receive.basic.verify, app.receive.bearer.verify) == ("directory", "directory")


def test_defaults_without_oidc_apply_to_models_built_in_python() -> None:
    app = Application(name="py", external_host="https://py.example.com", receive=ReceiveSettings())
    assert (app.receive.basic.verify, app.receive.bearer.verify) == ("directory", "directory")


def test_empty_sections_mean_defaults() -> None:
    data = base()
    data["server"] = None
    data["store"] = None
    data["applications"][0]["send"] = None
    settings = parse_settings(data, {})
    assert settings.server.workers == 1
    assert settings.applications[0].send.identity_headers is True


def test_settings_are_frozen() -> None:
    settings = parse_settings(base(), {})
    with pytest.raises(ValidationError):
        settings.applications[0].name = "other"


def test_the_example_config_loads() -> None:
    example = Path(__file__).parents[2] / "examples" / "config.yaml"
    settings = load_settings(example, environ={"EXT_AUTHZ_SECRET": SECRET})
    internal, whoami = settings.applications
    assert internal.oidc is None and internal.receive.basic.verify == "directory"
    assert whoami.oidc is not None and whoami.oidc.client_secret is not None
    assert whoami.oidc.client_secret.get_secret_value() == "change-me"


# --- environment substitution -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${V}", {"V": "x"}, "x"),
        ("a-${V}-b", {"V": "x"}, "a-x-b"),
        ("${V:-dflt}", {}, "dflt"),
        ("${V:-dflt}", {"V": ""}, "dflt"),
        ("${V:-dflt}", {"V": "set"}, "set"),
        ("${V:-}", {}, ""),
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
        ("$${V}", {"V": "x"}, "${V}"),
        ("no refs $ here", {}, "no refs $ here"),
    ],
)
def test_env_substitution(value: str, environ: dict[str, str], expected: str) -> None:
    data = base()
    data["store"] = {"key_prefix": value}
    assert parse_settings(data, environ).store.key_prefix == expected


def test_env_substitution_reaches_lists_and_non_string_fields() -> None:
    data = base()
    data["server"] = {"workers": "${W}"}
    data["store"] = {"url": "redis://${HOST:-localhost}:6379/0"}
    data["applications"][0]["hosts"] = ["${H}"]
    settings = parse_settings(data, {"W": "3", "H": "other.example.com"})
    assert settings.server.workers == 3
    assert settings.store.url == "redis://localhost:6379/0"
    assert settings.applications[0].all_host_names >= {"other.example.com"}


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CONFIG_PREFIX", "from-env:")
    data = base()
    data["store"] = {"key_prefix": "${TEST_CONFIG_PREFIX}"}
    assert parse_settings(data).store.key_prefix == "from-env:"


# --- secrets from files -----------------------------------------------------------------


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "client").write_text("from-file-secret\r\n")
    data = base()
    del data["secret"]
    data["secret_file"] = str(tmp_path / "secret")
    oidc = data["applications"][0]["oidc"]
    del oidc["client_secret"]
    oidc["client_secret_file"] = str(tmp_path / "client")
    settings = parse_settings(data, {})
    assert settings.secret.get_secret_value() == SECRET
    app_oidc = settings.applications[0].oidc
    assert app_oidc is not None and app_oidc.client_secret is not None
    assert app_oidc.client_secret.get_secret_value() == "from-file-secret"


def test_secret_file_path_may_come_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(SECRET)
    data = base()
    del data["secret"]
    data["secret_file"] = "${SECRET_PATH}"
    settings = parse_settings(data, {"SECRET_PATH": str(tmp_path / "s")})
    assert settings.secret.get_secret_value() == SECRET


# --- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("300ms", 0.3),
        ("5s", 5),
        ("10m", 600),
        ("24h", 86400),
        ("1h30m", 5400),
        ("1.5s", 1.5),
        (" 2s ", 2),
        (5, 5),
        (2.5, 2.5),
        (0, 0),
        ("0", 0),
        ("7", 7),
        ("0.25", 0.25),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["abc", "5d", "5 s", "", "s", "-1s", -1, -0.5, True, None, [1], math.nan, math.inf],
)
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@settings(deadline=None)  # parsing speed is the machine's, not a property
@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["ms", "s", "m", "h"]))
def test_parse_duration_units(number: int, unit: str) -> None:
    size = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if number * size > MAX_SECONDS:
        with pytest.raises(ValueError, match="more than ten years"):
            parse_duration(f"{number}{unit}")
    else:
        assert parse_duration(f"{number}{unit}") == pytest.approx(number * size)


@pytest.mark.parametrize("value", [10**400, "3650000000h", 10**12])
def test_parse_duration_refuses_absurd_sizes(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@settings(deadline=None)  # parsing speed is the machine's, not a property
@given(st.text(max_size=12))
def test_parse_duration_only_ever_raises_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert seconds >= 0 and math.isfinite(seconds)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("server", "grace_period", "0s", "server.grace_period: must be greater than 0"),
        ("store", "timeout", 0, "store.timeout: must be greater than 0"),
        ("store", "local_cache_ttl", "-1s", "store.local_cache_ttl: invalid duration"),
    ],
)
def test_duration_bounds(section: str, key: str, value: object, message: str) -> None:
    data = base()
    data[section] = {key: value}
    assert any(line.startswith(message) for line in errors_of(data))


# --- broken configurations: each names its key path -------------------------------------


def _set(path: str, value: Any) -> Any:
    """A mutation of base() setting the dotted path (ints index lists); DELETE removes."""

    def apply(data: dict[str, Any]) -> None:
        parts: list[str | int] = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = data
        for part in parts[:-1]:
            node = node[part]
        if value is DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value

    return apply


DELETE = object()

BROKEN = [
    ("unknown top-level key", [_set("colour", "blue")], "colour: unknown key"),
    (
        "unknown nested key",
        [_set("applications.0.oidc.colour", "blue")],
        "applications[0].oidc.colour: unknown key",
    ),
    (
        "unknown key in a receiver",
        [_set("applications.0.receive", {"basic": {"verfy": "password"}})],
        "applications[0].receive.basic.verfy: unknown key",
    ),
    (
        "bad duration",
        [_set("applications.0.receive", {"cache_ttl": "abc"})],
        "applications[0].receive.cache_ttl: invalid duration 'abc'",
    ),
    ("short secret", [_set("secret", "short")], "secret: must be at least 32 bytes"),
    ("missing secret", [_set("secret", DELETE)], "secret: required key is missing"),
    (
        "no applications",
        [_set("applications", [])],
        "applications: at least one application is required",
    ),
    (
        "duplicate app names",
        [_set("applications.1.name", "app")],
        "applications[1].name: duplicate application name 'app'",
    ),
    (
        "bad app name",
        [_set("applications.0.name", "My App")],
        "applications[0].name: must match [a-z0-9-]+",
    ),
    (
        "bad regex",
        [_set("applications.0.skip_path_regex", ["^/ok$", "(unclosed"])],
        "applications[0].skip_path_regex[1]: invalid regular expression",
    ),
    (
        "unsupported store URL",
        [_set("store", {"url": "mongodb://db:27017"})],
        "store.url: unsupported store URL",
    ),
    (
        "malformed sentinel URL",
        [_set("store", {"url": "redis+sentinel://h:26379"})],
        "store.url: redis+sentinel://",
    ),
    (
        "workers > 1 with memory",
        [_set("server", {"workers": 2})],
        "server.workers: workers > 1 needs a shared store",
    ),
    ("workers < 1", [_set("server", {"workers": 0})], "server.workers: "),
    (
        "missing oidc issuer",
        [_set("applications.0.oidc.issuer", DELETE)],
        "applications[0].oidc.issuer: required key is missing",
    ),
    (
        "missing oidc client_id",
        [_set("applications.0.oidc.client_id", DELETE)],
        "applications[0].oidc.client_id: required key is missing",
    ),
    (
        "issuer not http",
        [_set("applications.0.oidc.issuer", "idp.example.com")],
        "applications[0].oidc.issuer: must start with http:// or https://",
    ),
    (
        "verifier needing oidc without oidc",
        [_set("applications.1.receive", {"bearer": {"verify": "jwt"}})],
        "applications[1].receive.bearer.verify: 'jwt' needs oidc",
    ),
    (
        "authentik verifier without oidc",
        [_set("applications.1.receive", {"basic": {"verify": "authentik"}})],
        "applications[1].receive.basic.verify: 'authentik' needs oidc",
    ),
    (
        "directory verifier without directory",
        [_set("directory", DELETE)],
        "applications[1].receive.basic.verify: 'directory' needs a top-level directory",
    ),
    (
        "explicit directory verifier without directory",
        [
            _set("directory", DELETE),
            _set("applications", [base()["applications"][0]]),
            _set("applications.0.receive", {"bearer": {"verify": "directory"}}),
        ],
        "applications[0].receive.bearer.verify: 'directory' needs a top-level directory",
    ),
    (
        "password verifier without client secret",
        [
            _set("applications.0.oidc.client_secret", DELETE),
            _set("applications.0.receive", {"basic": {"verify": "password"}}),
        ],
        "applications[0].oidc.client_secret: required because receive.basic.verify is password",
    ),
    (
        "auto bearer verifier without client secret",
        [_set("applications.0.oidc.client_secret", DELETE)],
        "applications[0].oidc.client_secret: required because receive.bearer.verify is auto",
    ),
    (
        "external_host with a path",
        [_set("applications.0.external_host", "https://app.example.com/app")],
        "applications[0].external_host: must be scheme://host[:port], without a path",
    ),
    (
        "external_host without scheme",
        [_set("applications.0.external_host", "app.example.com")],
        "applications[0].external_host: must start with http:// or https://",
    ),
    (
        "external_host with a query",
        [_set("applications.0.external_host", "https://app.example.com/?a=b")],
        "applications[0].external_host: must not have a query",
    ),
    (
        "a host with a port",
        [_set("applications.0.hosts", ["ok.example.com", "app.example.com:8443"])],
        "applications[0].hosts[1]: ",
    ),
    (
        "two apps on the same host and port",
        [_set("applications.1.external_host", "https://app.example.com")],
        "applications[1].external_host: host app.example.com port 443 is already served",
    ),
    (
        "cookie_domain not containing the host",
        [_set("applications.0.cookie_domain", ".example.org")],
        "applications[0].cookie_domain: '.example.org' does not contain app.example.com",
    ),
    (
        "user group not defined",
        [_set("directory.users.0.groups", ["admins", "ghosts"])],
        "directory.users[0].groups[1]: group 'ghosts' is not defined",
    ),
    (
        "duplicate usernames",
        [_set("directory.users", [{"username": "a"}, {"username": "a"}])],
        "directory.users[1].username: duplicate username 'a'",
    ),
    (
        "plain password instead of a hash",
        [_set("directory.users.0.tokens", ["plain-token-value"])],
        "directory.users[0].tokens[0]: not an argon2id hash",
    ),
    (
        "argon2i (not id) hash",
        [_set("directory.users.0.app_passwords", [HASH.replace("$argon2id$", "$argon2i$")])],
        "directory.users[0].app_passwords[0]: not an argon2id hash",
    ),
    (
        "both secret and secret_file",
        [_set("secret_file", "/etc/hostname")],
        "secret_file: give either secret or secret_file, not both",
    ),
    (
        "unreadable secret file",
        [_set("secret", DELETE), _set("secret_file", "/nonexistent/ext-authz-secret")],
        "secret_file: cannot read /nonexistent/ext-authz-secret",
    ),
    (
        "unreadable client secret file",
        [
            _set("applications.0.oidc.client_secret", DELETE),
            _set("applications.0.oidc.client_secret_file", "/nonexistent/cs"),
        ],
        "applications[0].oidc.client_secret_file: cannot read /nonexistent/cs",
    ),
    (
        "unset env var",
        [_set("applications.0.oidc.client_secret", "${TEST_UNSET_VARIABLE_X}")],
        "applications[0].oidc.client_secret: environment variable TEST_UNSET_VARIABLE_X is not set",
    ),
    (
        "malformed env reference",
        [_set("store", {"key_prefix": "${not closed"})],
        "store.key_prefix: invalid ${...} reference",
    ),
    (
        "bad enum value",
        [_set("applications.0.unauthenticated", "maybe")],
        "applications[0].unauthenticated: Input should be",
    ),
    (
        "bad listen address",
        [_set("server", {"listen": "9191"})],
        "server.listen: expected HOST:PORT",
    ),
    ("section not a mapping", [_set("server", "fast")], "server: must be a mapping"),
    ("list not a list", [_set("applications", "app")], "applications: must be a list"),
    (
        "scopes without openid",
        [_set("applications.0.oidc.scopes", ["profile"])],
        "applications[0].oidc.scopes: must include openid",
    ),
    (
        "additional header with an underscore",
        [_set("applications.1.send", {"additional_headers": ["X-Team", "X_Team"]})],
        "applications[1].send.additional_headers[1]: 'X_Team' must not contain '_'",
    ),
    (
        "additional header that is ours",
        [_set("applications.0.send", {"additional_headers": ["X-authentik-username"]})],
        "applications[0].send.additional_headers[0]: 'X-authentik-username' is one of",
    ),
    (
        "additional header that is a credential",
        [_set("applications.0.send", {"additional_headers": ["authorization"]})],
        "applications[0].send.additional_headers[0]: 'authorization' is a credential",
    ),
    (
        "additional header that is hop-by-hop",
        [_set("applications.0.send", {"additional_headers": ["Connection"]})],
        "applications[0].send.additional_headers[0]: 'Connection' is a credential, framing or "
        "hop-by-hop header",
    ),
    (
        "additional header that is not a token",
        [_set("applications.0.send", {"additional_headers": ["X Team"]})],
        "applications[0].send.additional_headers[0]: 'X Team' is not a header name",
    ),
    (
        "additional headers not a list",
        [_set("applications.0.send", {"additional_headers": "X-Team"})],
        "applications[0].send.additional_headers: must be a list",
    ),
]


@pytest.mark.parametrize(
    ("mutations", "expected"), [(m, e) for _, m, e in BROKEN], ids=[n for n, _, _ in BROKEN]
)
def test_broken_config_names_the_key(mutations: list[Any], expected: str) -> None:
    data = copy.deepcopy(base())
    for mutate in mutations:
        mutate(data)
    lines = errors_of(data)
    assert any(line.startswith(expected) for line in lines), lines


def test_every_error_line_is_key_path_colon_message() -> None:
    lines = load_errors("broken_many.yaml")
    assert len(lines) >= 4
    for line in lines:
        assert "\n" not in line
        assert re.match(r"^[a-z_]+(\[\d+\]|\.[a-z_]+)*: \S", line), line
    joined = "\n".join(lines)
    for key in ("secret: ", "colour: unknown key", "server.workers: ", "store.url: "):
        assert key in joined
    assert "applications[0].receive.cache_ttl: invalid duration 'soon'" in joined
    assert "mongo-pass-123" not in joined


def test_cross_field_errors_are_reported_together() -> None:
    joined = "\n".join(load_errors("broken_cross.yaml"))
    assert "server.workers: " in joined
    assert "applications[1].name: duplicate application name 'dup'" in joined


def load_errors(name: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(CONFIGS / name, environ={})
    return info.value.errors


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("broken_yaml.yaml", "YAML syntax error at line"),
        ("broken_list.yaml", "expected a mapping at the top level, got list"),
        ("empty.yaml", "the file is empty"),
        ("broken_duplicate_key.yaml", "duplicate key 'secret'"),
        ("does-not-exist.yaml", "cannot read"),
        ("broken_env.yaml", "secret: environment variable TEST_EXT_AUTHZ_UNSET_VARIABLE"),
    ],
)
def test_file_level_errors(name: str, expected: str) -> None:
    lines = load_errors(name)
    assert any(expected in line for line in lines), lines
    assert all("yaml-line-secret" not in line for line in lines)


def test_env_errors_name_every_unset_variable() -> None:
    joined = "\n".join(load_errors("broken_env.yaml"))
    assert "applications[0].oidc.client_secret: environment variable TEST_EXT_AUTHZ_UNSET_2" in (
        joined
    )


def test_validation_errors_never_carry_the_input() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(secret=SecretStr("short-secret-value"), applications=())
    assert "short-secret-value" not in str(info.value)


# --- store URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "hosts", "db", "password"),
    [
        ("memory://", "memory", (), 0, None),
        ("redis://h", "redis", (("h", 6379),), 0, None),
        ("redis://:pw@h:1/2", "redis", (("h", 1),), 2, "pw"),
        ("rediss://u:p%40ss@[::1]:6380", "redis", (("::1", 6380),), 0, "p@ss"),
        (
            "redis+sentinel://a:1,b/master/3",
            "sentinel",
            (("a", 1), ("b", 26379)),
            3,
            None,
        ),
        ("redis+cluster://a:7000,b:7001", "cluster", (("a", 7000), ("b", 7001)), 0, None),
    ],
)
def test_store_urls(
    url: str, kind: str, hosts: tuple[tuple[str, int], ...], db: int, password: str | None
) -> None:
    parsed = parse_store_url(url)
    assert (parsed.kind, parsed.hosts, parsed.db, parsed.password) == (kind, hosts, db, password)
    assert parsed.tls is url.startswith("rediss:")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw123@h:1/0", "redis://:**redacted**@h:1/0"),
        ("redis://user:pw123@h", "redis://user:**redacted**@h"),
        ("redis://pw123@h", "redis://**redacted**@h"),
        ("redis://h/0?password=pw123&db=1", "redis://h/0?password=**redacted**&db=1"),
        ("redis+sentinel://:pw123@a:1,b:2/m/0", "redis+sentinel://:**redacted**@a:1,b:2/m/0"),
        ("memory://", "memory://"),
    ],
)
def test_redact_store_url(url: str, shown: str) -> None:
    assert redact_store_url(url) == shown


# --- redaction --------------------------------------------------------------------------


def test_redacted_hides_every_secret() -> None:
    settings = load_settings(CONFIGS / "good.yaml", environ={})
    data = redacted(settings)
    text = yaml.safe_dump(data)
    for secret in (
        "top-secret-value",
        "client-secret-c0ffee",
        "redis-pass-5f0e",
        "$argon2id$",
        "attr-pass-91c2",
        "attr-token-77aa",
    ):
        assert secret not in text
    assert data["secret"] == REDACTED
    assert data["applications"][0]["oidc"]["client_secret"] == REDACTED
    user = data["directory"]["users"][0]
    assert user["app_passwords"] == [REDACTED] and user["tokens"] == [REDACTED]
    assert user["attributes"] == {"upstream_pw": REDACTED, "api_token": REDACTED}
    assert data["directory"]["groups"]["admins"]["attributes"]["app_username"] == "admin"
    assert data["store"]["url"].startswith("redis+sentinel://:**redacted**@127.0.0.1:26379")
    # Plain data all the way down: it dumps with the safe dumper and reloads equal.
    assert yaml.safe_load(text) == data
    assert data["applications"][0]["receive"]["basic"]["verify"] == "authentik"


def test_unreadable_yaml_values_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("server: {workers: " + "9" * 5000 + "}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "cannot be read" in info.value.errors[0]
    assert "9999" not in info.value.errors[0]


# --- static tokens: hashes that carry their keyed lookup digest (SPEC §5) -------------


def test_token_hashes_must_be_made_for_this_secret() -> None:
    fast = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    good = hash_token(SECRET.encode(), "t-1", fast)
    data = base()
    data["directory"]["users"][0]["tokens"] = [good]
    assert parse_settings(data, {}).directory is not None
    # A random salt (plain hash-password), another secret, or the same token twice.
    data["directory"]["users"].append(
        {
            "username": "bob",
            "tokens": [
                fast.hash("t-2"),
                hash_token(b"another-secret-0123456789abcdef-0123", "t-3", fast),
                hash_token(SECRET.encode(), "t-1", fast),
            ],
        }
    )
    assert errors_of(data) == [
        "directory.users[1].tokens[0]: not a token hash made for this secret (static tokens "
        "are looked up by a keyed digest: make the hash with `ext-authz hash-password "
        "--token -c CONFIG`, again after changing `secret`)",
        "directory.users[1].tokens[1]: not a token hash made for this secret (static tokens "
        "are looked up by a keyed digest: make the hash with `ext-authz hash-password "
        "--token -c CONFIG`, again after changing `secret`)",
        "directory.users[1].tokens[2]: the same token as directory.users[0].tokens[0]",
    ]


def test_load_secret_reads_only_the_secret(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(SECRET + "\n")
    config = tmp_path / "c.yaml"
    config.write_text("secret_file: ${DIR}/s\ndirectory: {users: [{tokens: [old]}]}\n")
    assert load_secret(config, {"DIR": str(tmp_path)}) == SECRET.encode()
    config.write_text("secret: short\n")
    with pytest.raises(ConfigError, match="secret: must be at least 32 bytes long"):
        load_secret(config, {})
    config.write_text("applications: []\n")
    with pytest.raises(ConfigError, match="secret: required key is missing"):
        load_secret(config, {})
