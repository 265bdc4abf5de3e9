"""Property tests of the config loader (SPEC §2, §3): whatever the file holds, the answer
is a Settings or a ConfigError, and `check-config` exits 0 or 2 without a traceback.

Three sources of input: random YAML-ish mappings (nested, random keys and values of
random types); mutations of a valid config (keys dropped, values of the wrong type,
random durations and URLs, `_file` secrets pointing anywhere); and random text run
through `ext_authz.cli.main(["check-config", ...])` in-process.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ext_authz.cli import main
from ext_authz.config import Settings, parse_settings
from ext_authz.errors import ConfigError

CONFIGS = Path(__file__).parent / "configs"
GOOD_TEXT = (CONFIGS / "good.yaml").read_text()
GOOD: dict[str, Any] = yaml.safe_load(GOOD_TEXT)
# The fuzzer substitutes another secret (ENVIRON), and a static token's hash is bound to
# the secret it was made for: the mutations start from a directory without tokens.
for _user in GOOD["directory"]["users"]:
    _user["tokens"] = []
# Secrets of good.yaml that check-config must never print. (Not `attr-pass-91c2`: it is
# secret only while an application names `upstream_pw` as its password_attribute, and a
# mutation may drop that application.)
GOOD_SECRETS = (
    "top-secret-value-0123456789abcdefghij",
    "redis-pass-5f0e",
    "attr-token-77aa",
    "client-secret-c0ffee",
)
ENVIRON = {"TEST_EXT_AUTHZ_SECRET": "env-secret-value-0123456789abcdefghijklmn"}

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

KNOWN_KEYS = (
    "server",
    "listen",
    "http_listen",
    "workers",
    "grace_period",
    "log_level",
    "log_format",
    "secret",
    "secret_file",
    "store",
    "url",
    "key_prefix",
    "timeout",
    "local_cache_ttl",
    "directory",
    "groups",
    "users",
    "username",
    "email",
    "name",
    "attributes",
    "app_passwords",
    "tokens",
    "applications",
    "external_host",
    "hosts",
    "cookie_domain",
    "oidc",
    "issuer",
    "client_id",
    "client_secret",
    "client_secret_file",
    "client_auth",
    "scopes",
    "attributes_claim",
    "skip_path_regex",
    "unauthenticated",
    "session_lifetime",
    "intercept_header_auth",
    "receive",
    "basic",
    "bearer",
    "enabled",
    "verify",
    "audiences",
    "cache_ttl",
    "negative_cache_ttl",
    "create_session",
    "header_session_lifetime",
    "send",
    "username_attribute",
    "password_attribute",
    "identity_headers",
    "additional_headers",
    "strip_session_cookie",
)
DURATION_KEYS = frozenset(
    {
        "grace_period",
        "timeout",
        "local_cache_ttl",
        "session_lifetime",
        "cache_ttl",
        "negative_cache_ttl",
        "header_session_lifetime",
    }
)
URL_KEYS = frozenset({"url", "external_host", "issuer", "listen", "http_listen", "cookie_domain"})

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=24)
    | st.sampled_from(["", "${NOPE}", "${X:-5s}", "$${lit}", "${", "yes", "0", "-1", "1e309"])
)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=12) | st.integers(-3, 3) | st.booleans()
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=24,
)
durations = (
    st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(
        [
            "5s",
            "300ms",
            "1h30m",
            "10m",
            "24h",
            "0",
            "0s",
            "-1s",
            "1e3",
            "nan",
            "inf",
            "5 s",
            "5S",
            "1d",
            ".5s",
            "5.s",
            "",
            " 7s ",
            "ms",
            "10" * 200,
            10**400,
            -(10**400),
        ]
    )
    | st.text(alphabet="0123456789.smh -e", max_size=12)
)
urls = st.sampled_from(
    [
        "memory://", "redis://127.0.0.1:6379/0", "redis://:pw@h:1/99999", "rediss://h",
        "redis+sentinel://a:1,b:2/master/0", "redis+cluster://a:1,b:2", "redis://h:99999",
        "redis://[::1]:6379/0", "redis://h:-1", "http://x", "https://x.example.com:0",
        "https://x.example.com:65536", "https://", "ftp://x", "//x", "127.0.0.1:9191",
        "127.0.0.1:", ":9191", "[::1]:9191", "x:y:z", "http://a b", "https://é.example",
        "https://x.example.com/path?q#f", "http://user:pw@x.example.com", "\x00", "",
    ]
) | st.builds(lambda s, r: f"{s}://{r}", st.sampled_from(["http", "https", "redis", "x"]),
              st.text(max_size=20))  # fmt: skip


def _check(data: Any) -> Settings | None:
    """parse_settings may return a Settings or raise ConfigError; nothing else."""
    try:
        result = parse_settings(data, environ=ENVIRON)
    except ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors), exc.errors
        return None
    assert isinstance(result, Settings)
    _assert_sane(result)
    return result


def _assert_sane(s: Settings) -> None:
    """A Settings that loaded has usable values: durations finite and not negative."""
    found = [s.server.grace_period, s.store.timeout, s.store.local_cache_ttl]
    for app in s.applications:
        found += [app.session_lifetime, app.receive.cache_ttl, app.receive.negative_cache_ttl]
        if app.oidc is not None:
            found.append(app.oidc.timeout)
    for seconds in found:
        assert isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0, found
    assert s.server.grace_period > 0 and s.store.timeout > 0


def test_the_base_config_is_valid() -> None:
    assert _check(copy.deepcopy(GOOD)) is not None


# -- random mappings -----------------------------------------------------------------------


@FUZZ
@given(st.dictionaries(keys, values, max_size=8))
def test_random_mappings_give_settings_or_config_error(data: dict[Any, Any]) -> None:
    _check(data)


@FUZZ
@given(values)
def test_random_top_level_values_give_config_error(data: Any) -> None:
    if not isinstance(data, dict):
        with pytest.raises(ConfigError):
            parse_settings(data, environ=ENVIRON)
    else:
        _check(data)


# -- mutations of a valid config -----------------------------------------------------------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    node = data
    for part in path[:-1]:
        node = node[part]
    return node


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(data, path)
        key = path[-1]
        op = draw(st.sampled_from(["drop", "value", "typed", "add", "file"]))
        if op == "drop":
            del parent[key]
        elif op == "value":
            parent[key] = draw(values)
        elif op == "typed":
            name = key if isinstance(key, str) else ""
            if name in DURATION_KEYS:
                parent[key] = draw(durations)
            elif name in URL_KEYS:
                parent[key] = draw(urls)
            else:
                parent[key] = draw(scalars)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        elif op == "file" and isinstance(parent, dict):
            # `<name>_file` secrets: a missing file, a directory, a device, binary bytes.
            target = draw(st.sampled_from(["secret_file", "client_secret_file"]))
            parent[target] = draw(
                st.sampled_from(
                    [
                        "/nonexistent/secret",
                        "/",
                        "/dev/null",
                        str(CONFIGS / "good.yaml"),
                        str(CONFIGS),
                        "",
                        "relative/secret",
                        "\x00",
                    ]
                )
            )
    return data


@FUZZ
@given(mutated())
@example({**copy.deepcopy(GOOD), "server": {**GOOD["server"], "grace_period": 10**400}})
@example({**copy.deepcopy(GOOD), "store": {**GOOD["store"], "timeout": -(10**400)}})
def test_mutated_configs_give_settings_or_config_error(data: dict[str, Any]) -> None:
    _check(data)


# -- the command line, in-process ----------------------------------------------------------


def _run_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes
) -> tuple[int, str, str]:
    path = tmp_path / "fuzz.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    capsys.readouterr()
    code = main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_clean(code: int, out: str, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in out + err
    # cli.py's last resort when load_settings raised something else than ConfigError.
    assert "(a bug; please report)" not in err, err
    if code == 0:
        for secret in GOOD_SECRETS:
            assert secret not in out, "check-config printed a secret"
    else:
        assert err.startswith("config error:"), err


yaml_texts = (
    st.builds(lambda d: yaml.safe_dump(d, allow_unicode=True, sort_keys=False), mutated())
    | st.builds(lambda d: yaml.safe_dump(d, allow_unicode=True), st.dictionaries(keys, values))
    | st.text(max_size=200)
    | st.binary(max_size=200)
    | st.sampled_from(
        [
            "",
            "---\n",
            "- a\n- b\n",
            "a: [\n",
            "a: *nope\n",
            "!!python/object:os.system x\n",
            "a: &x [*x]\n",
            "a: 1\na: 2\n",
            "? [a, b]\n: c\n",
            "server: {workers: %s}\n" % ("9" * 5000),
            "server:\n  grace_period: %s\n" % ("1" * 400),
            "\ufeffsecret: x\n",
            "a: !!binary AAAA\n",
            "a: !!timestamp 2001-12-14\n",
            "<<: {a: 1}\n",
            "\x00\x01",
        ]
    )
)


@FUZZ
@given(yaml_texts)
def test_check_config_exits_0_or_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes
) -> None:
    _assert_clean(*_run_check_config(tmp_path, capsys, text))


def test_check_config_on_the_base_config_prints_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run_check_config(tmp_path, capsys, GOOD_TEXT)
    assert code == 0, err
    _assert_clean(code, out, err)
