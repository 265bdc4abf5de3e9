"""The test IdP (tests/idp/idp.mjs through tests.stack.idp) behaves like authentik.

These tests pin down what the rest of the suite relies on: the claims and their merge
order, authentik's client_credentials grant with an app password, the password grant,
introspection of every kind of token the IdP hands out, the browser flow with PKCE,
RP-initiated logout and the request counters.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import jwt
import pytest

from tests.integration.idp_world import ALICE, EXPECTED_ATTRIBUTES, GROUPS, HS_CLIENT
from tests.stack.idp import AUTHENTIK_CALLBACK, IdP, IdPClient, IdPError, IdPStartHung
from tests.stack.proc import START_BOUND

pytestmark = pytest.mark.integration

# RS256 clients (a generic OIDC IdP's), with authentik's redirect URI: the browser flow
# below shows the IdP keeps its query and appends code and state.
POST_CLIENT = IdPClient(
    client_id="whoami",
    client_secret="whoami-secret-0123456789abcdef0123456789",
    redirect_uris=["http://whoami.localhost:8080" + AUTHENTIK_CALLBACK],
    post_logout_redirect_uris=["http://whoami.localhost:8080"],
)
BASIC_CLIENT = IdPClient(
    client_id="basic-app",
    client_secret="basic-secret-0123456789abcdef0123456789",
    redirect_uris=["http://basic.localhost:8080" + AUTHENTIK_CALLBACK],
    token_endpoint_auth_method="client_secret_basic",
)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdP]:
    workdir: Path = tmp_path_factory.mktemp("idp")
    with IdP(
        clients=[POST_CLIENT, BASIC_CLIENT, HS_CLIENT],
        users=[ALICE],
        groups=GROUPS,
        workdir=workdir,
    ) as server:
        yield server


def _jwks(idp: IdP) -> jwt.PyJWKSet:
    return jwt.PyJWKSet.from_dict(httpx.get(idp.jwks_uri).json())


def _verify_rs256(idp: IdP, token: str, audience: str) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in _jwks(idp).keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(
        token, key=key, algorithms=["RS256"], audience=audience, issuer=idp.issuer
    )
    return claims


def _cc_form(client: IdPClient, username: str, password: str, grant: str) -> dict[str, str]:
    return {
        "grant_type": grant,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "username": username,
        "password": password,
        "scope": "openid profile email ak_proxy",
    }


def test_discovery(idp: IdP) -> None:
    doc = httpx.get(idp.discovery_url).json()
    assert doc["issuer"] == idp.issuer
    assert doc["token_endpoint"] == idp.token_endpoint
    assert doc["introspection_endpoint"] == idp.introspection_endpoint
    assert doc["userinfo_endpoint"] == idp.userinfo_endpoint
    assert doc["end_session_endpoint"] == f"{idp.issuer}/session/end"
    assert doc["jwks_uri"] == idp.jwks_uri
    assert {"client_credentials", "password", "authorization_code"} <= set(
        doc["grant_types_supported"]
    )
    assert {"openid", "profile", "email", "ak_proxy"} <= set(doc["scopes_supported"])
    assert "S256" in doc["code_challenge_methods_supported"]
    keys = httpx.get(idp.jwks_uri).json()["keys"]
    assert keys and all("d" not in k for k in keys)  # public halves only


def test_client_credentials_with_app_password(idp: IdP) -> None:
    r = httpx.post(
        idp.token_endpoint,
        data=_cc_form(POST_CLIENT, "alice", "alice-app-password-2", "client_credentials"),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 300
    claims = _verify_rs256(idp, body["id_token"], POST_CLIENT.client_id)
    assert claims["sub"] == "alice"
    assert claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert claims["name"] == "Alice Example"
    assert claims["groups"] == ["zeta", "admins"]
    assert claims["entitlements"] == ["billing"]
    assert claims["ak_proxy"]["user_attributes"] == EXPECTED_ATTRIBUTES
    assert claims["exp"] > claims["iat"]

    at = _verify_rs256(idp, body["access_token"], POST_CLIENT.client_id)
    assert at["sub"] == "alice"
    assert at["exp"] - at["iat"] == 300
    assert at["ak_proxy"]["user_attributes"] == EXPECTED_ATTRIBUTES

    # The JWT access token from this grant is also accepted by introspection.
    intro = httpx.post(
        idp.introspection_endpoint,
        data={
            "token": body["access_token"],
            "client_id": POST_CLIENT.client_id,
            "client_secret": POST_CLIENT.client_secret,
        },
    ).json()
    assert intro["active"] is True
    assert intro["sub"] == "alice"
    assert intro["ak_proxy"]["user_attributes"] == EXPECTED_ATTRIBUTES

    # ... and by userinfo.
    info = httpx.get(
        idp.userinfo_endpoint, headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert info.status_code == 200, info.text
    assert info.json()["groups"] == ["zeta", "admins"]


def test_scopes_limit_claims(idp: IdP) -> None:
    form = _cc_form(POST_CLIENT, "alice", "alice-app-password-1", "client_credentials")
    form["scope"] = "openid email"
    body = httpx.post(idp.token_endpoint, data=form).json()
    claims = _verify_rs256(idp, body["id_token"], POST_CLIENT.client_id)
    assert claims["email"] == "alice@example.com"
    assert "groups" not in claims
    assert "ak_proxy" not in claims


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "wrong-app-password"),
        ("alice", "alice-password"),  # the login password is not an app password
        ("mallory", "alice-app-password-1"),
    ],
)
def test_client_credentials_rejects_bad_credentials(idp: IdP, username: str, password: str) -> None:
    r = httpx.post(
        idp.token_endpoint, data=_cc_form(POST_CLIENT, username, password, "client_credentials")
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


def test_client_credentials_requires_client_auth(idp: IdP) -> None:
    form = _cc_form(POST_CLIENT, "alice", "alice-app-password-1", "client_credentials")
    form["client_secret"] = "not-the-secret"
    r = httpx.post(idp.token_endpoint, data=form)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"


def test_password_grant(idp: IdP) -> None:
    r = httpx.post(
        idp.token_endpoint, data=_cc_form(POST_CLIENT, "alice", "alice-password", "password")
    )
    assert r.status_code == 200, r.text
    claims = _verify_rs256(idp, r.json()["id_token"], POST_CLIENT.client_id)
    assert claims["sub"] == "alice"
    assert claims["ak_proxy"]["user_attributes"] == EXPECTED_ATTRIBUTES

    bad = httpx.post(idp.token_endpoint, data=_cc_form(POST_CLIENT, "alice", "nope", "password"))
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_grant"


def test_minted_opaque_token_introspects(idp: IdP) -> None:
    token = idp.mint_access_token(POST_CLIENT.client_id, "alice")
    assert token.count(".") == 0
    auth = {"client_id": POST_CLIENT.client_id, "client_secret": POST_CLIENT.client_secret}
    intro = httpx.post(idp.introspection_endpoint, data={"token": token, **auth}).json()
    assert intro["active"] is True
    assert intro["sub"] == "alice"
    assert intro["username"] == "alice"
    assert intro["preferred_username"] == "alice"
    assert intro["email"] == "alice@example.com"
    assert intro["name"] == "Alice Example"
    assert intro["groups"] == ["zeta", "admins"]
    assert intro["entitlements"] == ["billing"]
    assert intro["ak_proxy"]["user_attributes"] == EXPECTED_ATTRIBUTES
    assert intro["client_id"] == POST_CLIENT.client_id
    assert intro["iss"] == idp.issuer

    unknown = httpx.post(idp.introspection_endpoint, data={"token": "not-a-token", **auth}).json()
    assert unknown == {"active": False}
    # A JWT the IdP never issued is inactive too (not an error).
    foreign = jwt.encode({"iss": "x"}, "k" * 32, algorithm="HS256")
    assert httpx.post(idp.introspection_endpoint, data={"token": foreign, **auth}).json() == {
        "active": False
    }

    bad_auth = httpx.post(
        idp.introspection_endpoint,
        data={"token": token, "client_id": POST_CLIENT.client_id, "client_secret": "wrong"},
    )
    assert bad_auth.status_code == 401


def test_minted_jwt_verifies_against_jwks(idp: IdP) -> None:
    token = idp.mint_access_token(POST_CLIENT.client_id, "alice", fmt="jwt")
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = _verify_rs256(idp, token, POST_CLIENT.client_id)
    assert claims["sub"] == "alice"
    assert claims["aud"] == POST_CLIENT.client_id
    assert claims["groups"] == ["zeta", "admins"]
    assert claims["ak_proxy"]["user_attributes"] == EXPECTED_ATTRIBUTES
    with pytest.raises(jwt.InvalidAudienceError):
        _verify_rs256(idp, token, "someone-else")


def test_stats_count_requests(idp: IdP) -> None:
    idp.reset_stats()
    assert idp.stats()["token"] == 0
    for _ in range(3):
        httpx.post(
            idp.token_endpoint,
            data=_cc_form(POST_CLIENT, "alice", "alice-app-password-1", "client_credentials"),
        ).raise_for_status()
    httpx.get(idp.jwks_uri).raise_for_status()
    stats = idp.stats()
    assert stats["token"] == 3
    assert stats["token:client_credentials"] == 3
    assert stats["jwks"] == 1
    assert stats["introspection"] == 0
    idp.reset_stats()
    assert idp.stats()["token"] == 0


def test_delays_slow_down_only_the_endpoints_named(idp: IdP) -> None:
    """The knob the deadline tests use: only the named endpoint waits, and `{}` clears."""
    with pytest.raises(IdPError):
        idp.delay(nowhere=5)
    idp.delay(jwks=400)
    try:
        slow = httpx.get(idp.jwks_uri, timeout=5.0)
        assert slow.status_code == 200 and slow.elapsed.total_seconds() >= 0.35
        assert httpx.get(f"{idp.issuer}/_test/delay", timeout=5.0).json() == {"jwks": 400}
    finally:
        idp.delay()
    assert httpx.get(f"{idp.issuer}/_test/delay", timeout=5.0).json() == {}


def test_client_secret_basic_client(idp: IdP) -> None:
    form = _cc_form(BASIC_CLIENT, "alice", "alice-app-password-1", "client_credentials")
    del form["client_secret"]
    # Secret in the body: refused, the client is registered for HTTP Basic.
    as_post = httpx.post(
        idp.token_endpoint, data={**form, "client_secret": BASIC_CLIENT.client_secret}
    )
    assert as_post.status_code == 401
    assert as_post.json()["error"] == "invalid_client"
    r = httpx.post(
        idp.token_endpoint, data=form, auth=(BASIC_CLIENT.client_id, BASIC_CLIENT.client_secret)
    )
    assert r.status_code == 200, r.text
    claims = _verify_rs256(idp, r.json()["id_token"], BASIC_CLIENT.client_id)
    assert claims["preferred_username"] == "alice"

    # And the other way round: a client_secret_post client may not use HTTP Basic.
    post_form = _cc_form(POST_CLIENT, "alice", "alice-app-password-1", "client_credentials")
    del post_form["client_secret"]
    as_basic = httpx.post(
        idp.token_endpoint, data=post_form, auth=(POST_CLIENT.client_id, POST_CLIENT.client_secret)
    )
    assert as_basic.status_code == 401

    token = idp.mint_access_token(BASIC_CLIENT.client_id, "alice")
    intro = httpx.post(
        idp.introspection_endpoint,
        data={"token": token},
        auth=(BASIC_CLIENT.client_id, BASIC_CLIENT.client_secret),
    ).json()
    assert intro["active"] is True


def test_hs256_id_token(idp: IdP) -> None:
    r = httpx.post(
        idp.token_endpoint,
        data=_cc_form(HS_CLIENT, "alice", "alice-app-password-1", "client_credentials"),
    )
    assert r.status_code == 200, r.text
    id_token = r.json()["id_token"]
    assert jwt.get_unverified_header(id_token)["alg"] == "HS256"
    claims = jwt.decode(
        id_token,
        HS_CLIENT.client_secret,
        algorithms=["HS256"],
        audience=HS_CLIENT.client_id,
        issuer=idp.issuer,
    )
    assert claims["sub"] == "alice"
    assert claims["ak_proxy"]["user_attributes"] == EXPECTED_ATTRIBUTES
    assert "sid" not in claims  # no browser session behind this grant


def test_hs256_client_gets_hs256_access_tokens(idp: IdP) -> None:
    # As authentik signs a proxy provider's access tokens: HS256 with the client secret.
    r = httpx.post(
        idp.token_endpoint,
        data=_cc_form(HS_CLIENT, "alice", "alice-app-password-1", "client_credentials"),
    )
    assert r.status_code == 200, r.text
    for token in (r.json()["access_token"], idp.mint_access_token("hs-app", "alice", fmt="jwt")):
        header = jwt.get_unverified_header(token)
        assert header["alg"] == "HS256" and "kid" not in header
        claims = jwt.decode(
            token,
            HS_CLIENT.client_secret,
            algorithms=["HS256"],
            audience=HS_CLIENT.client_id,
            issuer=idp.issuer,
        )
        assert claims["sub"] == "alice"
    # `alg` overrides the client's default, both ways.
    rs = idp.mint_access_token("hs-app", "alice", fmt="jwt", alg="RS256")
    assert _verify_rs256(idp, rs, HS_CLIENT.client_id)["sub"] == "alice"
    hs = idp.mint_access_token(POST_CLIENT.client_id, "alice", fmt="jwt", alg="HS256")
    assert (
        jwt.decode(
            hs, POST_CLIENT.client_secret, algorithms=["HS256"], audience=POST_CLIENT.client_id
        )["sub"]
        == "alice"
    )
    with pytest.raises(IdPError):
        idp.mint_access_token("hs-app", "alice", fmt="jwt", alg="none")


def test_discovery_lists_hs256_for_id_tokens(idp: IdP) -> None:
    doc = httpx.get(idp.discovery_url).json()
    assert set(doc["id_token_signing_alg_values_supported"]) == {"RS256", "HS256"}


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def _follow_to_interaction(client: httpx.Client, url: str) -> str:
    """Follow redirects until an interaction page (returns its URL) or the callback."""
    for _ in range(10):
        r = client.get(url)
        if r.status_code in (302, 303):
            url = urljoin(url, r.headers["location"])
            if not url.startswith(str(client.base_url).rstrip("/")):
                return url  # left the IdP: the redirect_uri
            continue
        assert r.status_code == 200, r.text
        return url
    raise AssertionError("too many redirects")


def test_browser_flow_pkce_and_logout(idp: IdP) -> None:
    verifier, challenge = _pkce()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    redirect_uri = POST_CLIENT.redirect_uris[0]
    query = {
        "response_type": "code",
        "client_id": POST_CLIENT.client_id,
        "redirect_uri": redirect_uri,
        "scope": "openid profile email ak_proxy",
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with httpx.Client(base_url=idp.issuer, follow_redirects=False) as browser:
        # PKCE is required.
        no_pkce = {k: v for k, v in query.items() if not k.startswith("code_challenge")}
        r = browser.get(f"/auth?{urlencode(no_pkce)}")
        assert r.status_code in (302, 303)
        assert "error=invalid_request" in r.headers["location"]

        login_url = _follow_to_interaction(browser, f"{idp.issuer}/auth?{urlencode(query)}")
        assert "/interaction/" in login_url
        page = browser.get(login_url).text
        assert 'name="login"' in page and 'name="password"' in page

        bad = browser.post(login_url, data={"prompt": "login", "login": "alice", "password": "x"})
        assert bad.status_code == 401

        r = browser.post(
            login_url, data={"prompt": "login", "login": "alice", "password": "alice-password"}
        )
        assert r.status_code in (302, 303)
        consent_url = _follow_to_interaction(browser, urljoin(login_url, r.headers["location"]))
        r = browser.post(consent_url, data={"prompt": "consent"})
        assert r.status_code in (302, 303)
        callback = _follow_to_interaction(browser, urljoin(consent_url, r.headers["location"]))
        assert callback.startswith(redirect_uri)
        params = parse_qs(urlsplit(callback).query)
        assert params["X-authentik-auth-callback"] == ["true"]
        assert params["state"] == [state]
        assert params["iss"] == [idp.issuer]

        tokens = httpx.post(
            idp.token_endpoint,
            data={
                "grant_type": "authorization_code",
                "code": params["code"][0],
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
                "client_id": POST_CLIENT.client_id,
                "client_secret": POST_CLIENT.client_secret,
            },
        )
        assert tokens.status_code == 200, tokens.text
        body = tokens.json()
        claims = _verify_rs256(idp, body["id_token"], POST_CLIENT.client_id)
        assert claims["sub"] == "alice"
        assert claims["nonce"] == nonce
        # authentik's `sid`: the IdP session, which SESSION_END names; the test route
        # tells it, and userinfo and the access token do not carry it.
        assert re.fullmatch(r"[0-9a-f]{64}", claims["sid"]), claims
        assert idp.sids("alice")[-1] == claims["sid"]
        assert claims["groups"] == ["zeta", "admins"]
        assert claims["ak_proxy"]["user_attributes"] == EXPECTED_ATTRIBUTES

        auth = {"client_id": POST_CLIENT.client_id, "client_secret": POST_CLIENT.client_secret}
        intro = httpx.post(
            idp.introspection_endpoint, data={"token": body["access_token"], **auth}
        ).json()
        assert intro["active"] is True
        assert intro["ak_proxy"]["user_attributes"] == EXPECTED_ATTRIBUTES
        info = httpx.get(
            idp.userinfo_endpoint, headers={"Authorization": f"Bearer {body['access_token']}"}
        ).json()
        assert info["preferred_username"] == "alice" and "sid" not in info

        # RP-initiated logout back to the registered post_logout_redirect_uri.
        logout = browser.get(
            "/session/end",
            params={
                "id_token_hint": body["id_token"],
                "post_logout_redirect_uri": POST_CLIENT.post_logout_redirect_uris[0],
                "state": "bye",
            },
        )
        assert logout.status_code == 200
        match = re.search(r'action="([^"]+)".*?name="xsrf" value="([^"]+)"', logout.text)
        assert match is not None, logout.text
        done = browser.post(match.group(1), data={"xsrf": match.group(2), "logout": "yes"})
        assert done.status_code in (302, 303)
        # (the IdP normalises the URL: an empty path becomes "/")
        assert done.headers["location"] == f"{POST_CLIENT.post_logout_redirect_uris[0]}/?state=bye"

        # Signed out: a new authorization request asks for the login again.
        again = _follow_to_interaction(browser, f"{idp.issuer}/auth?{urlencode(query)}")
        assert 'name="password"' in browser.get(again).text


def test_restart_keeps_issuer(idp: IdP) -> None:
    before = httpx.get(idp.jwks_uri).json()["keys"][0]["kid"]
    token = idp.mint_access_token(POST_CLIENT.client_id, "alice")
    assert idp.stop() == 0  # SIGTERM: a clean exit
    idp.start()
    assert httpx.get(idp.discovery_url).json()["issuer"] == idp.issuer
    assert httpx.get(idp.jwks_uri).json()["keys"][0]["kid"] != before
    auth = {"client_id": POST_CLIENT.client_id, "client_secret": POST_CLIENT.client_secret}
    assert httpx.post(idp.introspection_endpoint, data={"token": token, **auth}).json() == {
        "active": False
    }


def _hanging_once(workdir: Path, start_bounds: tuple[float, ...]) -> IdP:
    """An IdP whose next start deletes `workdir/hang-once` and hangs for good; a bound of
    1 s for that start only bounds a wait for something that never comes."""
    hang_once = workdir / "hang-once"
    hang_once.touch()
    return IdP(
        clients=[POST_CLIENT],
        users=[ALICE],
        groups=GROUPS,
        workdir=workdir,
        start_bounds=start_bounds,
        hang_once_file=hang_once,
    )


def test_a_start_that_hangs_is_recorded_and_tried_again(tmp_path: Path) -> None:
    server = _hanging_once(tmp_path, start_bounds=(1.0, START_BOUND))  # then a full bound
    with pytest.warns(IdPStartHung, match="hung at start") as warned, server:
        assert httpx.get(server.discovery_url).json()["issuer"] == server.issuer
    assert server.hang_once_file is not None and not server.hang_once_file.exists()
    log = server.log_path.read_text()
    assert log.count("=== start idp") == 2
    assert "missed its deadline; it was doing:" in log
    # The hung process's state and its main thread's native stack, from /proc and gdb.
    report = str(warned[0].message)
    assert re.search(r"^state: [A-Z]", report, re.M)
    assert re.search(r"^Thread 1 .*\n#0 ", report, re.M)


def test_a_start_that_always_hangs_fails_with_what_it_was_doing(tmp_path: Path) -> None:
    server = _hanging_once(tmp_path, start_bounds=(1.0,))
    with pytest.raises(IdPError, match=r"(?ms)hung at start 1 times.*^state: ") as failed:
        server.start()
    assert not server.alive()
    assert "Thread 1 " in str(failed.value)
