"""OIDCClient against an in-process fake IdP (httpx.MockTransport): every branch."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from ext_authz.adapters.oidc import OIDCClient, TokenError
from ext_authz.config import OIDCEndpoints, OIDCSettings
from ext_authz.core.model import Rejected, Unavailable, Verified
from ext_authz.errors import IdPUnavailable

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.test/application/o/app/"
BASE = ISSUER.rstrip("/")
CLIENT = "app-client"
SECRET = "s3cret: with+special/chars-and-enough-length-for-hs256!"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid}


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "user-1",
        "preferred_username": "alice",
        "email": "alice@example.com",
        "name": "Alice",
        "groups": ["admins"],
        "iat": now,
        "exp": now + 300,
        "ak_proxy": {"user_attributes": {"app_username": "admin"}},
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def rs256(payload: dict[str, Any], *, kid: str = "k1", key: Any = KEY) -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def unsigned(payload: dict[str, Any]) -> str:
    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}."


def hs256_with_public_key(payload: dict[str, Any]) -> str:
    # The classic confusion attack: HMAC "signed" with the public key as secret.
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    signing = jwt.api_jws.PyJWS()
    alg = signing.get_algorithm_by_name("HS256")
    h = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=")
    p = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=")
    sig = alg.sign(h + b"." + p, PUBLIC_PEM)
    return (h + b"." + p + b"." + base64.urlsafe_b64encode(sig).rstrip(b"=")).decode()


Handler = Callable[[httpx.Request], httpx.Response]


class FakeIdP:
    """Routes by path; each endpoint's answer is replaceable per test."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests: list[httpx.Request] = []
        self.discovery: dict[str, Any] = {
            "issuer": ISSUER,
            "authorization_endpoint": f"{BASE}/authorize",
            "token_endpoint": f"{BASE}/token",
            "jwks_uri": f"{BASE}/jwks",
            "userinfo_endpoint": f"{BASE}/userinfo",
            "introspection_endpoint": f"{BASE}/introspect",
            "end_session_endpoint": f"{BASE}/end-session",
        }
        self.jwks_documents = [{"keys": [_jwk(KEY, "k1")]}]
        self.token: Handler = lambda r: httpx.Response(
            200,
            json={"access_token": "at-1", "id_token": rs256(claims()), "expires_in": 300},
        )
        self.introspection: Handler = lambda r: httpx.Response(200, json={"active": False})
        self.userinfo: Handler = lambda r: httpx.Response(200, json=claims())
        self.discovery_handler: Handler | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.rsplit("/", 1)[-1]
        self.calls[path] += 1
        if request.url.path.endswith("/.well-known/openid-configuration"):
            if self.discovery_handler is not None:
                return self.discovery_handler(request)
            return httpx.Response(200, json=self.discovery)
        if path == "jwks":
            doc = self.jwks_documents[min(self.calls["jwks"], len(self.jwks_documents)) - 1]
            return httpx.Response(200, json=doc)
        if path == "token":
            return self.token(request)
        if path == "introspect":
            return self.introspection(request)
        if path == "userinfo":
            return self.userinfo(request)
        return httpx.Response(404)

    def last(self, path: str) -> httpx.Request:
        return [r for r in self.requests if r.url.path.endswith("/" + path)][-1]


def form(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode()))


@pytest.fixture
def idp() -> FakeIdP:
    return FakeIdP()


def make_client(
    idp: FakeIdP,
    *,
    secret: str | None = SECRET,
    client_auth: str = "client_secret_post",
    observed: list[tuple[str, str]] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    clock: Callable[[], float] = time.time,
    issuer: str = ISSUER,
    timeout: float = 2.0,
) -> OIDCClient:
    settings = OIDCSettings(
        issuer=issuer,
        client_id=CLIENT,
        client_secret=SecretStr(secret) if secret is not None else None,
        client_auth=client_auth,  # type: ignore[arg-type]
        scopes=("openid", "profile", "email", "ak_proxy"),
        timeout=timeout,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(idp))
    observe = observed.append if observed is not None else None
    return OIDCClient(
        settings,
        http,
        observe=(lambda e, o: observe((e, o))) if observe else None,
        clock=clock,
        monotonic=monotonic,
    )


# --- discovery ------------------------------------------------------------------------


async def test_nothing_fetched_until_used(idp: FakeIdP) -> None:
    client = make_client(idp)
    assert not client.ready and not idp.requests
    d = await client.discovery()
    assert client.ready
    assert d.token_endpoint == f"{BASE}/token" and d.end_session_endpoint == f"{BASE}/end-session"
    assert str(idp.requests[0].url) == f"{BASE}/.well-known/openid-configuration"
    await client.discovery()
    assert idp.calls["openid-configuration"] == 1  # cached forever once good


async def test_issuer_trailing_slash_is_normalised(idp: FakeIdP) -> None:
    client = make_client(idp, issuer=BASE)
    d = await client.discovery()
    assert d.issuer == ISSUER
    assert isinstance(await client.verify_app_password("alice", "pw"), Verified)


async def test_issuer_mismatch_is_unavailable(idp: FakeIdP) -> None:
    idp.discovery["issuer"] = "https://evil.test/"
    client = make_client(idp)
    with pytest.raises(IdPUnavailable):
        await client.discovery()
    assert not client.ready


async def test_discovery_failure_retried_after_backoff(idp: FakeIdP) -> None:
    now = [100.0]
    idp.discovery_handler = lambda r: httpx.Response(503)
    client = make_client(idp, monotonic=lambda: now[0])
    for _ in range(3):
        with pytest.raises(IdPUnavailable):
            await client.discovery()
    assert idp.calls["openid-configuration"] == 1
    outcome = await client.verify_app_password("alice", "pw")
    assert isinstance(outcome, Unavailable)
    idp.discovery_handler = None
    now[0] += 5.5
    await client.discovery()
    assert client.ready and idp.calls["openid-configuration"] == 2


@pytest.mark.parametrize("missing", ["token_endpoint", "jwks_uri", "authorization_endpoint"])
async def test_discovery_lacking_endpoint_is_unavailable(idp: FakeIdP, missing: str) -> None:
    del idp.discovery[missing]
    with pytest.raises(IdPUnavailable):
        await make_client(idp).discovery()


# --- app passwords (authentik's client_credentials) ----------------------------------


async def test_app_password_verified(idp: FakeIdP) -> None:
    observed: list[tuple[str, str]] = []
    client = make_client(idp, observed=observed)
    outcome = await client.verify_app_password("alice", "app-pw")
    assert isinstance(outcome, Verified)
    identity = outcome.identity
    assert identity.sub == "user-1" and identity.preferred_username == "alice"
    assert identity.groups == ("admins",) and identity.email == "alice@example.com"
    assert dict(identity.attributes) == {"app_username": "admin"}
    assert identity.token == "at-1" and identity.id_token and identity.provider == CLIENT
    assert outcome.ttl is not None and 290 < outcome.ttl <= 300
    sent = form(idp.last("token"))
    assert sent == {
        "grant_type": "client_credentials",
        "client_id": CLIENT,
        "client_secret": SECRET,
        "username": "alice",
        "password": "app-pw",
        "scope": "openid profile email ak_proxy",
    }
    assert "authorization" not in idp.last("token").headers
    assert ("token", "ok") in observed and ("discovery", "ok") in observed


async def test_app_password_lifetime_bounded_by_access_token(idp: FakeIdP) -> None:
    id_token = rs256(claims(exp=int(time.time()) + 3600))
    idp.token = lambda r: httpx.Response(
        200, json={"access_token": "at", "id_token": id_token, "expires_in": 120}
    )
    outcome = await make_client(idp).verify_app_password("alice", "pw")
    assert isinstance(outcome, Verified)
    assert outcome.ttl is not None and 110 < outcome.ttl <= 120
    assert outcome.identity.expires_at is not None
    assert outcome.identity.expires_at <= time.time() + 120


async def test_app_password_token_falls_back_to_id_token(idp: FakeIdP) -> None:
    id_token = rs256(claims())
    idp.token = lambda r: httpx.Response(200, json={"id_token": id_token})
    outcome = await make_client(idp).verify_app_password("alice", "pw")
    assert isinstance(outcome, Verified) and outcome.identity.token == id_token


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, {"error": "invalid_grant"}, "invalid_grant"),
        (401, {"error": "invalid_client"}, "invalid_client"),
        (400, {"error": "bad value with spaces and the app-pw"}, "http_400"),
        (403, None, "http_403"),
        (200, {"access_token": "x"}, "no id_token"),
    ],
)
async def test_app_password_rejected(
    idp: FakeIdP, status: int, body: dict[str, Any] | None, reason: str
) -> None:
    idp.token = lambda r: (
        httpx.Response(status, json=body) if body is not None else httpx.Response(status, text="no")
    )
    observed: list[tuple[str, str]] = []
    outcome = await make_client(idp, observed=observed).verify_app_password("alice", "app-pw")
    assert outcome == Rejected(reason)
    assert "app-pw" not in outcome.reason
    assert ("token", "rejected" if status >= 400 else "ok") in observed


def _raise(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    "handler",
    [
        lambda r: httpx.Response(503, json={"error": "temporarily_unavailable"}),
        lambda r: httpx.Response(500, text="boom"),
        lambda r: httpx.Response(429, json={"error": "slow_down"}),
        lambda r: httpx.Response(200, text="<html>not json</html>"),
        lambda r: httpx.Response(200, json=["not", "an", "object"]),
        _raise(httpx.ReadTimeout("slow")),
        _raise(httpx.ConnectError("refused")),
    ],
    ids=["503", "500", "429", "bad-json", "json-list", "timeout", "refused"],
)
async def test_app_password_unavailable(idp: FakeIdP, handler: Handler) -> None:
    idp.token = handler
    observed: list[tuple[str, str]] = []
    outcome = await make_client(idp, observed=observed).verify_app_password("alice", "app-pw")
    assert isinstance(outcome, Unavailable)
    assert "app-pw" not in outcome.reason
    assert ("token", "error") in observed


async def test_timeout_is_passed_to_httpx(idp: FakeIdP) -> None:
    seen: list[Any] = []

    def token(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(400, json={"error": "invalid_grant"})

    idp.token = token
    await make_client(idp).verify_app_password("a", "b")
    assert seen == [{"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}]


async def test_client_secret_basic(idp: FakeIdP) -> None:
    client = make_client(idp, client_auth="client_secret_basic")
    assert isinstance(await client.verify_app_password("alice", "pw"), Verified)
    request = idp.last("token")
    scheme, _, value = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    raw_id, _, raw_secret = base64.b64decode(value).decode().partition(":")
    # RFC 6749 §2.3.1: each part form-urlencoded before base64.
    assert raw_secret != SECRET and ":" not in raw_secret
    assert unquote_plus(raw_id) == CLIENT and unquote_plus(raw_secret) == SECRET
    sent = form(request)
    assert "client_secret" not in sent and sent["client_id"] == CLIENT


async def test_public_client_sends_only_client_id(idp: FakeIdP) -> None:
    idp.token = lambda r: httpx.Response(400, json={"error": "invalid_grant"})
    client = make_client(idp, secret=None)
    await client.verify_password_grant("alice", "pw")
    request = idp.last("token")
    assert "authorization" not in request.headers
    sent = form(request)
    assert sent["client_id"] == CLIENT and "client_secret" not in sent


def signs_hmac(idp: FakeIdP, *algs: str) -> None:
    """The IdP's discovery lists these id_token algorithms (authentik's proxy provider:
    ["HS256"], as it signs with the client secret)."""
    idp.discovery["id_token_signing_alg_values_supported"] = list(algs)


async def test_discovery_keeps_the_listed_signing_algorithms(idp: FakeIdP) -> None:
    signs_hmac(idp, "HS256", "RS256", 7)
    d = await make_client(idp).discovery()
    assert d.id_token_signing_alg_values_supported == ("HS256", "RS256")
    assert d.hmac_algorithms == {"HS256"}
    idp.discovery["id_token_signing_alg_values_supported"] = "HS256"  # not a list
    assert (await make_client(idp).discovery()).hmac_algorithms == frozenset()


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_id_token_with_client_secret_when_discovery_lists_it(
    idp: FakeIdP, alg: str
) -> None:
    signs_hmac(idp, "RS256", alg)
    token = jwt.encode(claims(), SECRET, algorithm=alg)
    idp.token = lambda r: httpx.Response(200, json={"access_token": "at", "id_token": token})
    outcome = await make_client(idp).verify_app_password("alice", "pw")
    assert isinstance(outcome, Verified) and outcome.identity.sub == "user-1"
    assert idp.calls["jwks"] == 0


@pytest.mark.parametrize(
    "listed",
    [None, ["RS256"], ["HS384", "HS512"], []],
    ids=["absent", "rs256-only", "other-hmac", "empty"],
)
async def test_hs256_id_token_refused_unless_discovery_lists_hs256(
    idp: FakeIdP, listed: list[str] | None
) -> None:
    # Algorithm confusion: a correctly keyed HS256 token still does not pass when the
    # IdP does not say it signs HS256.
    if listed is not None:
        signs_hmac(idp, *listed)
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    idp.token = lambda r: httpx.Response(200, json={"access_token": "at", "id_token": token})
    assert await make_client(idp).verify_app_password("a", "b") == Rejected("alg not allowed")


async def test_hs256_id_token_without_secret_rejected(idp: FakeIdP) -> None:
    signs_hmac(idp, "HS256")
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    idp.token = lambda r: httpx.Response(200, json={"access_token": "at", "id_token": token})
    assert await make_client(idp, secret=None).verify_app_password("a", "b") == Rejected(
        "alg not allowed"
    )


async def test_hs256_id_token_with_wrong_secret_rejected(idp: FakeIdP) -> None:
    signs_hmac(idp, "HS256")
    token = jwt.encode(claims(), "another-secret-of-enough-length-32b!", algorithm="HS256")
    idp.token = lambda r: httpx.Response(200, json={"access_token": "at", "id_token": token})
    assert await make_client(idp).verify_app_password("a", "b") == Rejected("bad signature")
    # Nor does the public key "as the secret" pass when HS256 is allowed: the key is
    # the client secret, never JWKS material.
    forged = hs256_with_public_key(claims())
    idp.token = lambda r: httpx.Response(200, json={"access_token": "at", "id_token": forged})
    assert await make_client(idp).verify_app_password("a", "b") == Rejected("bad signature")


async def test_rs256_id_token_still_verifies_when_discovery_lists_hs256(idp: FakeIdP) -> None:
    signs_hmac(idp, "HS256")
    outcome = await make_client(idp).verify_app_password("alice", "pw")
    assert isinstance(outcome, Verified) and idp.calls["jwks"] == 1


@pytest.mark.parametrize(
    ("id_token", "reason"),
    [
        (lambda: unsigned(claims()), "alg not allowed"),
        (lambda: rs256(claims(aud="someone-else")), "wrong audience"),
        (lambda: rs256(claims(iss="https://evil.test/")), "wrong issuer"),
        (lambda: rs256(claims(exp=int(time.time()) - 60)), "expired"),
        (lambda: rs256(claims(exp=None)), "missing exp"),
        (lambda: rs256(claims(sub=None)), "no sub"),
        (lambda: rs256(claims(), key=OTHER_KEY), "bad signature"),
        (lambda: rs256(claims(azp="other", aud=[CLIENT, "other"])), "wrong azp"),
        (lambda: "not.a.jwt", "malformed token"),
    ],
)
async def test_bad_id_token_rejected(
    idp: FakeIdP, id_token: Callable[[], str], reason: str
) -> None:
    token = id_token()
    idp.token = lambda r: httpx.Response(200, json={"access_token": "at", "id_token": token})
    assert await make_client(idp).verify_app_password("a", "b") == Rejected(reason)


# --- password grant ------------------------------------------------------------------


async def test_password_grant_with_id_token(idp: FakeIdP) -> None:
    outcome = await make_client(idp).verify_password_grant("alice", "pw")
    assert isinstance(outcome, Verified) and outcome.identity.sub == "user-1"
    sent = form(idp.last("token"))
    assert sent["grant_type"] == "password" and sent["client_secret"] == SECRET
    assert sent["username"] == "alice" and sent["password"] == "pw"
    assert idp.calls["userinfo"] == 0


async def test_password_grant_falls_back_to_userinfo(idp: FakeIdP) -> None:
    idp.token = lambda r: httpx.Response(200, json={"access_token": "at-2", "expires_in": 120})
    idp.userinfo = lambda r: httpx.Response(
        200, json={"sub": "user-9", "preferred_username": "bob"}
    )
    outcome = await make_client(idp).verify_password_grant("bob", "pw")
    assert isinstance(outcome, Verified)
    assert outcome.identity.sub == "user-9" and outcome.identity.token == "at-2"
    assert idp.last("userinfo").headers["authorization"] == "Bearer at-2"
    assert outcome.ttl is not None and 110 < outcome.ttl <= 120


async def test_password_grant_userinfo_refused(idp: FakeIdP) -> None:
    idp.token = lambda r: httpx.Response(200, json={"access_token": "at-2"})
    idp.userinfo = lambda r: httpx.Response(401)
    assert await make_client(idp).verify_password_grant("bob", "pw") == Rejected("http_401")


async def test_password_grant_rejected_and_unavailable(idp: FakeIdP) -> None:
    idp.token = lambda r: httpx.Response(400, json={"error": "invalid_grant"})
    assert await make_client(idp).verify_password_grant("a", "b") == Rejected("invalid_grant")
    idp.token = lambda r: httpx.Response(502)
    assert isinstance(await make_client(idp).verify_password_grant("a", "b"), Unavailable)


# --- bearer: jwt ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["jwt", "auto"])
async def test_bearer_jwt_verified(idp: FakeIdP, mode: str) -> None:
    token = rs256(claims())
    outcome = await make_client(idp).verify_bearer(token, mode)  # type: ignore[arg-type]
    assert isinstance(outcome, Verified)
    assert outcome.identity.token == token and outcome.identity.id_token == ""
    assert idp.calls["introspect"] == 0


@pytest.mark.parametrize("mode", ["jwt", "auto"])
async def test_bearer_hs256_jwt_verified_with_client_secret_when_listed(
    idp: FakeIdP, mode: str
) -> None:
    # authentik's JWT access tokens of a proxy provider: HS256 with the client secret.
    signs_hmac(idp, "HS256")
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    outcome = await make_client(idp).verify_bearer(token, mode)  # type: ignore[arg-type]
    assert isinstance(outcome, Verified) and outcome.identity.token == token
    assert idp.calls["introspect"] == 0 and idp.calls["jwks"] == 0


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: jwt.encode(claims(), "another-secret-of-enough-length-32b!"), "bad signature"),
        (lambda: hs256_with_public_key(claims()), "bad signature"),
        (lambda: jwt.encode(claims(), SECRET, algorithm="HS512"), "alg not allowed"),
        (lambda: jwt.encode(claims(aud="other-client"), SECRET), "wrong audience"),
        (lambda: jwt.encode(claims(exp=int(time.time()) - 60), SECRET), "expired"),
        (lambda: unsigned(claims()), "alg not allowed"),
    ],
)
async def test_bearer_hmac_jwt_rejected_when_listed(
    idp: FakeIdP, make: Callable[[], str], reason: str
) -> None:
    signs_hmac(idp, "HS256")
    assert await make_client(idp).verify_bearer(make(), "jwt") == Rejected(reason)


async def test_bearer_hs256_jwt_refused_without_client_secret(idp: FakeIdP) -> None:
    signs_hmac(idp, "HS256")
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert await make_client(idp, secret=None).verify_bearer(token, "jwt") == Rejected(
        "alg not allowed"
    )


async def test_bearer_extra_audience(idp: FakeIdP) -> None:
    token = rs256(claims(aud="api://extra"))
    client = make_client(idp)
    assert await client.verify_bearer(token, "jwt") == Rejected("wrong audience")
    assert isinstance(await client.verify_bearer(token, "jwt", ("api://extra",)), Verified)
    token = rs256(claims(aud=["x", CLIENT]))
    assert isinstance(await client.verify_bearer(token, "jwt"), Verified)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: unsigned(claims()), "alg not allowed"),
        (lambda: hs256_with_public_key(claims()), "alg not allowed"),
        (lambda: jwt.encode(claims(), SECRET, algorithm="HS256"), "alg not allowed"),
        (lambda: rs256(claims(aud="other-client")), "wrong audience"),
        (lambda: rs256(claims(aud=None)), "missing aud"),
        (lambda: rs256(claims(exp=int(time.time()) - 31 - 5)), "expired"),
        (lambda: rs256(claims(nbf=int(time.time()) + 120)), "not yet valid"),
        (lambda: rs256(claims(iss=BASE + "/other/")), "wrong issuer"),
        (lambda: rs256(claims(), key=OTHER_KEY), "bad signature"),
        (lambda: "garbage", "malformed token"),
    ],
)
async def test_bearer_jwt_rejected(idp: FakeIdP, make: Callable[[], str], reason: str) -> None:
    assert await make_client(idp).verify_bearer(make(), "jwt") == Rejected(reason)


async def test_bearer_within_leeway(idp: FakeIdP) -> None:
    token = rs256(claims(exp=int(time.time()) - 10, nbf=int(time.time()) + 10))
    outcome = await make_client(idp).verify_bearer(token, "jwt")
    assert isinstance(outcome, Verified) and outcome.ttl == 0.0  # accepted, never cached


async def test_unknown_kid_refetches_once_then_rejected(idp: FakeIdP) -> None:
    client = make_client(idp)
    assert isinstance(await client.verify_bearer(rs256(claims()), "jwt"), Verified)
    assert idp.calls["jwks"] == 1
    # The JWKS was just fetched: a rotation is plausible only after the interval.
    forged = rs256(claims(), kid="nope", key=OTHER_KEY)
    assert await client.verify_bearer(forged, "jwt") == Rejected("unknown key")
    assert idp.calls["jwks"] == 1


async def test_unknown_kid_refetch_finds_rotated_key(idp: FakeIdP) -> None:
    now = [0.0]
    idp.jwks_documents = [
        {"keys": [_jwk(KEY, "k1")]},
        {"keys": [_jwk(KEY, "k1"), _jwk(OTHER_KEY, "k2")]},
    ]
    client = make_client(idp, monotonic=lambda: now[0])
    assert isinstance(await client.verify_bearer(rs256(claims()), "jwt"), Verified)
    now[0] += 61
    rotated = rs256(claims(), kid="k2", key=OTHER_KEY)
    assert isinstance(await client.verify_bearer(rotated, "jwt"), Verified)
    unknown = rs256(claims(), kid="k3", key=OTHER_KEY)
    assert await client.verify_bearer(unknown, "jwt") == Rejected("unknown key")
    assert idp.calls["jwks"] == 2  # one refetch, none for k3 within the minute
    now[0] += 61
    assert await client.verify_bearer(unknown, "jwt") == Rejected("unknown key")
    assert idp.calls["jwks"] == 3


async def test_jwks_down_is_unavailable(idp: FakeIdP) -> None:
    idp.jwks_documents = [{"no": "keys"}]
    outcome = await make_client(idp).verify_bearer(rs256(claims()), "jwt")
    assert isinstance(outcome, Unavailable)


# --- bearer: introspection -----------------------------------------------------------


def _active(
    *, expires_in: float = 100, clock: Callable[[], float] = time.time, **extra: Any
) -> Handler:
    """An introspection endpoint answering `active: true`. Its `exp` is computed when the
    request comes (as a real IdP would), never when the test module is collected: a
    case collected minutes before it runs must not find its token already expired."""

    def answer(request: httpx.Request) -> httpx.Response:
        body = {
            "active": True,
            "sub": "user-2",
            "username": "carol",
            "exp": int(clock() + expires_in),
        }
        body.update(extra)
        return httpx.Response(200, json=body)

    return answer


@pytest.mark.parametrize("mode", ["introspection", "auto"])
async def test_introspection_active(idp: FakeIdP, mode: str) -> None:
    def frozen() -> float:  # introspection involves no JWT: one injected clock for both
        return 1_800_000_000.0

    idp.introspection = _active(groups=["g"], clock=frozen)
    client = make_client(idp, clock=frozen)
    outcome = await client.verify_bearer("opaque-token", mode)  # type: ignore[arg-type]
    assert isinstance(outcome, Verified)
    assert outcome.identity.sub == "user-2" and outcome.identity.preferred_username == "carol"
    assert outcome.identity.token == "opaque-token" and outcome.identity.groups == ("g",)
    assert outcome.ttl == 100
    sent = form(idp.last("introspect"))
    assert sent == {
        "token": "opaque-token",
        "token_type_hint": "access_token",
        "client_id": CLIENT,
        "client_secret": SECRET,
    }


async def test_auto_uses_introspection_for_foreign_jwt(idp: FakeIdP) -> None:
    idp.introspection = _active()
    token = rs256(claims(iss="https://other-issuer.test/"))
    assert isinstance(await make_client(idp).verify_bearer(token, "auto"), Verified)
    assert idp.calls["introspect"] == 1 and idp.calls["jwks"] == 0


async def test_introspection_basic_auth(idp: FakeIdP) -> None:
    idp.introspection = _active()
    client = make_client(idp, client_auth="client_secret_basic")
    assert isinstance(await client.verify_bearer("t", "introspection"), Verified)
    request = idp.last("introspect")
    assert request.headers["authorization"].startswith("Basic ")
    assert "client_secret" not in form(request) and "client_id" not in form(request)


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (lambda r: httpx.Response(200, json={"active": False}), Rejected("inactive")),
        (lambda r: httpx.Response(200, json={"active": "true", "sub": "x"}), Rejected("inactive")),
        (lambda r: httpx.Response(200, json={"sub": "x"}), Rejected("inactive")),
        (_active(sub=None), Rejected("no sub")),
        (_active(expires_in=-100), Rejected("expired")),
        (_active(aud="another", client_id="another"), Rejected("wrong audience")),
        (
            lambda r: httpx.Response(401, json={"error": "invalid_client"}),
            Rejected("invalid_client"),
        ),
    ],
)
async def test_introspection_rejected(idp: FakeIdP, handler: Handler, expected: Any) -> None:
    idp.introspection = handler
    assert await make_client(idp).verify_bearer("t", "introspection") == expected


async def test_introspection_audience_rules(idp: FakeIdP) -> None:
    client = make_client(idp)
    idp.introspection = _active(aud=["api", CLIENT])
    assert isinstance(await client.verify_bearer("t", "introspection"), Verified)
    idp.introspection = _active(aud="resource-server", client_id=CLIENT)
    assert isinstance(await client.verify_bearer("t", "introspection"), Verified)
    idp.introspection = _active(aud="extra")
    assert isinstance(await client.verify_bearer("t", "introspection", ("extra",)), Verified)


async def test_introspection_unavailable(idp: FakeIdP) -> None:
    idp.introspection = _raise(httpx.ReadTimeout("slow"))
    assert isinstance(await make_client(idp).verify_bearer("t", "introspection"), Unavailable)


async def test_introspection_unsupported(idp: FakeIdP) -> None:
    del idp.discovery["introspection_endpoint"]
    outcome = await make_client(idp).verify_bearer("opaque", "auto")
    assert outcome == Rejected("introspection unsupported")


async def test_bearer_when_discovery_down(idp: FakeIdP) -> None:
    idp.discovery_handler = _raise(httpx.ConnectError("refused"))
    assert isinstance(await make_client(idp).verify_bearer("t", "auto"), Unavailable)


# --- browser sign-in helpers ---------------------------------------------------------


async def test_exchange_code(idp: FakeIdP) -> None:
    observed: list[tuple[str, str]] = []
    client = make_client(idp, observed=observed)
    tokens = await client.exchange_code("the-code", "the-verifier", "https://app/cb")
    assert tokens.access_token == "at-1" and tokens.expires_in == 300.0 and tokens.id_token
    assert tokens.raw["access_token"] == "at-1"
    assert "at-1" not in repr(tokens) and tokens.id_token not in repr(tokens)
    sent = form(idp.last("token"))
    assert sent == {
        "grant_type": "authorization_code",
        "code": "the-code",
        "redirect_uri": "https://app/cb",
        "code_verifier": "the-verifier",
        "client_id": CLIENT,
        "client_secret": SECRET,
    }
    assert observed[-1] == ("token", "ok")


async def test_exchange_code_errors(idp: FakeIdP) -> None:
    client = make_client(idp)
    idp.token = lambda r: httpx.Response(400, json={"error": "invalid_grant"})
    with pytest.raises(TokenError) as caught:
        await client.exchange_code("c", "v", "https://app/cb")
    assert caught.value.error == "invalid_grant" and isinstance(caught.value, ValueError)
    idp.token = lambda r: httpx.Response(200, json={"token_type": "Bearer"})
    with pytest.raises(TokenError):
        await client.exchange_code("c", "v", "https://app/cb")
    idp.token = lambda r: httpx.Response(503)
    with pytest.raises(IdPUnavailable):
        await client.exchange_code("c", "v", "https://app/cb")


async def test_verify_id_token_nonce(idp: FakeIdP) -> None:
    client = make_client(idp)
    token = rs256(claims(nonce="n-1"))
    assert (await client.verify_id_token(token, nonce="n-1"))["sub"] == "user-1"
    with pytest.raises(TokenError) as caught:
        await client.verify_id_token(token, nonce="n-2")
    assert caught.value.error == "nonce mismatch"
    with pytest.raises(TokenError):
        await client.verify_id_token(rs256(claims()), nonce="n-1")


async def test_verify_id_token_jwks_fault(idp: FakeIdP) -> None:
    idp.jwks_documents = [{"keys": "nope"}]
    with pytest.raises(IdPUnavailable):
        await make_client(idp).verify_id_token(rs256(claims()), nonce=None)


async def test_userinfo(idp: FakeIdP) -> None:
    client = make_client(idp)
    assert (await client.userinfo("at"))["sub"] == "user-1"
    idp.userinfo = lambda r: httpx.Response(401, json={"error": "invalid_token"})
    with pytest.raises(TokenError):
        await client.userinfo("at")
    idp.userinfo = lambda r: httpx.Response(504)
    with pytest.raises(IdPUnavailable):
        await client.userinfo("at")
    del idp.discovery["userinfo_endpoint"]
    with pytest.raises(TokenError):
        await make_client(idp).userinfo("at")


# --- one deadline per verification (SPEC §5 "IdP unreachable") ------------------------


def slow(handler: Callable[[httpx.Request], httpx.Response], seconds: float) -> Any:
    async def delayed(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(seconds)
        return handler(request)

    return delayed


@pytest.mark.parametrize("method", ["app_password", "password_grant", "bearer_jwt"])
async def test_every_idp_call_of_a_verification_shares_one_deadline(
    idp: FakeIdP, method: str
) -> None:
    # Each call alone answers well within oidc.timeout; discovery + token + JWKS together
    # do not. (The mock transport applies no per-request timeout of its own.)
    per_call = 0.3
    client = make_client(idp, timeout=0.5)
    transport = httpx.MockTransport(slow(idp, per_call))
    client._http = httpx.AsyncClient(transport=transport)  # type: ignore[attr-defined]
    started = time.monotonic()
    if method == "app_password":
        outcome = await client.verify_app_password("alice", "pw")
    elif method == "password_grant":
        outcome = await client.verify_password_grant("alice", "pw")
    else:
        outcome = await client.verify_bearer(rs256(claims()), "jwt")
    assert outcome == Unavailable("no answer within 0.5s")
    assert time.monotonic() - started < 3 * per_call  # bounds the failure only
    # Nothing sticks: with the IdP fast again, the same client verifies.
    client._http = httpx.AsyncClient(transport=httpx.MockTransport(idp))  # type: ignore[attr-defined]
    assert isinstance(await client.verify_app_password("alice", "pw"), Verified)


# --- endpoints given instead of discovered (SPEC §11) ------------------------------------


def given_client(idp: FakeIdP, *, backchannel_host: str = "", jwks: bool = False) -> OIDCClient:
    settings = OIDCSettings(
        issuer=ISSUER,
        client_id=CLIENT,
        client_secret=SecretStr(SECRET),
        endpoints=OIDCEndpoints(
            authorization_endpoint="https://browser.example.com/authorize",
            token_endpoint=f"{BASE}/token",
            jwks_uri=f"{BASE}/jwks" if jwks else "",
            userinfo_endpoint=f"{BASE}/userinfo",
            end_session_endpoint="https://browser.example.com/end-session",
            id_token_signing_alg_values_supported=("HS256",),
        ),
        backchannel_host=backchannel_host,
    )
    return OIDCClient(settings, httpx.AsyncClient(transport=httpx.MockTransport(idp)))


async def test_given_endpoints_are_used_without_a_discovery_request(idp: FakeIdP) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    idp.token = lambda r: httpx.Response(200, json={"access_token": "at", "id_token": token})
    client = given_client(idp)
    d = await client.discovery()
    assert (
        d.issuer == ISSUER and d.authorization_endpoint == "https://browser.example.com/authorize"
    )
    assert d.hmac_algorithms == {"HS256"}
    outcome = await client.verify_app_password("alice", "pw")
    assert isinstance(outcome, Verified)
    assert idp.calls["openid-configuration"] == 0 and idp.calls["jwks"] == 0
    # An asymmetric token with no jwks_uri given cannot be verified: unavailable, not allowed.
    idp.token = lambda r: httpx.Response(
        200, json={"access_token": "at", "id_token": rs256(claims())}
    )
    assert isinstance(await given_client(idp).verify_app_password("alice", "pw"), Unavailable)


async def test_backchannel_requests_carry_the_browser_host(idp: FakeIdP) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    idp.token = lambda r: httpx.Response(200, json={"access_token": "at", "id_token": token})
    await given_client(idp, backchannel_host="authentik.example.com").verify_app_password("a", "b")
    assert idp.last("token").headers["host"] == "authentik.example.com"
    await given_client(idp).verify_app_password("a", "b")
    assert idp.last("token").headers["host"] == urlsplit(BASE).netloc
