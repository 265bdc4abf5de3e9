"""The test OIDC provider: launches tests/idp/idp.mjs (Node, npm `oidc-provider`).

It behaves like an authentik OAuth2/proxy provider: authorization code + PKCE with a
login form that checks the user's password, introspection, userinfo, RP-initiated
logout, authentik's `client_credentials` grant with username + app password, the
password grant, and claims shaped like authentik's (groups, entitlements,
`ak_proxy.user_attributes`).  Test-only routes under `/_test/` count requests per
endpoint, mint access tokens and delay endpoints.  State lives in the Node process's
memory: a restart forgets every token and generates a new signing key.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.stack.proc import (
    ROOT,
    START_BOUND,
    ManagedProcess,
    StartHung,
    free_port,
    wait_until,
)

IDP_DIR = ROOT / "tests" / "idp"
IDP_SCRIPT = IDP_DIR / "idp.mjs"
READY_MARK = "IDP READY "
# The redirect URI authentik registers for a proxy provider, after its external host,
# and matches strictly, query included (SPEC §6). Written out here, not taken from the
# product, so a product that sends anything else fails the sign-in tests.
AUTHENTIK_CALLBACK = "/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"


@dataclass(frozen=True)
class IdPClient:
    """One OIDC client (an application) registered at the IdP."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    token_endpoint_auth_method: str = "client_secret_post"  # or client_secret_basic
    id_token_signed_response_alg: str = "RS256"  # or HS256 (signed with client_secret)


def proxy_provider_client(
    client_id: str,
    client_secret: str,
    external_hosts: list[str],
    *,
    post_logout_redirect_uris: list[str] | None = None,
    token_endpoint_auth_method: str = "client_secret_post",
) -> IdPClient:
    """A client as authentik registers a proxy provider: the one strict redirect URI
    of each external host, and id_tokens and JWT access tokens signed HS256 with the
    client secret (the provider has no signing key)."""
    return IdPClient(
        client_id=client_id,
        client_secret=client_secret,
        redirect_uris=[host.rstrip("/") + AUTHENTIK_CALLBACK for host in external_hosts],
        post_logout_redirect_uris=list(post_logout_redirect_uris or []),
        token_endpoint_auth_method=token_endpoint_auth_method,
        id_token_signed_response_alg="HS256",
    )


@dataclass(frozen=True)
class IdPUser:
    """One user; `password` is for the login form and the password grant, `app_passwords`
    (plain text) for the client_credentials grant."""

    username: str
    password: str
    email: str
    name: str
    groups: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    app_passwords: list[str] = field(default_factory=list)
    entitlements: list[str] = field(default_factory=list)


class IdPError(RuntimeError):
    """The IdP could not be started or answered a test route with an error."""


class IdPStartHung(UserWarning):
    """One start of the IdP hung and was tried again (`IdP.start`)."""


# How long each start of the IdP process may stay silent before it counts as hung; after
# the last, `IdP.start` gives up (see there).
START_BOUNDS = (START_BOUND, START_BOUND)


class IdP:
    """The Node IdP on 127.0.0.1:`port`; issuer `http://127.0.0.1:<port>`."""

    def __init__(
        self,
        *,
        clients: list[IdPClient],
        users: list[IdPUser],
        groups: dict[str, dict[str, Any]],
        workdir: Path,
        port: int | None = None,
        access_token_ttl: int = 300,
        id_token_ttl: int = 3600,
        name: str = "idp",
        start_bounds: tuple[float, ...] = START_BOUNDS,
        hang_once_file: Path | None = None,
    ) -> None:
        self.clients = list(clients)
        self.users = list(users)
        self.groups = dict(groups)
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
        self.access_token_ttl = access_token_ttl
        self.id_token_ttl = id_token_ttl
        self.name = name
        self.start_bounds = start_bounds
        # Test of `start` only: while this file exists, a start deletes it and hangs.
        self.hang_once_file = hang_once_file
        self.config_path = self.workdir / f"{name}-{self.port}.json"
        self.process = ManagedProcess(
            name,
            ["node", str(IDP_SCRIPT), str(self.config_path)],
            self.workdir / f"{name}-{self.port}.log",
        )

    # -- addresses ---------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer}/token/introspection"

    @property
    def userinfo_endpoint(self) -> str:
        return f"{self.issuer}/me"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    # -- lifecycle ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The JSON document idp.mjs reads (see tests/idp/README.md)."""
        return {
            "port": self.port,
            "issuer": self.issuer,
            "access_token_ttl": self.access_token_ttl,
            "id_token_ttl": self.id_token_ttl,
            "clients": [asdict(c) for c in self.clients],
            "groups": {g: {"attributes": attrs} for g, attrs in self.groups.items()},
            "users": [asdict(u) for u in self.users],
            **({"hang_once_file": str(self.hang_once_file)} if self.hang_once_file else {}),
        }

    def start(self) -> IdP:
        """Start the IdP and wait for it to answer discovery.

        A start that hangs (alive and silent for its whole bound: seen twice in about a
        thousand starts, in full-suite runs, never on purpose) is recorded, with what
        the process was doing, in its log and as a pytest warning, and tried again on
        the same port, once per further entry of `start_bounds`. A start that crashes,
        or hangs every time, fails.
        """
        if shutil.which("node") is None:
            raise IdPError("`node` is not on PATH; the test IdP needs Node.js 20+")
        if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
            raise IdPError(
                f"{IDP_DIR / 'node_modules'} is missing: run `npm ci --prefix tests/idp` "
                "(the Makefile does this)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2), "utf-8")
        attempts = len(self.start_bounds)
        for attempt, bound in enumerate(self.start_bounds, start=1):
            try:
                self._start_once(bound)
                return self
            except StartHung as exc:
                if attempt == attempts:
                    raise IdPError(f"the IdP hung at start {attempt} times: {exc}") from exc
                warnings.warn(
                    IdPStartHung(
                        f"{self.name} hung at start (attempt {attempt} of {attempts}); "
                        f"starting it again. What it was doing is in {self.log_path}:\n{exc}"
                    ),
                    stacklevel=2,
                )
            except Exception as exc:
                raise IdPError(f"the IdP did not start: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_once(self, timeout: float) -> None:
        # The log is appended to across restarts: only look for READY after this start.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process.start()
        try:
            wait_until(
                lambda: self._ready_line_seen(offset),
                timeout,
                f"'{READY_MARK.strip()}' from {self.name}",
                process=self.process,
            )
            wait_until(self._discovery_ok, timeout, f"{self.discovery_url}", process=self.process)
        except BaseException:
            self.process.stop()
            raise

    def stop(self) -> int | None:
        return self.process.stop()

    def kill(self) -> int | None:
        """SIGKILL (for "IdP unreachable" tests)."""
        return self.process.kill()

    def restart(self) -> IdP:
        """Same port and issuer; a new signing key, and every issued token forgotten."""
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self.process.alive()

    def _ready_line_seen(self, offset: int) -> bool:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return READY_MARK.encode() in f.read()

    def _discovery_ok(self) -> bool:
        r = httpx.get(self.discovery_url, timeout=2.0)
        return r.status_code == 200 and r.json().get("issuer") == self.issuer

    def __enter__(self) -> IdP:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- test routes -------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Requests per endpoint since start or the last reset: discovery, jwks, token,
        introspection, userinfo, authorization, end_session, interaction, revocation,
        plus `token:<grant_type>` per grant type seen."""
        r = httpx.get(f"{self.issuer}/_test/stats", timeout=5.0)
        r.raise_for_status()
        return {str(k): int(v) for k, v in r.json().items()}

    def reset_stats(self) -> None:
        httpx.post(f"{self.issuer}/_test/reset", timeout=5.0).raise_for_status()

    def delay(self, **milliseconds: int) -> None:
        """Answer these endpoints that much later (discovery, jwks, token, userinfo,
        introspection, ...), e.g. `delay(token=2500)`; `delay()` removes every delay."""
        r = httpx.post(f"{self.issuer}/_test/delay", json=milliseconds, timeout=5.0)
        if r.status_code != 200:
            raise IdPError(f"delay failed: HTTP {r.status_code} {r.text}")

    def sids(self, username: str) -> list[str]:
        """The IdP sessions (`sid` claims) of `username`'s browser sign-ins so far, oldest
        first: what authentik's SESSION_END would name to end them."""
        r = httpx.get(f"{self.issuer}/_test/sids", params={"username": username}, timeout=5.0)
        if r.status_code != 200:
            raise IdPError(f"sids failed: HTTP {r.status_code} {r.text}")
        return [str(s) for s in r.json()["sids"]]

    def mint_access_token(
        self,
        client_id: str,
        username: str,
        fmt: str = "opaque",
        scope: str = "openid profile email ak_proxy",
        alg: str | None = None,
    ) -> str:
        """An access token for `username` issued to `client_id`.

        `opaque`: a real oidc-provider AccessToken (introspection: active with the
        identity claims; userinfo works).  `jwt`: `iss`, `aud`=client_id, `sub`, `exp`
        (access_token_ttl), `scope` and the identity claims; introspectable too. Signed
        as the client's id_tokens are (HS256 with the client secret for an HS256
        client, as authentik signs a proxy provider's tokens; else RS256 with the JWKS
        key), or with `alg` (RS256, HS256, HS384, HS512) when given.
        """
        body = {"client_id": client_id, "username": username, "format": fmt, "scope": scope}
        if alg is not None:
            body["alg"] = alg
        r = httpx.post(f"{self.issuer}/_test/mint", json=body, timeout=5.0)
        if r.status_code != 200:
            raise IdPError(f"mint failed: HTTP {r.status_code} {r.text}")
        return str(r.json()["access_token"])
