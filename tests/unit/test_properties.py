"""Property tests on the core's parsers and its one promise: no credential, no Allow."""

from __future__ import annotations

import base64
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_authz.core.cookies import parse_cookies, strip_cookies
from ext_authz.core.credentials import (
    BasicCredential,
    BearerCredential,
    MalformedCredential,
    parse_authorization,
)
from ext_authz.core.decision import Allow
from ext_authz.core.model import AuthRequest, Identity, Rejected, Unavailable
from ext_authz.core.paths import normalize_path
from ext_authz.core.steps import Facts, credential_for, decide
from ext_authz.core.upstream import additional_header_problem, identity_headers, upstream_basic
from tests.unit.conftest import make_app

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point hypothesis offers, plus a text drawn mostly from the awkward ones:
# controls, DEL, lone surrogates (a JSON "\ud800" escape decodes to one), non-ASCII.
AWKWARD = st.text(
    st.one_of(
        st.characters(categories=["Cc", "Cs", "Zl", "Zp"]),
        st.sampled_from(["a", "é", "Ω", "\x7f", ":", " "]),
    ),
    max_size=30,
)
ANY_TEXT = st.one_of(st.text(st.characters(codec=None, categories=None), max_size=200), AWKWARD)
HEADERISH = st.text(
    st.sampled_from(list("Basic Bearer=,;:/+_-.~ \t\r\n\x00\"'\\aZ09é")), max_size=60
)
HUGE = st.builds(
    lambda c, n: c * n,
    st.sampled_from(["a", "=", ",", " ", "\x00", "é"]),
    st.integers(16 * 1024 - 2, 70_000),
)


@FAST
@given(st.one_of(ANY_TEXT, HEADERISH, HUGE, st.none()))
def test_parse_authorization_never_raises(value: str | None) -> None:
    result = parse_authorization(value)
    assert result is None or isinstance(
        result, BasicCredential | BearerCredential | MalformedCredential
    )


@FAST
@given(st.binary(max_size=80))
def test_parse_authorization_on_any_decoded_basic_bytes(raw: bytes) -> None:
    result = parse_authorization("Basic " + base64.b64encode(raw).decode())
    assert isinstance(result, BasicCredential | MalformedCredential)
    if isinstance(result, BasicCredential):
        assert f"{result.username}:{result.password}".encode() == raw


@FAST
@given(st.one_of(ANY_TEXT, HEADERISH, HUGE, st.none()))
def test_parse_cookies_never_raises(value: str | None) -> None:
    pairs = parse_cookies(value)
    assert all(name and "=" not in name for name, _ in pairs)
    assert all(";" not in v and "," not in v for _, v in pairs)
    strip_cookies(value, {"authentik_proxy_0123abcd"})


OURS = frozenset({"authentik_proxy_0123abcd", "authentik_proxy_0123abcd_login", "s"})
COOKIE_PIECES = st.lists(
    st.one_of(
        st.sampled_from(sorted(OURS)).map(lambda n: n + "="),
        st.sampled_from([";", ",", "; ", " ", "\t", "=", '"', "a=1", 'b="2"', "c=3,4", "flag"]),
        st.text(max_size=4),
    ),
    max_size=12,
).map("".join)
SPLIT = re.compile(r"[;,]")


def _named(piece: str) -> bool:
    name, eq, _ = piece.strip(" \t").partition("=")
    return bool(eq) and name in OURS


def _is_subsequence(small: str, big: str) -> bool:
    rest = iter(big)
    return all(char in rest for char in small)


@FAST
@given(st.one_of(COOKIE_PIECES, ANY_TEXT))
def test_strip_cookies_removes_only_our_pairs(header: str) -> None:
    """The output is the input with only our cookies' pieces (and one separator each,
    with the whitespace around it) taken out; nothing is ever added or changed."""
    stripped = strip_cookies(header, OURS)
    pieces = SPLIT.split(header)
    if not any(_named(p) for p in pieces):
        assert stripped is header  # untouched
        return
    kept = [p.strip(" \t") for p in pieces if not _named(p)]
    if stripped is None:
        assert not any(kept)  # at most empty pieces were left
        return
    assert _is_subsequence(stripped, header)
    assert [p.strip(" \t") for p in SPLIT.split(stripped)] == kept
    assert parse_cookies(stripped) == [(n, v) for n, v in parse_cookies(header) if n not in OURS]
    assert strip_cookies(stripped, OURS) is stripped


# --- decide: no verified credential and no session means no Allow ------------------------------

APPS = [
    make_app("redirect-app", skip_path_regex=["^/public/"]),
    make_app(
        "quiet-app",
        intercept_header_auth=False,
        unauthenticated="auto",
        skip_path_regex=["^/public/"],
    ),
    make_app("deny-app", oidc=False, unauthenticated="deny"),
    make_app("off-app", receive={"basic": {"enabled": False}, "bearer": {"enabled": False}}),
]

HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            "authorization",
            "cookie",
            "accept",
            "x-requested-with",
            "x-authentik-username",
            "x_authentik_uid",
            "host",
            ":path",
        ]
    ),
    st.text(min_size=1, max_size=20).map(str.lower),
)
HEADER_VALUES = st.one_of(
    ANY_TEXT,
    st.sampled_from(
        [
            "Basic YWxpY2U6cHc=",
            "Bearer eyJ.a.b",
            "Bearer",
            "Basic !!",
            "text/html",
            "authentik_proxy_abc=1",
            "Basic Z29hdXRoZW50aWsuaW8vdG9rZW46dA==",
        ]
    ),
)
PATHS = st.one_of(
    st.sampled_from(["/", "/page", "/publicx", "/x/public/", "/outpost.goauthentik.io/ping"]),
    # Paths that look as if they were under the skip path /public/ but are not.
    st.sampled_from(["/public/../", "/public/%2e%2e/", "/public/..;/", "/public/..%2f"]).flatmap(
        lambda prefix: st.text(max_size=10).map(lambda rest: prefix + rest)
    ),
    st.text(max_size=40).map(lambda s: "/" + s),
).filter(lambda p: not (normalize_path(p) or "").startswith("/public/"))


@FAST
@given(
    app_index=st.integers(0, len(APPS) - 1),
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", ""]),
    path=PATHS,
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=8),
    verdict=st.one_of(
        st.none(),
        st.builds(Rejected, st.text(max_size=10)),
        st.builds(Unavailable, st.text(max_size=10)),
    ),
    stale_cookie=st.booleans(),
    store_down=st.booleans(),
)
def test_decide_never_allows_without_session_or_verified_credential(
    app_index: int,
    method: str,
    path: str,
    headers: dict[str, str],
    verdict: Rejected | Unavailable | None,
    stale_cookie: bool,
    store_down: bool,
) -> None:
    application = APPS[app_index]
    normal = normalize_path(path)
    assert normal is None or not any(p.search(normal) for p in application.skip_paths)
    request = AuthRequest(
        has_http=True,
        method=method,
        host="app.example.com",
        path=path,
        scheme="https",
        headers=headers,
    )
    facts = Facts(
        request=request,
        app=application,
        credential=credential_for(request, application),
        verdict=verdict,
        stale_cookie=stale_cookie,
        store_down=store_down,
    )
    assert not isinstance(decide(facts), Allow)


@FAST
@given(
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=8),
    credential=st.builds(
        MalformedCredential, st.sampled_from(["basic", "bearer", "other"]), st.text(max_size=10)
    ),
)
def test_decide_never_allows_a_malformed_credential(
    headers: dict[str, str], credential: MalformedCredential
) -> None:
    application = APPS[0]
    request = AuthRequest(
        has_http=True,
        method="GET",
        host="app.example.com",
        path="/x",
        scheme="https",
        headers=headers,
    )
    assert not isinstance(
        decide(Facts(request=request, app=application, credential=credential)), Allow
    )


# --- what goes upstream ----------------------------------------------------------------------

STRINGS = st.one_of(st.text(max_size=30), AWKWARD)
ATTRIBUTE_VALUES: st.SearchStrategy[Any] = st.one_of(
    STRINGS,
    st.integers(),
    st.none(),
    st.booleans(),
    st.lists(STRINGS, max_size=3),
    st.dictionaries(STRINGS, STRINGS, max_size=3),
)
IDENTITIES = st.builds(
    Identity,
    sub=STRINGS,
    preferred_username=STRINGS,
    email=STRINGS,
    name=STRINGS,
    groups=st.lists(STRINGS, max_size=4).map(tuple),
    entitlements=st.lists(STRINGS, max_size=4).map(tuple),
    attributes=st.dictionaries(
        st.sampled_from(["u", "p", "additionalHeaders", "other"]), ATTRIBUTE_VALUES, max_size=4
    ),
    token=STRINGS,
)
UNSAFE = re.compile(r"[\r\n\x00]")


@FAST
@given(IDENTITIES, STRINGS, STRINGS)
def test_identity_headers_never_carry_cr_lf_nul(
    who: Identity, app_name: str, provider: str
) -> None:
    built = identity_headers(who, app_name=app_name, provider=provider)
    for name, value in built.headers:
        assert UNSAFE.search(value) is None
        assert UNSAFE.search(name) is None
        value.encode("utf-8")  # every value has a UTF-8 form for the wire


HEADER_NAMES_IN_ATTRIBUTES = st.one_of(
    st.sampled_from(
        ["X-Team", "x-team", "X_Team", "X-Floor", "x_authentik_username", "X-authentik-uid",
         "Authorization", "cookie", "bad name", "x-level"]
    ),
    st.text(max_size=12),
)  # fmt: skip
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@FAST
@given(
    st.dictionaries(HEADER_NAMES_IN_ATTRIBUTES, STRINGS, max_size=6),
    st.sets(st.sampled_from(["x-team", "x-floor", "x-level"])),
)
def test_additional_headers_set_only_declared_names(
    extra: dict[str, str], declared: set[str]
) -> None:
    who = Identity(sub="u", attributes={"additionalHeaders": extra})
    built = identity_headers(who, app_name="a", provider="p", declared=declared)
    ours = {n.lower() for n, _ in identity_headers(Identity(sub="u"), app_name="a", provider="p")
            .headers}  # fmt: skip
    extra_sent = [name for name, _ in built.headers if name.lower() not in ours]
    assert all(name.lower() in declared for name in extra_sent)
    assert all("_" not in name for name, _ in built.headers)
    # Every header name of the attributes is sent, dropped as unsafe, reported as
    # undeclared, or a second spelling of a sent one; never two of these.
    tokens = [name for name in extra if TOKEN.fullmatch(name)]
    assert sorted(built.undeclared) == sorted(n for n in tokens if n.lower() not in declared)
    for name in tokens:
        fates = (name in extra_sent) + (name in built.dropped) + (name in built.undeclared)
        assert fates <= 1


@FAST
@given(st.one_of(HEADER_NAMES_IN_ATTRIBUTES, ANY_TEXT))
def test_a_declarable_header_name_is_a_plain_token(name: str) -> None:
    if additional_header_problem(name) is None:
        assert TOKEN.fullmatch(name) and "_" not in name
        assert not name.lower().startswith(("x-authentik-", "x-envoy-"))
        assert name.lower() not in {"authorization", "cookie", "host", "connection"}


BASIC_VALUE = re.compile(r"^Basic [A-Za-z0-9+/]*=*$")


@FAST
@given(
    IDENTITIES,
    st.sampled_from(["", "u", "p", "missing"]),
    st.sampled_from(["", "u", "p", "missing"]),
)
def test_upstream_basic_is_always_well_formed(
    who: Identity, username_attribute: str, password_attribute: str
) -> None:
    value = upstream_basic(
        who, username_attribute=username_attribute, password_attribute=password_attribute
    )
    assert BASIC_VALUE.fullmatch(value)
