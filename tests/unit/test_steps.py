"""The decision for a known application: SPEC §4 steps 4-7 and the allowed-request mutations."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from ext_authz.config import Application
from ext_authz.core.credentials import (
    BasicCredential,
    BearerCredential,
    Credential,
    MalformedCredential,
)
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.model import AuthRequest, Identity, Rejected, Unavailable, Verified
from ext_authz.core.steps import (
    Facts,
    StartLogin,
    cookie_names,
    credential_for,
    decide,
    is_browser_navigation,
    login_cookie_name,
    session_expiry,
)
from ext_authz.core.upstream import upstream_basic
from tests.unit.conftest import make_app

ALICE = Identity(
    sub="uid-alice",
    preferred_username="alice",
    email="alice@example.com",
    name="Alice",
    groups=("admins", "staff"),
    token="eyJ.alice.sig",
    attributes={"app_username": "svc-alice", "app_password": "pw:1"},
)

BASIC_HEADER = "Basic " + base64.b64encode(b"alice:app-password").decode()
BEARER_HEADER = "Bearer eyJ.tok.sig"
HTML = "text/html,application/xhtml+xml,*/*;q=0.8"

DEFAULT_SETTINGS: dict[str, Any] = {"skip_path_regex": ["^/public/", "^/healthz$"]}


def app(**settings: Any) -> Application:
    oidc = settings.pop("oidc", True)
    return make_app(oidc=oidc, **{**DEFAULT_SETTINGS, **settings})


APP = app()


def req(
    path: str = "/page",
    *,
    method: str = "GET",
    query: str = "",
    headers: Mapping[str, str] | None = None,
    host: str = "app.example.com",
) -> AuthRequest:
    return AuthRequest(
        has_http=True,
        method=method,
        host=host,
        path=path,
        query=query,
        scheme="https",
        headers=dict(headers or {}),
    )


def run(
    request: AuthRequest,
    application: Application = APP,
    *,
    verdict: Verified | Rejected | Unavailable | None = None,
    credential: Credential | str | None = "parse",
    **facts: Any,
) -> Allow | Deny | StartLogin:
    """decide() with the credential parsed as the service would, unless given."""
    parsed = credential_for(request, application) if credential == "parse" else credential
    assert not isinstance(parsed, str)
    return decide(
        Facts(request=request, app=application, credential=parsed, verdict=verdict, **facts)
    )


def headers_named(decision: Deny, name: str) -> list[str]:
    return [value for key, value in decision.headers if key == name]


# --- the step order, as a table ------------------------------------------------------


@dataclass(frozen=True)
class Case:
    request: AuthRequest
    app: Application = APP
    session: Identity | None = None
    verdict: Verified | Rejected | Unavailable | None = None
    store_down: bool = False
    stale_cookie: bool = False


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # step 4
        pytest.param(Case(req(), session=ALICE), "allow:session", id="session"),
        pytest.param(
            Case(
                req(headers={"authorization": "Bearer x"}), session=ALICE, verdict=Rejected("bad")
            ),
            "allow:session",
            id="session-beats-header",
        ),
        pytest.param(
            Case(req("/public/x"), session=ALICE), "allow:session", id="session-on-skip-path"
        ),
        # step 5
        pytest.param(
            Case(req(headers={"authorization": BASIC_HEADER}), verdict=Verified(ALICE)),
            "allow:basic",
            id="verified-basic",
        ),
        pytest.param(
            Case(req(headers={"authorization": BEARER_HEADER}), verdict=Verified(ALICE)),
            "allow:bearer",
            id="verified-bearer",
        ),
        pytest.param(
            Case(
                req(headers={"authorization": BASIC_HEADER}),
                verdict=Verified(ALICE),
                store_down=True,
            ),
            "allow:basic",
            id="verified-store-down",
        ),
        pytest.param(
            Case(req(headers={"authorization": BEARER_HEADER}), verdict=Unavailable("idp down")),
            503,
            id="idp-unavailable",
        ),
        pytest.param(
            Case(
                req("/public/x", headers={"authorization": BEARER_HEADER}),
                verdict=Unavailable("idp down"),
            ),
            "allow:skip",
            id="idp-unavailable-skip-path",
        ),
        pytest.param(
            Case(
                req(headers={"authorization": BEARER_HEADER}),
                app=app(intercept_header_auth=False),
                verdict=Unavailable("idp down"),
            ),
            503,
            id="idp-unavailable-without-intercept",
        ),
        pytest.param(
            Case(req(headers={"authorization": BASIC_HEADER}), verdict=Rejected("bad password")),
            401,
            id="rejected-intercept",
        ),
        pytest.param(
            Case(req(headers={"authorization": "Bearer a b"})), 401, id="malformed-intercept"
        ),
        pytest.param(
            Case(req(headers={"authorization": "Digest x"})), 401, id="other-scheme-intercept"
        ),
        pytest.param(
            Case(
                req("/public/x", headers={"authorization": BASIC_HEADER}), verdict=Rejected("bad")
            ),
            "allow:skip",
            id="rejected-skip-path-still-passes",
        ),
        pytest.param(
            Case(
                req(headers={"authorization": BASIC_HEADER}),
                app=app(intercept_header_auth=False),
                verdict=Rejected("bad"),
            ),
            "login",
            id="rejected-without-intercept-redirects",
        ),
        pytest.param(
            Case(
                req(headers={"authorization": "Digest x"}),
                app=app(intercept_header_auth=False, unauthenticated="deny"),
            ),
            401,
            id="malformed-without-intercept-deny",
        ),
        pytest.param(
            Case(
                req(headers={"authorization": BASIC_HEADER}),
                verdict=Rejected("bad"),
                store_down=True,
            ),
            401,
            id="rejected-store-down-intercept",
        ),
        # step 6
        pytest.param(Case(req("/public/x")), "allow:skip", id="skip-path"),
        pytest.param(Case(req("/healthz")), "allow:skip", id="skip-path-anchored"),
        pytest.param(Case(req("/healthz/more")), "login", id="skip-path-anchor-end"),
        pytest.param(Case(req("/x", query="next=/public/")), "login", id="skip-path-ignores-query"),
        pytest.param(
            Case(req("/public/x"), store_down=True), "allow:skip", id="skip-path-store-down"
        ),
        pytest.param(
            Case(req("/public/x"), stale_cookie=True), "allow:skip", id="skip-path-stale-cookie"
        ),
        # step 7
        pytest.param(Case(req(), store_down=True), 503, id="store-down-no-credential"),
        pytest.param(Case(req(headers={"accept": HTML})), "login", id="redirect"),
        pytest.param(
            Case(req(method="POST", headers={"accept": "application/json"})),
            "login",
            id="redirect-mode-redirects-everything",
        ),
        pytest.param(Case(req(), app=app(unauthenticated="deny")), 401, id="deny"),
        pytest.param(
            Case(req(headers={"accept": HTML}), app=app(unauthenticated="auto")),
            "login",
            id="auto-browser",
        ),
        pytest.param(
            Case(req(method="HEAD", headers={"accept": HTML}), app=app(unauthenticated="auto")),
            "login",
            id="auto-head",
        ),
        pytest.param(
            Case(
                req(headers={"accept": HTML, "x-requested-with": "XMLHttpRequest"}),
                app=app(unauthenticated="auto"),
            ),
            401,
            id="auto-xhr",
        ),
        pytest.param(
            Case(req(headers={"accept": "application/json"}), app=app(unauthenticated="auto")),
            401,
            id="auto-json",
        ),
        pytest.param(
            Case(req(method="POST", headers={"accept": HTML}), app=app(unauthenticated="auto")),
            401,
            id="auto-post",
        ),
        pytest.param(Case(req(), app=app(unauthenticated="auto")), 401, id="auto-no-accept"),
        pytest.param(
            Case(req(headers={"accept": HTML}), app=app(oidc=False)), 401, id="no-oidc-always-401"
        ),
        pytest.param(Case(req(), stale_cookie=True), "login", id="stale-cookie-redirect"),
    ],
)
def test_step_order(case: Case, expected: str | int) -> None:
    decision = run(
        case.request,
        case.app,
        session=case.session,
        verdict=case.verdict,
        store_down=case.store_down,
        stale_cookie=case.stale_cookie,
    )
    if expected == "login":
        assert isinstance(decision, StartLogin)
    elif isinstance(expected, str):
        assert isinstance(decision, Allow), decision
        assert f"allow:{decision.method}" == expected
    else:
        assert isinstance(decision, Deny), decision
        assert decision.status == expected


# --- allowed requests ------------------------------------------------------------------


def test_session_allow_carries_identity_headers() -> None:
    decision = run(req(), session=ALICE)
    assert isinstance(decision, Allow)
    assert decision.identity == ALICE
    assert decision.create_session is False
    assert decision.response_headers == ()
    assert dict(decision.set_headers) == {
        "X-authentik-username": "alice",
        "X-authentik-groups": "admins|staff",
        "X-authentik-email": "alice@example.com",
        "X-authentik-name": "Alice",
        "X-authentik-uid": "uid-alice",
        "X-authentik-jwt": "eyJ.alice.sig",
        "X-authentik-meta-app": "app",
        "X-authentik-meta-provider": "app-client",
    }
    # entitlements are empty: removed rather than set to "".
    assert "x-authentik-entitlements" in decision.remove_headers


@pytest.mark.parametrize(
    ("intercept", "removed"),
    [pytest.param(True, True, id="intercept"), pytest.param(False, False, id="no-intercept")],
)
def test_session_allow_removes_authorization_only_when_intercepting(
    intercept: bool, removed: bool
) -> None:
    decision = run(
        req(headers={"authorization": BEARER_HEADER}),
        app(intercept_header_auth=intercept),
        session=ALICE,
        credential=None,
    )
    assert isinstance(decision, Allow)
    assert ("authorization" in decision.remove_headers) is removed


@pytest.mark.parametrize(
    ("receive", "store_down", "create"),
    [
        pytest.param({}, False, True, id="create-session-default"),
        pytest.param({"create_session": False}, False, False, id="create-session-off"),
        pytest.param({}, True, False, id="store-down-no-session"),
    ],
)
def test_verified_header_allow(receive: dict[str, Any], store_down: bool, create: bool) -> None:
    application = app(receive=receive) if receive else APP
    decision = run(
        req(headers={"authorization": BASIC_HEADER}),
        application,
        verdict=Verified(ALICE),
        store_down=store_down,
    )
    assert isinstance(decision, Allow)
    assert decision.method == "basic"
    assert decision.identity == ALICE
    assert decision.create_session is create
    assert "authorization" in decision.remove_headers  # consumed
    assert "authorization" not in dict(decision.set_headers)
    assert dict(decision.set_headers)["X-authentik-username"] == "alice"


@pytest.mark.parametrize("intercept", [True, False], ids=["intercept", "no-intercept"])
def test_verified_header_is_consumed_even_without_intercept(intercept: bool) -> None:
    decision = run(
        req(headers={"authorization": BEARER_HEADER}),
        app(intercept_header_auth=intercept),
        verdict=Verified(ALICE),
    )
    assert isinstance(decision, Allow)
    assert decision.method == "bearer"
    assert "authorization" in decision.remove_headers


def test_authentik_token_username_goes_the_bearer_way() -> None:
    header = "Basic " + base64.b64encode(b"goauthentik.io/token:tok-123").decode()
    request = req(headers={"authorization": header})
    assert credential_for(request, APP) == BearerCredential("tok-123")
    decision = run(request, verdict=Verified(ALICE))
    assert isinstance(decision, Allow)
    assert decision.method == "bearer"


@pytest.mark.parametrize(
    ("intercept", "removed"),
    [pytest.param(True, True, id="intercept"), pytest.param(False, False, id="no-intercept")],
)
def test_skip_path_allow(intercept: bool, removed: bool) -> None:
    request = req(
        "/public/file",
        headers={
            "authorization": BASIC_HEADER,
            "x-authentik-username": "admin",
            "X_Authentik_Groups": "admins",
            "x-authentikate": "kept",
            "cookie": "other=1",
        },
    )
    decision = run(request, app(intercept_header_auth=intercept), verdict=Rejected("bad"))
    assert isinstance(decision, Allow)
    assert decision.method == "skip"
    assert decision.identity is None
    assert decision.create_session is False
    assert not any(n.lower().startswith("x-authentik") for n, _ in decision.set_headers)
    assert "x-authentik-username" in decision.remove_headers
    assert "X_Authentik_Groups" in decision.remove_headers
    assert "x-authentikate" not in decision.remove_headers
    assert ("authorization" in decision.remove_headers) is removed
    # send.basic has no identity to speak for on a skip path.
    assert "authorization" not in dict(decision.set_headers)


@pytest.mark.parametrize(
    ("path", "skipped"),
    [
        pytest.param("/public/x", True, id="public"),
        pytest.param("/public//x", True, id="double-slash"),
        pytest.param("/public/a%2e", True, id="encoded-dot-in-a-name"),
        pytest.param("/secret/../public/x", True, id="dot-dot-into-public"),
        pytest.param("/healthz;jsessionid=1", True, id="parameter-cut"),
        pytest.param("/public/../secret", False, id="dot-dot"),
        pytest.param("/public/x/../../secret", False, id="dot-dot-twice"),
        pytest.param("/public/%2e%2e/secret", False, id="encoded-dot-dot"),
        pytest.param("/public/..%2fsecret", False, id="encoded-slash"),
        pytest.param("/public/..%5Csecret", False, id="encoded-backslash"),
        pytest.param("/public/..;/secret", False, id="dot-dot-semicolon"),
        pytest.param("/public/\\..\\secret", False, id="backslash"),
        pytest.param("/public/%00", False, id="nul"),
        pytest.param("/public/%zz", False, id="invalid-escape"),
        pytest.param("/../public/x", False, id="above-the-root"),
        pytest.param("/healthz/..", False, id="healthz-directory-is-root"),
    ],
)
def test_skip_regex_is_searched_in_the_normalised_path(path: str, skipped: bool) -> None:
    decision = run(req(path, headers={"accept": "application/json"}), app(unauthenticated="deny"))
    if skipped:
        assert isinstance(decision, Allow) and decision.method == "skip"
    else:
        assert isinstance(decision, Deny) and decision.status == 401


def test_client_authentik_headers_removed_or_overwritten_on_authenticated_allow() -> None:
    request = req(
        headers={
            "x-authentik-username": "admin",  # overwritten by ours (set, not removed)
            "x_authentik_uid": "0",  # another spelling: removed
            "x-authentik-secret-role": "root",  # not one of ours: removed
        }
    )
    decision = run(request, session=ALICE)
    assert isinstance(decision, Allow)
    assert dict(decision.set_headers)["X-authentik-username"] == "alice"
    assert "x-authentik-username" not in decision.remove_headers
    assert {"x_authentik_uid", "x-authentik-secret-role"} <= set(decision.remove_headers)


def test_identity_headers_off_still_removes_client_copies() -> None:
    decision = run(
        req(headers={"x-authentik-username": "admin"}),
        app(send={"identity_headers": False}),
        session=ALICE,
    )
    assert isinstance(decision, Allow)
    assert decision.set_headers == ()
    assert "x-authentik-username" in decision.remove_headers


def test_empty_identity_values_become_removals() -> None:
    bare = Identity(sub="u1")  # no token, email, name, groups...
    decision = run(req(headers={"x-authentik-jwt": "forged"}), session=bare)
    assert isinstance(decision, Allow)
    assert all(value for _, value in decision.set_headers)
    for name in (
        "x-authentik-jwt",
        "x-authentik-email",
        "x-authentik-name",
        "x-authentik-groups",
        "x-authentik-entitlements",
    ):
        assert name in decision.remove_headers
    assert dict(decision.set_headers)["X-authentik-uid"] == "u1"
    assert len(decision.remove_headers) == len(set(decision.remove_headers))


def test_unsafe_identity_values_are_dropped_and_reported() -> None:
    evil = Identity(sub="u1", preferred_username="alice", name="A\r\nX-Admin: 1")
    decision = run(req(headers={"x-authentik-name": "forged"}), session=evil)
    assert isinstance(decision, Allow)
    assert decision.identity_part is not None
    assert decision.identity_part.dropped == ("X-authentik-name",)
    assert "X-authentik-name" not in dict(decision.set_headers)
    assert "x-authentik-name" in decision.remove_headers  # the client's copy goes too


# --- additionalHeaders: declared names only (SPEC §7) ---------------------------------------

TEAM_APP = app(send={"additional_headers": ["X-Team"]})
SPOOFED = {"x-team": "red", "x_team": "red", "X_TEAM": "red", "x-teams": "kept"}


def with_team(value: object) -> Identity:
    return Identity(sub="u1", preferred_username="carol", attributes={"additionalHeaders": value})


@pytest.mark.parametrize(
    ("path", "session", "sent", "removed"),
    [
        pytest.param(
            "/page",
            with_team({"X-Team": "blue"}),
            {"X-Team": "blue"},
            {"x_team", "X_TEAM"},  # x-team itself is overwritten, not removed
            id="declared-value-overwrites",
        ),
        pytest.param(
            "/page", with_team({}), {}, {"x-team", "x_team", "X_TEAM"}, id="identity-has-none"
        ),
        pytest.param(
            "/page",
            with_team({"X-Team": ""}),
            {},
            {"x-team", "x_team", "X_TEAM"},
            id="empty-value",
        ),
        pytest.param(
            "/page",
            with_team({"X-Team": "blue\r\nX-Admin: 1"}),
            {},
            {"x-team", "x_team", "X_TEAM"},
            id="unsafe-value",
        ),
        pytest.param(
            "/page",
            with_team({"X-Team": 5}),
            {},
            {"x-team", "x_team", "X_TEAM"},
            id="not-a-string",
        ),
        pytest.param("/public/x", None, {}, {"x-team", "x_team", "X_TEAM"}, id="skip-path"),
    ],
)
def test_client_copies_of_declared_headers_never_pass(
    path: str, session: Identity | None, sent: dict[str, str], removed: set[str]
) -> None:
    decision = run(req(path, headers=SPOOFED), TEAM_APP, session=session)
    assert isinstance(decision, Allow)
    team = {n: v for n, v in decision.set_headers if n.lower().replace("_", "-") == "x-team"}
    assert team == sent
    assert {n for n in decision.remove_headers if n != "x-teams"} >= removed
    assert "x-teams" not in decision.remove_headers
    if sent:
        assert "x-team" not in decision.remove_headers  # would drop our own value


def test_undeclared_additional_headers_are_not_sent_and_reported() -> None:
    carol = with_team({"X-Team": "blue", "X-Floor": "3", "x_authentik_username": "root"})
    decision = run(req(headers={"x-floor": "9"}), TEAM_APP, session=carol)
    assert isinstance(decision, Allow)
    assert dict(decision.set_headers)["X-Team"] == "blue"
    assert "X-Floor" not in dict(decision.set_headers)
    assert "x_authentik_username" not in dict(decision.set_headers)
    assert dict(decision.set_headers)["X-authentik-username"] == "carol"
    assert decision.identity_part is not None
    assert decision.identity_part.undeclared == ("X-Floor", "x_authentik_username")
    # Undeclared names are not ours to police: a client's own X-Floor passes.
    assert "x-floor" not in decision.remove_headers


def test_nothing_declared_sends_no_additional_header() -> None:
    decision = run(req(headers={"x-team": "red"}), session=with_team({"X-Team": "blue"}))
    assert isinstance(decision, Allow)
    assert "X-Team" not in dict(decision.set_headers)
    assert "x-team" not in decision.remove_headers  # not declared: not ours to police
    assert decision.identity_part is not None
    assert decision.identity_part.undeclared == ("X-Team",)


@pytest.mark.parametrize(
    "request_headers",
    [
        pytest.param({}, id="no-client-authorization"),
        pytest.param({"authorization": BASIC_HEADER}, id="replaces-client-authorization"),
    ],
)
def test_send_basic_sets_authorization(request_headers: dict[str, str]) -> None:
    application = app(
        send={
            "basic": {
                "enabled": True,
                "username_attribute": "app_username",
                "password_attribute": "app_password",
            }
        }
    )
    verdict = Verified(ALICE) if request_headers else None
    decision = run(
        req(headers=request_headers),
        application,
        session=None if request_headers else ALICE,
        verdict=verdict,
    )
    assert isinstance(decision, Allow)
    expected = upstream_basic(
        ALICE, username_attribute="app_username", password_attribute="app_password"
    )
    assert expected == "Basic " + base64.b64encode(b"svc-alice:pw:1").decode()
    assert dict(decision.set_headers)["authorization"] == expected
    assert "authorization" not in decision.remove_headers


# --- the cookie the upstream sees ----------------------------------------------------------


@pytest.mark.parametrize(
    ("cookie", "set_to", "removed"),
    [
        pytest.param(
            "other=1; {s}=sess; {l}=login; more=2", "other=1; more=2", False, id="rewritten"
        ),
        pytest.param("other=1,{s}=sess", "other=1", False, id="comma-form"),
        pytest.param("{s}=sess; {l}=login", None, True, id="nothing-left"),
        pytest.param("other=1; more=2", None, False, id="untouched"),
    ],
)
def test_strip_session_cookie(cookie: str, set_to: str | None, removed: bool) -> None:
    header = cookie.format(s=APP.cookie_name, l=login_cookie_name(APP))
    decision = run(req(headers={"cookie": header}), session=ALICE)
    assert isinstance(decision, Allow)
    assert dict(decision.set_headers).get("cookie") == set_to
    assert ("cookie" in decision.remove_headers) is removed


OTHER = app(name="other", external_host="https://other.example.com", oidc=False)


@pytest.mark.parametrize(
    ("cookie", "set_to", "removed"),
    [
        pytest.param(
            'c=3,4; {o}=theirs; b="2"; {s}=sess; {ol}=login',
            'c=3,4; b="2"',
            False,
            id="every-applications-cookies-go-the-rest-byte-for-byte",
        ),
        pytest.param("{o}=theirs", None, True, id="only-another-applications"),
        pytest.param("{o}x=1; x{o}=2", None, False, id="similar-names-untouched"),
        pytest.param('c=3,4; b="2"', None, False, id="nothing-ours-untouched"),
    ],
)
@pytest.mark.parametrize("more_apps", [0, 40], ids=["two-apps", "many-apps"])
def test_strip_every_applications_cookies(
    cookie: str, set_to: str | None, removed: bool, more_apps: int
) -> None:
    """With many applications (a large outpost) the names are matched per cookie piece
    instead of scanned for in the header: the answer is the same byte for byte."""
    header = cookie.format(s=APP.cookie_name, o=OTHER.cookie_name, ol=login_cookie_name(OTHER))
    names = cookie_names((APP, OTHER))
    assert names == {
        APP.cookie_name,
        login_cookie_name(APP),
        OTHER.cookie_name,
        login_cookie_name(OTHER),
    }
    names |= {f"authentik_proxy_{i:08x}" for i in range(more_apps)}
    for session in (ALICE, None):  # an authenticated request, and one on a skip path
        decision = decide(
            Facts(
                request=req("/page" if session else "/public/x", headers={"cookie": header}),
                app=APP,
                session=session,
                cookie_names=names,
            )
        )
        assert isinstance(decision, Allow)
        assert dict(decision.set_headers).get("cookie") == set_to
        assert ("cookie" in decision.remove_headers) is removed


def test_strip_session_cookie_off_leaves_the_cookie() -> None:
    header = f"{APP.cookie_name}=sess; other=1"
    decision = run(
        req(headers={"cookie": header}), app(send={"strip_session_cookie": False}), session=ALICE
    )
    assert isinstance(decision, Allow)
    assert "cookie" not in dict(decision.set_headers)
    assert "cookie" not in decision.remove_headers


def test_strip_session_cookie_on_skip_path() -> None:
    decision = run(req("/public/x", headers={"cookie": f"{APP.cookie_name}=sess; a=1"}))
    assert isinstance(decision, Allow)
    assert dict(decision.set_headers)["cookie"] == "a=1"


# --- stale cookies ---------------------------------------------------------------------------


def _expires_our_cookie(value: str, application: Application) -> bool:
    return value.startswith(f"{application.cookie_name}=;") and "Max-Age=0" in value


def test_stale_cookie_is_expired_on_401() -> None:
    application = app(unauthenticated="deny", cookie_domain=".example.com")
    decision = run(req(), application, stale_cookie=True)
    assert isinstance(decision, Deny)
    assert decision.status == 401
    cookies = headers_named(decision, "set-cookie")
    assert len(cookies) == 1
    assert _expires_our_cookie(cookies[0], application)
    assert "Domain=.example.com" in cookies[0]
    assert "Secure" in cookies[0]


@pytest.mark.parametrize(
    ("path", "verdict", "create", "expired"),
    [
        pytest.param("/public/x", None, {}, True, id="skip-path"),
        pytest.param(
            "/x", Verified(ALICE), {"create_session": False}, True, id="verified-no-new-session"
        ),
        pytest.param("/x", Verified(ALICE), {}, False, id="verified-new-session-replaces-it"),
    ],
)
def test_stale_cookie_on_allow(
    path: str, verdict: Verified | None, create: dict[str, Any], expired: bool
) -> None:
    application = app(receive=create) if create else APP
    decision = run(
        req(path, headers={"authorization": BASIC_HEADER}),
        application,
        verdict=verdict,
        stale_cookie=True,
    )
    assert isinstance(decision, Allow)
    expiring = [v for k, v in decision.response_headers if k == "set-cookie"]
    assert bool(expiring) is expired
    assert all(_expires_our_cookie(v, application) for v in expiring)


def test_no_stale_cookie_no_set_cookie() -> None:
    decision = run(req(), app(unauthenticated="deny"))
    assert isinstance(decision, Deny)
    assert headers_named(decision, "set-cookie") == []


# --- 401 and 503 answers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("receive", "header", "verdict", "challenges"),
    [
        pytest.param(
            {},
            BASIC_HEADER,
            Rejected("bad"),
            ['Basic realm="app"', 'Bearer realm="app"'],
            id="rejected-basic",
        ),
        pytest.param(
            {},
            BEARER_HEADER,
            Rejected("expired"),
            ['Basic realm="app"', 'Bearer realm="app", error="invalid_token"'],
            id="rejected-bearer",
        ),
        pytest.param(
            {},
            "Bearer not a token",
            None,
            ['Basic realm="app"', 'Bearer realm="app", error="invalid_token"'],
            id="malformed-bearer",
        ),
        pytest.param(
            {}, "Basic !!", None, ['Basic realm="app"', 'Bearer realm="app"'], id="malformed-basic"
        ),
        pytest.param(
            {}, "Digest x", None, ['Basic realm="app"', 'Bearer realm="app"'], id="other-scheme"
        ),
        pytest.param(
            {"bearer": {"enabled": False}},
            BASIC_HEADER,
            Rejected("bad"),
            ['Basic realm="app"'],
            id="basic-only",
        ),
        pytest.param(
            {"basic": {"enabled": False}},
            BEARER_HEADER,
            Rejected("bad"),
            ['Bearer realm="app", error="invalid_token"'],
            id="bearer-only",
        ),
        pytest.param(
            {"basic": {"enabled": False}},
            BASIC_HEADER,
            None,
            ['Bearer realm="app"'],
            id="basic-not-enabled-is-invalid",
        ),
    ],
)
def test_invalid_header_challenge(
    receive: dict[str, Any], header: str, verdict: Rejected | None, challenges: list[str]
) -> None:
    application = app(receive=receive) if receive else APP
    decision = run(req(headers={"authorization": header}), application, verdict=verdict)
    assert isinstance(decision, Deny)
    assert decision.status == 401
    assert headers_named(decision, "www-authenticate") == challenges
    assert headers_named(decision, "cache-control") == ["no-store"]


def test_unauthenticated_challenge_has_no_invalid_token() -> None:
    decision = run(req(), app(unauthenticated="deny"))
    assert isinstance(decision, Deny)
    assert headers_named(decision, "www-authenticate") == [
        'Basic realm="app"',
        'Bearer realm="app"',
    ]


@pytest.mark.parametrize(
    ("accept", "json_body"),
    [
        pytest.param("application/json", True, id="json"),
        pytest.param("application/problem+json", True, id="plus-json"),
        pytest.param("text/html", False, id="html"),
        pytest.param("", False, id="none"),
    ],
)
@pytest.mark.parametrize(
    ("settings", "header", "verdict", "status"),
    [
        pytest.param({}, BEARER_HEADER, Rejected("bad"), 401, id="invalid"),
        pytest.param({"unauthenticated": "deny"}, None, None, 401, id="unauthenticated"),
        pytest.param({}, BEARER_HEADER, Unavailable("down"), 503, id="idp-down"),
    ],
)
def test_error_bodies(
    accept: str,
    json_body: bool,
    settings: dict[str, Any],
    header: str | None,
    verdict: Rejected | Unavailable | None,
    status: int,
) -> None:
    headers = {"accept": accept} if accept else {}
    if header:
        headers["authorization"] = header
    decision = run(req(headers=headers), app(**settings) if settings else APP, verdict=verdict)
    assert isinstance(decision, Deny)
    assert decision.status == status
    assert headers_named(decision, "cache-control") == ["no-store"]
    (content_type,) = headers_named(decision, "content-type")
    if json_body:
        assert content_type == "application/json"
        body = json.loads(decision.body)
        assert set(body) == {"error", "detail"}
        assert body["error"] and body["detail"]
    else:
        assert content_type.startswith("text/plain")
        assert decision.body.startswith(str(status))
    assert "eyJ.tok.sig" not in decision.body


def test_idp_unavailable_is_503_with_retry_after() -> None:
    decision = run(req(headers={"authorization": BEARER_HEADER}), verdict=Unavailable("down"))
    assert isinstance(decision, Deny)
    assert decision.status == 503
    (retry_after,) = headers_named(decision, "retry-after")
    assert int(retry_after) > 0
    assert headers_named(decision, "www-authenticate") == []


def test_store_down_is_503_with_retry_after() -> None:
    decision = run(req(), store_down=True)
    assert isinstance(decision, Deny)
    assert decision.status == 503
    assert int(headers_named(decision, "retry-after")[0]) > 0


def test_start_login_returns_to_the_original_url() -> None:
    decision = run(req("/app/page", query="a=1&b=2", headers={"accept": HTML}))
    assert decision == StartLogin(return_to="https://app.example.com/app/page?a=1&b=2")


# --- credential_for and is_browser_navigation ------------------------------------------------


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("receive", "header", "expected"),
    [
        pytest.param({}, None, None, id="no-header"),
        pytest.param({}, _basic("a", "b"), BasicCredential("a", "b"), id="basic"),
        pytest.param({}, "Bearer t", BearerCredential("t"), id="bearer"),
        pytest.param(
            {"basic": {"enabled": False}, "bearer": {"enabled": False}},
            _basic("a", "b"),
            None,
            id="receiving-off",
        ),
        pytest.param(
            {"basic": {"enabled": False}, "bearer": {"enabled": False}},
            "Digest x",
            None,
            id="receiving-off-garbage",
        ),
        pytest.param(
            {"basic": {"enabled": False}},
            _basic("a", "b"),
            MalformedCredential("basic", "basic not enabled"),
            id="basic-disabled",
        ),
        pytest.param(
            {"bearer": {"enabled": False}},
            "Bearer t",
            MalformedCredential("bearer", "bearer not enabled"),
            id="bearer-disabled",
        ),
        pytest.param(
            {}, _basic("goauthentik.io/token", "tok"), BearerCredential("tok"), id="token-username"
        ),
        pytest.param(
            {"basic": {"enabled": False}},
            _basic("goauthentik.io/token", "tok"),
            BearerCredential("tok"),
            id="token-username-basic-disabled",
        ),
        pytest.param(
            {"bearer": {"enabled": False}},
            _basic("goauthentik.io/token", "tok"),
            MalformedCredential("basic", "token login needs bearer enabled"),
            id="token-username-bearer-disabled",
        ),
        pytest.param(
            {},
            _basic("goauthentik.io/token", ""),
            MalformedCredential("bearer", "empty token"),
            id="token-username-empty",
        ),
        pytest.param(
            {}, "Digest x", MalformedCredential("other", "unsupported scheme"), id="other-scheme"
        ),
    ],
)
def test_credential_for(
    receive: dict[str, Any], header: str | None, expected: Credential | None
) -> None:
    application = app(receive=receive) if receive else APP
    headers = {"authorization": header} if header is not None else {}
    assert credential_for(req(headers=headers), application) == expected


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        pytest.param("GET", {"accept": HTML}, True, id="get-html"),
        pytest.param("HEAD", {"accept": "TEXT/HTML"}, True, id="head-html-case"),
        pytest.param("GET", {"accept": "*/*"}, False, id="any"),
        pytest.param("GET", {}, False, id="no-accept"),
        pytest.param("GET", {"accept": "application/json"}, False, id="json"),
        pytest.param("POST", {"accept": HTML}, False, id="post"),
        pytest.param(
            "GET", {"accept": HTML, "x-requested-with": "XMLHttpRequest"}, False, id="xhr"
        ),
        pytest.param("GET", {"accept": HTML, "x-requested-with": ""}, False, id="xhr-empty-value"),
    ],
)
def test_is_browser_navigation(method: str, headers: dict[str, str], expected: bool) -> None:
    assert is_browser_navigation(req(method=method, headers=headers)) is expected


# --- a cookie that did not resolve is expired in every answer (SPEC §4 step 4) ----------


def test_stale_cookie_is_expired_on_the_sign_in_redirect() -> None:
    outcome = decide(Facts(request=req(headers={"accept": HTML}), app=APP, stale_cookie=True))
    assert isinstance(outcome, StartLogin)
    assert outcome.expire_session is True
    fresh = decide(Facts(request=req(headers={"accept": HTML}), app=APP))
    assert isinstance(fresh, StartLogin) and fresh.expire_session is False


def test_stale_cookie_is_expired_on_an_idp_outage_503() -> None:
    outcome = decide(
        Facts(
            request=req(headers={"authorization": BASIC_HEADER}),
            app=APP,
            stale_cookie=True,
            credential=BasicCredential("alice", "app-password"),
            verdict=Unavailable("timeout"),
        )
    )
    assert isinstance(outcome, Deny) and outcome.status == 503
    cookies = [v for k, v in outcome.headers if k == "set-cookie"]
    assert len(cookies) == 1 and cookies[0].startswith(APP.cookie_name + "=;")
    assert "Max-Age=0" in cookies[0]


def test_a_cached_verification_creates_no_new_session() -> None:
    facts = dict(
        request=req(headers={"authorization": BASIC_HEADER}),
        app=APP,
        credential=BasicCredential("alice", "app-password"),
    )
    fresh = decide(Facts(**facts, verdict=Verified(ALICE)))  # type: ignore[arg-type]
    cached = decide(Facts(**facts, verdict=Verified(ALICE, cached=True)))  # type: ignore[arg-type]
    assert isinstance(fresh, Allow) and fresh.create_session is True
    assert isinstance(cached, Allow) and cached.create_session is False


@pytest.mark.parametrize(
    ("settings", "expires_at", "browser", "header"),
    [
        ({}, None, 86400, 3600),
        ({"receive": {"header_session_lifetime": "2h"}}, None, 86400, 7200),
        ({"session_lifetime": "30m"}, None, 1800, 1800),  # the lower bound wins
        ({}, 600.0, 600, 600),  # never past the token's exp
    ],
)
def test_session_expiry_from_header_auth_is_bounded_by_header_session_lifetime(
    settings: dict[str, Any], expires_at: float | None, browser: int, header: int
) -> None:
    now = 1_000.0
    app = make_app(**settings)
    identity = Identity(sub="a", expires_at=None if expires_at is None else now + expires_at)
    assert session_expiry(app, identity, now) == now + browser
    assert session_expiry(app, identity, now, from_header=True) == now + header
