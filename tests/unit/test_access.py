"""Access rules per application (SPEC §12): the compiled rules, their place in the
decision, the service's refusal (log line, metric, session kept), and config errors."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ext_authz.config import Application
from ext_authz.core.access import ADMIT, NO_RULE, AccessPolicy, AccessRuleError, compile_policy
from ext_authz.core.credentials import BasicCredential
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.model import AuthRequest, Identity, Verified
from ext_authz.core.steps import Facts, Refused, decide
from ext_authz.errors import ConfigError
from tests.unit.conftest import make_app
from tests.unit.test_service import CountingVerifier, basic_header, run, service

ALICE = Identity(
    sub="uid-alice",
    preferred_username="alice",
    email="Alice@Example.COM",
    groups=("admins", "staff"),
    attributes={"team": "sre", "tags": ["oncall", 7, True], "nested": {"level": 3}},
)
BOB = Identity(
    sub="uid-bob",
    preferred_username="bob",
    email="bob@other.org",
    groups=("staff",),
    attributes={"team": "web", "tags": []},
)
NOBODY = Identity(sub="uid-x", preferred_username="x")

CLAIM = "ak_proxy.user_attributes"


def policy(*rules: dict[str, Any], attributes_claim: str = CLAIM) -> Any:
    return compile_policy(list(rules), attributes_claim=attributes_claim)


# --- first match decides -----------------------------------------------------------

ORDERED = policy(
    {"paths": ["^/admin/"], "groups": ["admins"]},
    {"paths": ["^/admin/"], "users": ["bob"]},  # never reached for /admin/: rule 0 decides
    {"paths": ["^/api/"], "methods": ["post", "DELETE"], "groups": ["admins"]},
    {"paths": ["^/api/"]},
    {"paths": ["^/open$"]},
)


@pytest.mark.parametrize(
    ("identity", "path", "method", "verdict"),
    [
        (ALICE, "/admin/x", "GET", ADMIT),
        (BOB, "/admin/x", "GET", 0),  # rule 1 would admit bob: first match decides
        (ALICE, "/api/items", "POST", ADMIT),
        (BOB, "/api/items", "POST", 2),
        (BOB, "/api/items", "DELETE", 2),
        (BOB, "/api/items", "GET", ADMIT),  # method rule does not match: rule 3, open
        (NOBODY, "/open", "GET", ADMIT),
        (NOBODY, "/other", "GET", NO_RULE),  # no rule matching: refused
        (ALICE, "/other", "GET", NO_RULE),
    ],
)
def test_first_matching_rule_decides(
    identity: Identity, path: str, method: str, verdict: int | None
) -> None:
    assert ORDERED.evaluate(identity, path, method) == verdict


def test_no_rules_admit_everyone() -> None:
    empty = policy()
    assert not empty
    assert empty.evaluate(NOBODY, "/anything", "GET") is ADMIT
    assert empty.evaluate(NOBODY, None, "GET") is ADMIT


@pytest.mark.parametrize(
    ("rule", "admitted"),
    [
        ({}, {"alice", "bob", "x"}),  # no condition: every authenticated identity
        ({"methods": ["GET"]}, {"alice", "bob", "x"}),
        ({"groups": ["staff"]}, {"alice", "bob"}),
        ({"users": ["bob"]}, {"bob"}),
        ({"users": ["uid-bob"]}, set()),  # users are preferred_username, not sub
        ({"groups": ["nope"], "users": ["x"]}, {"x"}),  # any one condition admits
    ],
)
def test_conditions(rule: dict[str, Any], admitted: set[str]) -> None:
    compiled = policy(rule)
    got = {
        i.preferred_username
        for i in (ALICE, BOB, NOBODY)
        if compiled.evaluate(i, "/", "GET") is ADMIT
    }
    assert got == admitted


@pytest.mark.parametrize(
    ("entry", "email", "admitted"),
    [
        ("alice@example.com", "Alice@Example.COM", True),
        ("ALICE@EXAMPLE.COM", "alice@example.com", True),
        ("@example.com", "Alice@Example.COM", True),
        ("@EXAMPLE.com", "bob@example.com", True),
        ("@example.com", "bob@sub.example.com", False),  # the whole domain, not a suffix
        ("@example.com", "bob@example.com.evil.org", False),
        ("@example.com", '"a@example.com"@evil.org', False),  # after the last @
        ("alice@example.com", "alice@example.co", False),
        ("@example.com", "", False),
    ],
)
def test_emails_and_domains_ignore_case(entry: str, email: str, admitted: bool) -> None:
    identity = Identity(sub="s", email=email)
    assert (policy({"emails": [entry]}).evaluate(identity, "/", "GET") is ADMIT) is admitted


@pytest.mark.parametrize(
    ("claims", "alice", "bob"),
    [
        ({f"{CLAIM}.team": ["sre"]}, True, False),
        ({"attributes.team": ["web"]}, False, True),  # the same attributes, short path
        ({f"{CLAIM}.tags": ["oncall"]}, True, False),  # a list: any item
        ({f"{CLAIM}.tags": ["7"]}, True, False),  # scalars compare as text
        ({f"{CLAIM}.tags": ["true"]}, True, False),  # booleans as YAML spells them
        ({f"{CLAIM}.nested.level": ["3"]}, True, False),
        ({f"{CLAIM}.nested": ["3"]}, False, False),  # a mapping never matches
        ({f"{CLAIM}.missing.deeper": ["x"]}, False, False),
        ({"groups": ["staff"]}, True, True),
        ({"email": ["bob@other.org"]}, False, True),
        ({f"{CLAIM}.team": ["sre"], "sub": ["uid-bob"]}, True, True),  # any one claim
    ],
)
def test_claims(claims: dict[str, list[str]], alice: bool, bob: bool) -> None:
    compiled = policy({"claims": claims})
    assert (compiled.evaluate(ALICE, "/", "GET") is ADMIT) is alice
    assert (compiled.evaluate(BOB, "/", "GET") is ADMIT) is bob


def test_claims_follow_the_applications_attributes_claim() -> None:
    compiled = policy({"claims": {"custom.attrs.team": ["sre"]}}, attributes_claim="custom.attrs")
    assert compiled.evaluate(ALICE, "/", "GET") is ADMIT
    assert compiled.evaluate(BOB, "/", "GET") == 0


def test_paths_are_judged_by_the_caller_after_normalisation() -> None:
    app = make_app(access=[{"paths": ["^/admin/"], "groups": ["admins"]}, {}])
    for path in ("/public/../admin/x", "//admin/x", "/admin/./x", "/%61dmin/x", "/admin;p=1/x"):
        refused = decide(Facts(request=_req(path), app=app, session=BOB))
        assert isinstance(refused, Refused), path
        assert refused.rule == 0
        assert isinstance(decide(Facts(request=_req(path), app=app, session=ALICE)), Allow)
    # No safe normal form: no rule can be known to match, so it is refused.
    refused = decide(Facts(request=_req("/%2e%2e/admin/x"), app=app, session=ALICE))
    assert isinstance(refused, Refused) and refused.rule == NO_RULE


def test_methods_are_judged_upper_case() -> None:
    app = make_app(access=[{"methods": ["POST"], "groups": ["admins"]}, {}])
    for method in ("POST", "post", "Post"):
        assert isinstance(
            decide(Facts(request=_req("/", method=method), app=app, session=BOB)), Refused
        )
    assert isinstance(decide(Facts(request=_req("/", method="GET"), app=app, session=BOB)), Allow)


# --- where the rules sit in the decision (SPEC §4) -----------------------------------


def _req(path: str = "/", *, method: str = "GET", **headers: str) -> AuthRequest:
    return AuthRequest(
        has_http=True,
        method=method,
        host="app.example.com",
        path=path,
        scheme="https",
        headers={"accept": "text/html", **headers},
        request_id="rid-1",
    )


ADMIN_ONLY = make_app(
    skip_path_regex=["^/public/"],
    access=[{"paths": ["^/admin/"], "groups": ["admins"]}, {}],
    receive={"basic": {"enabled": True}, "create_session": True},
)


def test_refusal_is_a_403_page_without_identity_and_keeps_the_session() -> None:
    refused = decide(Facts(request=_req("/admin/"), app=ADMIN_ONLY, session=BOB))
    assert isinstance(refused, Refused)
    deny = refused.deny
    assert (deny.status, deny.reason, deny.method) == (403, "forbidden", "session")
    headers = dict(deny.headers)
    assert headers["cache-control"] == "no-store"
    assert headers["content-type"].startswith("text/html")
    assert "set-cookie" not in headers  # the session is kept
    assert not any(k.lower().startswith("x-authentik") for k, _ in deny.headers)
    assert "Access denied" in deny.body


def test_refusal_is_json_when_the_client_accepts_it() -> None:
    request = _req("/admin/", accept="application/json")
    refused = decide(Facts(request=request, app=ADMIN_ONLY, session=BOB))
    assert isinstance(refused, Refused)
    assert json.loads(refused.deny.body) == {"error": "forbidden", "detail": "access denied"}
    assert dict(refused.deny.headers)["cache-control"] == "no-store"


def test_header_auth_obeys_the_rules_and_gets_no_session_when_refused() -> None:
    request = _req("/admin/", authorization="Basic Ym9iOnB3")
    facts = {"request": request, "app": ADMIN_ONLY, "credential": BasicCredential("bob", "pw")}
    refused = decide(Facts(**facts, verdict=Verified(BOB)))  # type: ignore[arg-type]
    assert isinstance(refused, Refused) and refused.deny.method == "basic"
    allowed = decide(Facts(**facts, verdict=Verified(ALICE)))  # type: ignore[arg-type]
    assert isinstance(allowed, Allow) and allowed.create_session


def test_skip_paths_stay_open_with_rules_present() -> None:
    app = make_app(skip_path_regex=["^/public/"], access=[{"groups": ["nobody-has-it"]}])
    allowed = decide(Facts(request=_req("/public/x"), app=app))
    assert isinstance(allowed, Allow) and allowed.method == "skip"
    # Signed in and refused, a skip path still passes, as it would without the cookie,
    # but without the identity's headers.
    passed = decide(Facts(request=_req("/public/x"), app=app, session=BOB))
    assert isinstance(passed, Allow) and passed.method == "skip" and passed.identity is None
    assert not any(k.startswith("x-authentik") for k, _ in passed.set_headers)
    assert isinstance(decide(Facts(request=_req("/private"), app=app, session=BOB)), Refused)


def test_the_service_logs_the_rule_and_counts_forbidden(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    svc, _ = service(
        basic=CountingVerifier(Verified(BOB)), app=ADMIN_ONLY, registry=registry, local_ttl=60
    )
    header_value = basic_header("bob", "pw")
    with caplog.at_level(logging.INFO, logger="ext_authz"):
        refused = run(svc.check(_req("/admin/", authorization=header_value)))
        again = svc.check_now(_req("/admin/", authorization=header_value))  # from memory
        allowed = run(svc.check(_req("/elsewhere", authorization=header_value)))
    assert isinstance(refused, Deny) and refused.status == 403
    assert isinstance(again, Deny) and again.reason == "forbidden"
    assert isinstance(allowed, Allow)
    lines = [r for r in caplog.records if r.getMessage() == "access refused"]
    assert len(lines) == 2
    for line in lines:
        assert (line.app, line.sub, line.rule) == (ADMIN_ONLY.name, "uid-bob", 0)  # type: ignore[attr-defined]
    assert "web" not in caplog.text  # claim values are never logged
    forbidden = registry.get_sample_value(
        "ext_authz_checks_total",
        {"app": ADMIN_ONLY.name, "result": "forbidden", "method": "basic", "transport": "grpc"},
    )
    assert forbidden == 2


def test_a_cached_session_is_judged_on_every_request() -> None:
    svc, _ = service(basic=CountingVerifier(Verified(BOB)), app=ADMIN_ONLY, local_ttl=60)
    first = run(svc.check(_req("/", authorization=basic_header("bob", "pw"))))
    assert isinstance(first, Allow)
    cookie = next(v for k, v in first.response_headers if k == "set-cookie").split(";", 1)[0]
    assert isinstance(run(svc.check(_req("/", cookie=cookie))), Allow)
    assert isinstance(svc.check_now(_req("/", cookie=cookie)), Allow)  # memoised allow...
    refused = svc.check_now(_req("/admin/", cookie=cookie))  # ...does not stand for /admin/
    assert isinstance(refused, Deny) and refused.reason == "forbidden"
    assert not any(k == "set-cookie" for k, _ in refused.headers)
    assert isinstance(svc.check_now(_req("/", cookie=cookie)), Allow)  # still signed in


# --- config errors name their key paths ---------------------------------------------


def _errors(access: Any, **settings: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        make_app(access=access, **settings)
    return caught.value.errors


@pytest.mark.parametrize(
    ("access", "error"),
    [
        ([{}, {"paths": ["^/ok", "("]}], "applications[0].access[1].paths[1]: invalid regular"),
        ([{"groups": ["a", ""]}], "applications[0].access[0].groups[1]: empty item"),
        ([{"users": [" "]}], "applications[0].access[0].users[0]: empty item"),
        ([{"groups": []}], "applications[0].access[0].groups: empty"),
        ([{"paths": []}], "applications[0].access[0].paths: empty"),
        ([{"emails": ["@"]}], "applications[0].access[0].emails[0]: '@' is not a domain"),
        ([{"emails": ["bob"]}], "applications[0].access[0].emails[0]: 'bob' is neither"),
        ([{"methods": ["GET /"]}], "applications[0].access[0].methods[0]: 'GET /' is not"),
        ([{"claims": {"department": ["x"]}}], "applications[0].access[0].claims.department:"),
        ([{"claims": {"attributes.team": []}}], "applications[0].access[0].claims.attributes"),
        ([{"claims": {}}], "applications[0].access[0].claims: empty"),
        ([{"gropus": ["a"]}], "applications[0].access[0].gropus: unknown key"),
    ],
)
def test_config_errors_name_the_key_path(access: Any, error: str) -> None:
    errors = _errors(access)
    assert any(e.startswith(error) for e in errors), errors


def test_compile_reports_every_problem_at_once() -> None:
    with pytest.raises(AccessRuleError) as caught:
        compile_policy([{"paths": ["("]}, {"groups": [""]}], attributes_claim=CLAIM)
    assert [loc for loc, _ in caught.value.problems] == [(0, "paths", 0), (1, "groups", 0)]


def test_the_application_compiles_its_rules_once() -> None:
    app: Application = make_app(access=[{"paths": ["^/a"], "methods": ["get"]}])
    assert app.access_policy is app.access_policy
    (rule,) = app.access_policy.rules
    assert rule.methods == frozenset({"GET"})
    assert make_app().access_policy.rules == ()
    assert make_app(access=None).access_policy.rules == ()  # `access:` all commented out


# --- the shortcut over the leading rules changes no verdict ---------------------------

SHORTCUT_RULES = [
    {"paths": ["^/a/", "x$"], "groups": ["admins"]},
    {"paths": ["^/b"], "methods": ["POST"], "users": ["bob"]},
    {"paths": ["(?i)^/C/"], "users": ["alice"]},  # inline flags: no joined regex
    {"methods": ["DELETE"], "groups": ["admins"]},
    {"paths": ["^/d/"]},
]


@pytest.mark.parametrize("rules", [SHORTCUT_RULES, SHORTCUT_RULES[:2] + SHORTCUT_RULES[3:]])
@given(
    path=st.sampled_from(["/a/", "/ax", "/b", "/c/", "/C/", "/d/", "/e"])
    | st.text(alphabet="/abcdxC", max_size=8).map(lambda p: "/" + p),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    who=st.sampled_from([ALICE, BOB, NOBODY]),
)
def test_the_leading_shortcut_agrees_with_trying_every_rule(
    rules: list[dict[str, Any]], path: str, method: str, who: Identity
) -> None:
    compiled = policy(*rules)
    plain = AccessPolicy(compiled.rules)  # no shortcut: every rule tried in turn
    assert compiled.evaluate(who, path, method) == plain.evaluate(who, path, method)


def test_the_shortcut_is_built_only_when_the_paths_join_safely() -> None:
    assert policy(*SHORTCUT_RULES[:2], SHORTCUT_RULES[3]).leading is not None
    assert policy(*SHORTCUT_RULES).leading is None  # an inline flag among the leading
    assert policy({"paths": ["^/(a)\\1"]}, {"paths": ["^/b"]}).leading is None  # a group


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(
    rules=st.lists(
        st.dictionaries(
            st.sampled_from(["paths", "methods", "groups", "users", "emails", "claims", "x"]),
            _json,
            max_size=4,
        ),
        max_size=3,
    )
    | _json
)
@example(rules=5)
@example(rules="rules")
@example(rules={"paths": ["^/"]})
def test_compiling_any_data_answers_a_policy_or_an_access_rule_error(rules: Any) -> None:
    try:
        compiled = compile_policy(rules, attributes_claim=CLAIM)
    except AccessRuleError as exc:
        assert exc.problems and all(isinstance(loc, tuple) for loc, _ in exc.problems)
    else:
        for who in (ALICE, BOB, NOBODY):
            verdict = compiled.evaluate(who, "/x", "GET")
            assert verdict is ADMIT or 0 <= verdict < len(compiled.rules) or verdict == NO_RULE
