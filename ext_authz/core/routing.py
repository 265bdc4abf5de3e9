"""Which application a request is for, and which outpost path it names (SPEC §4 steps 2-3)."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from ext_authz.core.model import AuthRequest

if TYPE_CHECKING:
    from ext_authz.config import Application

__all__ = [
    "OUTPOST_PREFIX",
    "ApplicationIndex",
    "OutpostRoute",
    "outpost_route",
    "split_host",
]

OUTPOST_PREFIX = "/outpost.goauthentik.io/"
CONTEXT_APP_KEY = "ext_authz_app"
# Most queries name no outpost parameter: look before parsing.
_OUTPOST_QUERY = re.compile(r"x-authentik-(auth-callback|logout)", re.IGNORECASE)


class OutpostRoute(enum.Enum):
    PING = "ping"
    START = "start"
    CALLBACK = "callback"
    SIGN_OUT = "sign_out"


def split_host(authority: str, scheme: str = "") -> tuple[str, int | None]:
    """`Host`/`:authority` → (lower-cased name, port or None). IPv6 literals keep brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        end = authority.find("]")
        name, rest = (authority[: end + 1], authority[end + 1 :]) if end >= 0 else (authority, "")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port_text = authority.partition(":")
    if port_text.isdigit():
        return name, int(port_text)
    if scheme in ("http", "https"):
        return name, 443 if scheme == "https" else 80
    return name, None


class ApplicationIndex:
    """The applications by name and by host name, built once per application table.

    `forward_domain` applications (SPEC §11) also answer every host inside their
    cookie_domain, on a dot boundary; the longest domain wins, and an exact host name
    of any application wins over a domain."""

    def __init__(self, applications: Sequence[Application]) -> None:
        self._by_name = {app.name: app for app in applications}
        by_host: dict[str, list[Application]] = {}
        by_domain: dict[str, Application] = {}
        for app in applications:
            for host in app.all_host_names:
                by_host.setdefault(host, []).append(app)
            if app.mode == "forward_domain" and app.cookie_domain:
                by_domain.setdefault(app.cookie_domain.lower().lstrip("."), app)
        self._by_host = {host: tuple(apps) for host, apps in by_host.items()}
        self._by_domain = by_domain

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> frozenset[str]:
        return frozenset(self._by_name)

    def select(self, request: AuthRequest) -> Application | None:
        """`context_extensions["ext_authz_app"]` names the application; else the host does.

        When two applications share a host name, the port decides.
        """
        named = request.context_extensions.get(CONTEXT_APP_KEY)
        if named:
            return self._by_name.get(named)
        name, port = split_host(request.host, request.scheme)
        # Application host names hold IPv6 literals without brackets; split_host keeps them.
        bare = name.removeprefix("[").removesuffix("]")
        candidates = self._by_host.get(bare, ())
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            return self._in_domain(bare) if self._by_domain else None
        for app in candidates:
            if port is not None and app.port == port:
                return app
        return candidates[0]

    def _in_domain(self, host: str) -> Application | None:
        """The forward_domain application of the longest domain containing `host`."""
        while host:
            app = self._by_domain.get(host)
            if app is not None:
                return app
            _, _, host = host.partition(".")
        return None


def outpost_route(request: AuthRequest) -> OutpostRoute | None:
    if request.path.startswith(OUTPOST_PREFIX):
        tail = request.path[len(OUTPOST_PREFIX) :].rstrip("/")
        for route in OutpostRoute:
            if tail == route.value:
                return route
    query = request.query
    if query and ("%" in query or _OUTPOST_QUERY.search(query)):
        params = {k.lower(): v for k, v in parse_qsl(request.query, keep_blank_values=True)}
        if params.get("x-authentik-auth-callback", "").lower() == "true":
            return OutpostRoute.CALLBACK
        if params.get("x-authentik-logout", "").lower() == "true":
            return OutpostRoute.SIGN_OUT
    return None
