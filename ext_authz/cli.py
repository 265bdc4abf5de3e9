"""The command line (SPEC §2): `serve`, `check-config` and `hash-password`.

Owns argument parsing and exit codes: 0 on success, 2 for a bad configuration or bad
input. A configuration problem is printed as `config error:` and one `key.path: message`
line per problem, never a traceback, and nothing printed ever holds a secret.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from argon2 import PasswordHasher

from ext_authz.config import (
    Settings,
    load_secret,
    load_settings,
    outpost_environment,
    redacted,
    redacted_application,
    settings_from_environment,
)
from ext_authz.crypto import hash_token
from ext_authz.errors import AuthentikRefused, AuthentikUnavailable, ConfigError

__all__ = ["main"]

EXIT_OK = 0
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command = args.command
    if command == "check-config":
        return _check_config(args.config)
    if command == "hash-password":
        if args.token and not args.config:
            print("hash-password: --token needs -c CONFIG (its secret keys it)", file=sys.stderr)
            return EXIT_USAGE
        return _hash_password(args.config if args.token else None)
    return _serve(args.config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ext-authz",
        description="Envoy external authorization with authentik-style header authentication.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the gRPC service and the HTTP port")
    serve.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="YAML config (without it: an authentik outpost from AUTHENTIK_HOST and "
        "AUTHENTIK_TOKEN)",
    )
    check = commands.add_parser(
        "check-config", help="validate a config and print it with secrets redacted"
    )
    check.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="YAML config (without it: the environment-only start of an authentik outpost)",
    )
    hashing = commands.add_parser(
        "hash-password", help="read a password on stdin, print its argon2id hash"
    )
    hashing.add_argument(
        "--token",
        action="store_true",
        help="hash a static bearer token (directory.users.tokens): its hash carries a lookup "
        "key made with the config's secret",
    )
    hashing.add_argument("-c", "--config", metavar="FILE", help="YAML config (with --token)")
    return parser


def _load(path: str | None) -> Settings | None:
    """The settings from the file, or without one from the environment (an outpost)."""
    try:
        if path is None:
            return settings_from_environment()
        return load_settings(path)
    except ConfigError as exc:
        lines = exc.errors
    except Exception as exc:  # the promise: no traceback, exit 2
        # The message is left out: it is not ours and could quote a secret.
        lines = [f"{path}: unexpected {type(exc).__name__} while loading (a bug; please report)"]
    print("config error:", file=sys.stderr)
    for line in lines:
        print(line, file=sys.stderr)
    return None


def _check_config(path: str | None) -> int:
    settings = _load(path)
    if settings is None:
        return EXIT_USAGE
    data = redacted(settings)
    if settings.authentik is not None:
        # Outpost mode: the applications authentik's providers become, as a refresh
        # would build them (secrets redacted); authentik must answer.
        outcome = _outpost_applications(settings)
        if isinstance(outcome, str):
            print(f"authentik: {outcome}", file=sys.stderr)
            return EXIT_USAGE
        applications, problems = outcome
        data["applications"] = [redacted_application(app) for app in applications]
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
    return EXIT_OK


def _outpost_applications(settings: Settings) -> tuple[list[Any], list[str]] | str:
    """The outpost's applications and the problems met, or why authentik did not say."""
    import asyncio

    from ext_authz.adapters.authentik import AuthentikClient
    from ext_authz.outpost import Composer

    assert settings.authentik is not None
    client = AuthentikClient(settings.authentik)

    async def fetch() -> Any:
        try:
            return await client.fetch()
        finally:
            await client.close()

    try:
        fetched = asyncio.run(fetch())
    except AuthentikRefused:
        return "the outpost token was refused (401/403)"
    except AuthentikUnavailable as exc:
        return f"unreachable ({exc})"
    applications, problems = Composer(settings.applications, settings.provider_settings)(
        fetched.providers
    )
    return applications, [*fetched.problems, *problems]


def _hash_password(token_config: str | None = None) -> int:
    secret = b""
    if token_config is not None:
        try:
            secret = load_secret(token_config)
        except ConfigError as exc:
            print("config error:", file=sys.stderr)
            for line in exc.errors:
                print(line, file=sys.stderr)
            return EXIT_USAGE
    stdin = sys.stdin
    if stdin is None:
        print("hash-password: no standard input", file=sys.stderr)
        return EXIT_USAGE
    if stdin.isatty():
        password = getpass.getpass("Token: " if token_config else "Password: ")
    else:
        raw = stdin.buffer.readline()
        try:
            password = raw.decode("utf-8")
        except UnicodeDecodeError:
            print("hash-password: the password is not UTF-8", file=sys.stderr)
            return EXIT_USAGE
        password = password.removesuffix("\n").removesuffix("\r")
    if not password:
        print("hash-password: refusing an empty password", file=sys.stderr)
        return EXIT_USAGE
    print(hash_token(secret, password) if token_config else PasswordHasher().hash(password))
    return EXIT_OK


def _serve(path: str | None) -> int:
    if path is None and not outpost_environment(os.environ):
        print(
            "serve: give -c CONFIG, or set AUTHENTIK_HOST and AUTHENTIK_TOKEN to run as an "
            "authentik outpost",
            file=sys.stderr,
        )
        return EXIT_USAGE
    settings = _load(path)
    if settings is None:
        return EXIT_USAGE
    # Imported late: check-config and hash-password need none of the server's imports.
    from ext_authz.server import serve  # type: ignore[import-not-found, unused-ignore]

    reload = (
        functools.partial(load_settings, path)
        if path is not None
        else functools.partial(settings_from_environment, None)
    )
    result = serve(settings, reload)
    return result if isinstance(result, int) else EXIT_OK
