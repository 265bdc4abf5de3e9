"""OIDCClient against the real test IdP (tests/idp, npm oidc-provider, authentik-shaped).

Proves the verifiers of SPEC §5 end to end over loopback HTTP: authentik's app
password (client_credentials), the password grant, JWT bearer tokens against the
JWKS, opaque tokens by introspection, both client authentication methods, HS256
id_tokens, and an unreachable IdP answering Unavailable rather than Rejected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from pydantic import SecretStr

from ext_authz.adapters.oidc import OIDCClient
from ext_authz.config import OIDCSettings
from ext_authz.core.model import Rejected, Unavailable, Verified
from tests.integration.idp_world import ALICE, EXPECTED_ATTRIBUTES, GROUPS
from tests.integration.idp_world import HS_CLIENT as HS
from tests.stack.idp import AUTHENTIK_CALLBACK, IdP, IdPClient

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

POST = IdPClient(
    client_id="whoami",
    client_secret="whoami-secret-0123456789abcdef0123456789",
    redirect_uris=["http://whoami.localhost:8080" + AUTHENTIK_CALLBACK],
)
BASIC = IdPClient(
    client_id="basic-app",
    # Characters that RFC 6749 §2.3.1's form-urlencoding must escape inside Basic auth.
    client_secret="basic secret:with+odd/chars%0123456789abcdef",
    redirect_uris=["http://basic.localhost:8080" + AUTHENTIK_CALLBACK],
    token_endpoint_auth_method="client_secret_basic",
)
CLIENTS = {c.client_id: c for c in (POST, BASIC, HS)}


def _start(workdir: Path) -> IdP:
    return IdP(clients=list(CLIENTS.values()), users=[ALICE], groups=GROUPS, workdir=workdir)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdP]:
    with _start(tmp_path_factory.mktemp("idp")) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _client(idp: IdP, http: httpx.AsyncClient, client_id: str = "whoami") -> OIDCClient:
    c = CLIENTS[client_id]
    auth = c.token_endpoint_auth_method
    settings = OIDCSettings(
        issuer=idp.issuer,
        client_id=c.client_id,
        client_secret=SecretStr(c.client_secret),
        client_auth=auth,  # type: ignore[arg-type]
        scopes=("openid", "profile", "email", "ak_proxy"),
        # Per IdP call; a stopped IdP refuses at once, so this only spares a live one
        # on a busy machine (the product default, 3 s, is not what these tests are about).
        timeout=30.0,
    )
    return OIDCClient(settings, http)


def _assert_alice(outcome: Any, provider: str = "whoami") -> None:
    assert isinstance(outcome, Verified), outcome
    identity = outcome.identity
    assert identity.sub == "alice" and identity.preferred_username == "alice"
    assert identity.email == "alice@example.com" and identity.name == "Alice Example"
    assert identity.groups == ("zeta", "admins")
    assert identity.entitlements == ("billing",)
    assert dict(identity.attributes) == EXPECTED_ATTRIBUTES
    assert identity.provider == provider and identity.token
    assert outcome.ttl is not None and 0 < outcome.ttl <= 3600


@pytest.mark.parametrize("client_id", ["whoami", "basic-app", "hs-app"])
async def test_app_password(idp: IdP, http: httpx.AsyncClient, client_id: str) -> None:
    client = _client(idp, http, client_id)
    idp.reset_stats()
    outcome = await client.verify_app_password("alice", "alice-app-password-2")
    _assert_alice(outcome, client_id)
    assert isinstance(outcome, Verified) and outcome.identity.id_token
    # The identity lasts as long as the access token passed on (300 s), not the id_token.
    assert outcome.ttl is not None and outcome.ttl <= 300
    stats = idp.stats()
    assert stats["token:client_credentials"] == 1 and stats["discovery"] == 1


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "wrong"), ("alice", "alice-password"), ("mallory", "alice-app-password-1")],
)
async def test_app_password_rejected(
    idp: IdP, http: httpx.AsyncClient, username: str, password: str
) -> None:
    outcome = await _client(idp, http).verify_app_password(username, password)
    assert outcome == Rejected("invalid_grant")


async def test_wrong_client_secret_is_rejected_not_unavailable(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    settings = OIDCSettings(
        issuer=idp.issuer, client_id="whoami", client_secret=SecretStr("not-the-secret")
    )
    outcome = await OIDCClient(settings, http).verify_app_password("alice", "alice-app-password-1")
    assert outcome == Rejected("invalid_client")


@pytest.mark.parametrize("client_id", ["whoami", "basic-app"])
async def test_password_grant(idp: IdP, http: httpx.AsyncClient, client_id: str) -> None:
    client = _client(idp, http, client_id)
    _assert_alice(await client.verify_password_grant("alice", "alice-password"), client_id)
    assert await client.verify_password_grant("alice", "nope") == Rejected("invalid_grant")


@pytest.mark.parametrize("mode", ["jwt", "auto"])
async def test_minted_jwt(idp: IdP, http: httpx.AsyncClient, mode: str) -> None:
    token = idp.mint_access_token("whoami", "alice", fmt="jwt")
    client = _client(idp, http)
    await client.discovery()
    idp.reset_stats()
    outcome = await client.verify_bearer(token, mode)  # type: ignore[arg-type]
    _assert_alice(outcome)
    assert isinstance(outcome, Verified) and outcome.identity.token == token
    stats = idp.stats()
    assert stats.get("introspection", 0) == 0 and stats["jwks"] == 1
    # The JWKS is cached: a second check asks the IdP nothing.
    _assert_alice(await client.verify_bearer(token, mode))  # type: ignore[arg-type]
    assert idp.stats().get("jwks", 0) == 1


@pytest.mark.parametrize("mode", ["jwt", "auto"])
async def test_hs256_access_token_of_a_proxy_provider(
    idp: IdP, http: httpx.AsyncClient, mode: str
) -> None:
    # authentik's JWT access tokens of a proxy provider: HS256 with the client secret,
    # accepted because the discovery lists HS256; no JWKS needed.
    token = idp.mint_access_token("hs-app", "alice", fmt="jwt")
    assert pyjwt.get_unverified_header(token)["alg"] == "HS256"
    client = _client(idp, http, "hs-app")
    assert "HS256" in (await client.discovery()).id_token_signing_alg_values_supported
    idp.reset_stats()
    outcome = await client.verify_bearer(token, mode)  # type: ignore[arg-type]
    _assert_alice(outcome, "hs-app")
    assert idp.stats().get("jwks", 0) == 0 and idp.stats().get("introspection", 0) == 0
    # The same claims signed with any secret but the client's: refused.
    forged = pyjwt.encode(
        {**pyjwt.decode(token, options={"verify_signature": False})},
        "not-the-client-secret-0123456789abcdef",
        algorithm="HS256",
    )
    assert await client.verify_bearer(forged, "jwt") == Rejected("bad signature")


async def test_hs256_id_token_of_a_proxy_provider(idp: IdP, http: httpx.AsyncClient) -> None:
    outcome = await _client(idp, http, "hs-app").verify_app_password(
        "alice", "alice-app-password-1"
    )
    _assert_alice(outcome, "hs-app")
    assert isinstance(outcome, Verified)
    assert pyjwt.get_unverified_header(outcome.identity.id_token)["alg"] == "HS256"


@pytest.mark.parametrize("mode", ["jwt", "auto"])
async def test_jwt_for_another_client_rejected(
    idp: IdP, http: httpx.AsyncClient, mode: str
) -> None:
    token = idp.mint_access_token("basic-app", "alice", fmt="jwt")
    outcome = await _client(idp, http).verify_bearer(token, mode)  # type: ignore[arg-type]
    assert outcome == Rejected("wrong audience")
    # ... unless the application accepts that audience.
    accepted = await _client(idp, http).verify_bearer(token, "jwt", ("basic-app",))
    assert isinstance(accepted, Verified)


@pytest.mark.parametrize("mode", ["introspection", "auto"])
async def test_minted_opaque_token(idp: IdP, http: httpx.AsyncClient, mode: str) -> None:
    token = idp.mint_access_token("whoami", "alice", fmt="opaque")
    client = _client(idp, http)
    await client.discovery()
    idp.reset_stats()
    outcome = await client.verify_bearer(token, mode)  # type: ignore[arg-type]
    _assert_alice(outcome)
    assert isinstance(outcome, Verified) and outcome.identity.token == token
    assert idp.stats()["introspection"] == 1


async def test_introspection_with_basic_auth(idp: IdP, http: httpx.AsyncClient) -> None:
    token = idp.mint_access_token("basic-app", "alice", fmt="opaque")
    _assert_alice(await _client(idp, http, "basic-app").verify_bearer(token, "auto"), "basic-app")


async def test_unknown_opaque_token_inactive(idp: IdP, http: httpx.AsyncClient) -> None:
    outcome = await _client(idp, http).verify_bearer("not-a-token-the-idp-issued", "auto")
    assert outcome == Rejected("inactive")


async def test_idp_stopped_is_unavailable(tmp_path: Path, http: httpx.AsyncClient) -> None:
    server = _start(tmp_path).start()
    try:
        warm = _client(server, http)
        _assert_alice(await warm.verify_app_password("alice", "alice-app-password-1"))
        opaque = server.mint_access_token("whoami", "alice", fmt="opaque")
        jwt_token = server.mint_access_token("whoami", "alice", fmt="jwt")
    finally:
        server.stop()
    assert not server.alive()
    cold = _client(server, http)  # never saw discovery: must still be constructible
    assert not cold.ready
    for client in (warm, cold):
        assert isinstance(
            await client.verify_app_password("alice", "alice-app-password-1"), Unavailable
        )
        assert isinstance(
            await client.verify_password_grant("alice", "alice-password"), Unavailable
        )
        assert isinstance(await client.verify_bearer(opaque, "introspection"), Unavailable)
    # The warm client's JWKS is cached: a JWT with a known key verifies offline; the
    # cold one cannot fetch keys and must not call that "invalid".
    assert isinstance(await warm.verify_bearer(jwt_token, "jwt"), Verified)
    assert isinstance(await cold.verify_bearer(jwt_token, "jwt"), Unavailable)
