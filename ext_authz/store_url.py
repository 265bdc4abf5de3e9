"""The store URL (SPEC §3 `store.url`): its parts, and its redacted form.

Owned here, apart from the config tree, because two places read it: the config
validates it at start-up, and the Redis adapter connects with its parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote

__all__ = ["HOST_NAME", "REDACTED", "StoreURL", "parse_store_url", "redact_store_url"]

REDACTED = "**redacted**"
# A host name as config and store URLs accept it (letters, digits, _ . -).
HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?", re.IGNORECASE)


@dataclass(frozen=True)
class StoreURL:
    """The parts of `store.url`. `kind` picks the store; `hosts` are (host, port) pairs."""

    kind: Literal["memory", "redis", "sentinel", "cluster"]
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    master_name: str = ""
    # Extra redis-py options from the query string (e.g. ssl_cert_reqs), as given.
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)


_STORE_SCHEMES = "memory://, redis://, rediss://, redis+sentinel:// or redis+cluster://"


def _parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed [ in a host")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("a host must be HOST[:PORT]")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
        if not HOST_NAME.fullmatch(host):
            raise ValueError("a host must be HOST[:PORT]")
    if not host:
        raise ValueError("a host name is missing")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError("a port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_store_url(url: str) -> StoreURL:
    """Split a store URL into its parts; ValueError (never echoing a password) if malformed.

    memory://                                         the embedded, single-process store
    redis://[[user]:password@]host[:port][/db]        (rediss:// for TLS)
    redis+sentinel://[[user]:password@]host:port,host:port/MASTER_NAME[/db]
    redis+cluster://[[user]:password@]host:port,host:port
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in {"memory", "redis", "rediss", "redis+sentinel", "redis+cluster"}:
        raise ValueError(f"unsupported store URL; expected {_STORE_SCHEMES}")
    if scheme == "memory":
        if rest:
            raise ValueError("memory:// takes nothing after the scheme")
        return StoreURL(kind="memory")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        if colon:
            username, password = (unquote(user) or None), unquote(secret)
        else:
            username = unquote(user) or None
    options = tuple(parse_qsl(query, keep_blank_values=True))
    if not hostlist:
        raise ValueError(f"{scheme}:// needs a host")
    default_port = 26379 if scheme == "redis+sentinel" else 6379
    hosts = tuple(_parse_host_port(h, default_port) for h in hostlist.split(","))
    if scheme in {"redis", "rediss"}:
        if len(hosts) != 1:
            raise ValueError(f"{scheme}:// takes one host (use redis+cluster:// for several)")
        if path and not path.isdigit():
            raise ValueError(f"{scheme}://host:port/DB: the database must be a number")
        return StoreURL(
            kind="redis",
            tls=scheme == "rediss",
            hosts=hosts,
            username=username,
            password=password,
            db=int(path or 0),
            options=options,
        )
    if scheme == "redis+sentinel":
        master, _, db = path.partition("/")
        if not master:
            raise ValueError("redis+sentinel://host:port,.../MASTER_NAME/db needs a master name")
        if db and not db.isdigit():
            raise ValueError("redis+sentinel://.../MASTER_NAME/DB: the database must be a number")
        return StoreURL(
            kind="sentinel",
            hosts=hosts,
            username=username,
            password=password,
            db=int(db or 0),
            master_name=master,
            options=options,
        )
    if path not in {"", "0"}:
        raise ValueError("redis+cluster:// has no databases besides 0")
    return StoreURL(
        kind="cluster", hosts=hosts, username=username, password=password, options=options
    )


def redact_store_url(url: str) -> str:
    """`url` with its password (userinfo and `?password=`) replaced by **redacted**."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return REDACTED if "@" in url else url
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        # "redis://word@host": redis-py calls it a username, people often mean a password.
        rest = (f"{user}:{REDACTED}" if colon else REDACTED) + rest[at:]
    rest = re.sub(r"([?&]password=)[^&]*", lambda m: m.group(1) + REDACTED, rest)
    return f"{scheme}://{rest}"
