"""The command line, run as `python -m ext_authz` in a subprocess: exit codes and output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from argon2 import PasswordHasher, Type, extract_parameters

from ext_authz.cli import main
from ext_authz.crypto import token_hash_salt, token_lookup_salt

ROOT = Path(__file__).parents[2]
CONFIGS = Path(__file__).parent / "configs"

# Every secret value in the fixtures; none may ever be printed.
SECRETS = (
    "top-secret-value-0123456789abcdefghij",
    "client-secret-c0ffee",
    "redis-pass-5f0e",
    "$argon2id$",
    "attr-pass-91c2",
    "mongo-pass-123",
    "too-short-secret",
    "yaml-line-secret",
    "client-secret-dup",
)


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TEST_EXT_AUTHZ")}
    environ.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "ext_authz", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_clean(*outputs: str) -> None:
    for output in outputs:
        assert "Traceback" not in output
        for secret in SECRETS:
            assert secret not in output


def test_check_config_prints_the_redacted_effective_config() -> None:
    code, out, err = run("check-config", "-c", str(CONFIGS / "good.yaml"))
    assert code == 0, err
    assert_clean(out, err)
    effective = yaml.safe_load(out)
    assert effective["secret"] == "**redacted**"
    assert effective["server"]["workers"] == 4
    assert effective["store"]["url"].startswith("redis+sentinel://:**redacted**@")
    whoami, local = effective["applications"]
    assert whoami["oidc"]["client_secret"] == "**redacted**"
    assert whoami["receive"]["basic"]["verify"] == "authentik"
    assert local["receive"]["bearer"]["verify"] == "directory"
    assert whoami["receive"]["header_session_lifetime"] == 3600.0


def test_check_config_substitutes_the_environment(tmp_path: Path) -> None:
    value = "env-secret-value-abcdefghijklmnopqrstuvwxyz"
    # Without the token: its hash is bound to the file's default secret.
    config = tmp_path / "good.yaml"
    text = (CONFIGS / "good.yaml").read_text()
    config.write_text(re.sub(r"^ *tokens: .*\n", "", text, flags=re.MULTILINE))
    code, out, err = run("check-config", "-c", str(config),
                         env={"TEST_EXT_AUTHZ_SECRET": value})  # fmt: skip
    assert code == 0, err
    assert value not in out and value not in err


def test_check_config_reads_secret_files(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("file-secret-value-abcdefghijklmnopqrstuvwxyz\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"secret_file: {tmp_path / 'secret'}\n"
        "applications: [{name: a, external_host: 'https://a.example.com',"
        " receive: {basic: {enabled: false}, bearer: {enabled: false}}}]\n"
    )
    code, out, err = run("check-config", "-c", str(config))
    assert code == 0, err
    assert "file-secret-value" not in out + err


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("broken_many.yaml", "applications[0].receive.cache_ttl: invalid duration 'soon'"),
        ("broken_many.yaml", "colour: unknown key"),
        ("broken_many.yaml", "store.url: unsupported store URL"),
        ("broken_cross.yaml", "applications[1].name: duplicate application name"),
        ("broken_env.yaml", "secret: environment variable TEST_EXT_AUTHZ_UNSET_VARIABLE"),
        ("broken_yaml.yaml", "YAML syntax error at line"),
        ("broken_list.yaml", "expected a mapping"),
        ("empty.yaml", "the file is empty"),
        ("broken_duplicate_key.yaml", "duplicate key 'secret'"),
        ("no-such-file.yaml", "cannot read"),
    ],
)
def test_check_config_errors_exit_2_without_traceback(name: str, expected: str) -> None:
    code, out, err = run("check-config", "-c", str(CONFIGS / name))
    assert code == 2
    assert out == ""
    assert err.startswith("config error:\n")
    assert expected in err
    assert_clean(out, err)


def test_unreadable_config_is_a_clean_error(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory.yaml"
    directory.mkdir()
    code, out, err = run("check-config", "-c", str(directory))
    assert code == 2 and "config error:" in err and "cannot read" in err
    assert_clean(out, err)


def test_serve_with_a_bad_config_exits_2_before_starting() -> None:
    code, out, err = run("serve", "-c", str(CONFIGS / "broken_many.yaml"))
    assert code == 2
    assert "config error:" in err and "colour: unknown key" in err
    assert_clean(out, err)


@pytest.mark.parametrize("password", ["correct horse battery staple", "  spaced  ", "ünï:cødé"])
def test_hash_password_round_trip(password: str) -> None:
    code, out, err = run("hash-password", stdin=password + "\n")
    assert code == 0, err
    digest = out.strip()
    assert digest.startswith("$argon2id$")
    assert extract_parameters(digest).type is Type.ID
    assert PasswordHasher().verify(digest, password)
    assert password not in out + err


def test_hash_password_without_trailing_newline() -> None:
    code, out, _ = run("hash-password", stdin="no-newline")
    assert code == 0
    assert PasswordHasher().verify(out.strip(), "no-newline")


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_hash_password_refuses_empty(stdin: str) -> None:
    code, out, err = run("hash-password", stdin=stdin)
    assert code == 2
    assert out == "" and "empty" in err
    assert "Traceback" not in err


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["check-config"]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0
    assert "check-config" in capsys.readouterr().out


def test_hash_password_token_is_keyed_by_the_configs_secret(tmp_path: Path) -> None:
    secret = "cli-token-secret-0123456789abcdefghij"
    config = tmp_path / "c.yaml"
    config.write_text("secret: ${TEST_EXT_AUTHZ_SECRET}\n")
    env = {"TEST_EXT_AUTHZ_SECRET": secret}
    code, out, err = run("hash-password", "--token", "-c", str(config), stdin="tok-1\n", env=env)
    assert code == 0, err
    digest = out.strip()
    assert PasswordHasher().verify(digest, "tok-1")
    salt = token_hash_salt(digest)
    assert salt == token_lookup_salt(secret.encode(), "tok-1")  # the token finds it
    assert "tok-1" not in out + err and secret not in out + err
    # Without a config there is no key; with a broken one, its error.
    code, _, err = run("hash-password", "--token", stdin="tok-1\n")
    assert code == 2 and "needs -c CONFIG" in err
    config.write_text("secret: short\n")
    code, _, err = run("hash-password", "--token", "-c", str(config), stdin="tok-1\n")
    assert code == 2 and "secret: must be at least 32 bytes" in err
