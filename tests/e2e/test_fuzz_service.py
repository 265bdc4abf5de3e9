"""Fuzzing a running ext-authz replica with whole CheckRequests over gRPC (issue 7).

Hypothesis builds requests the way Envoy would send them (`attributes.request.http`:
host, path with query, method, header map, optional `context_extensions`) from random
and real parts: the demo applications' hosts, outpost and skip paths, random header
names and values (Unicode, control characters, values up to ~64 KiB), cookies
including the real session cookie name with random values, and Authorization values
of every shape (Basic with random bytes, Bearer with random tokens, other schemes),
mixed with a few real credentials whose validity is known by construction.

For every request: the call returns a CheckResponse (never a gRPC error, never the
servicer's catch-all "internal_error"); `status.code == 0` (allow) only for a skip
path (in the normalised path), the ping path or a credential valid for the request's
application; no header
value in the answer carries CR, LF or NUL. Afterwards the replica is still alive,
SERVING, and allows a real credential.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_authz._proto import AttributeContext, AuthorizationStub, CheckRequest, CheckResponse
from ext_authz.core.paths import normalize_path
from tests.stack.allow_all import grpc_serving
from tests.stack.demo import ALICE, BOB, BOB_STATIC_TOKEN, OIDC_CLIENT_ID, Stack
from tests.stack.extauthz import AUTHORIZATION_SERVICE
from tests.support import basic

pytestmark = pytest.mark.e2e

APPS = ("whoami", "app")
PING = "/outpost.goauthentik.io/ping"
SKIP = {"whoami": (re.compile("^/public/"),), "app": ()}
APP_COOKIE = "authentik_proxy_" + hashlib.sha256(OIDC_CLIENT_ID.encode()).hexdigest()[:8]
NASTY = "\x00\r\n\t\x7f\u0085\u2028\ufeff\u202e\U0001f600é"


# Credentials valid by construction, and the applications they open.
VALID_AUTHORIZATION: dict[str, frozenset[str]] = {
    basic(ALICE.username, ALICE.app_password): frozenset(APPS),
    basic(BOB.username, BOB.app_password): frozenset(APPS),
    f"Bearer {BOB_STATIC_TOKEN}": frozenset({"whoami"}),
    f"bearer {BOB_STATIC_TOKEN}": frozenset({"whoami"}),
    basic("goauthentik.io/token", BOB_STATIC_TOKEN): frozenset({"whoami"}),
}


# -- strategies -----------------------------------------------------------------------------

text = st.text(max_size=40) | st.text(alphabet=NASTY + "aA=;,: /%", max_size=40)
huge = st.builds(
    lambda unit, n: ((unit or "x") * n)[: 64 * 1024],
    st.text(min_size=1, max_size=6),
    st.integers(100, 64 * 1024),
)
header_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.:" + NASTY, min_size=1, max_size=20
) | st.sampled_from(
    [
        "x-authentik-username",
        "x-authentik-jwt",
        "X-Authentik-Uid",
        "accept",
        "x-requested-with",
        "x-forwarded-for",
        "x-forwarded-host",
        "content-type",
        ":path",
        ":method",
        "te",
    ]
)
header_values = text | huge | st.sampled_from(["text/html", "application/json", "XMLHttpRequest"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


random_authorization = st.one_of(
    st.builds(lambda b: "Basic " + _b64(b), st.binary(max_size=64)),
    st.builds(
        lambda u, p: basic(u, p),
        st.sampled_from(["alice", "bob", "", "goauthentik.io/token"]) | text,
        text,
    ),
    st.builds(lambda t: "Bearer " + t, text | huge),
    st.builds(
        lambda t: "Bearer " + t, st.text(alphabet="abcdefABCDEF0123456789-._~+/=", max_size=80)
    ),
    st.builds(
        lambda s, t: f"{s} {t}",
        st.sampled_from(["Basic", "Bearer", "Digest", "Negotiate", "basic", ""]) | text,
        text,
    ),
    st.builds(lambda t: "Basic " + t, text),
    text,
    huge,
)
# (value, applications it is valid for)
authorizations = (
    st.none()
    | st.sampled_from(sorted(VALID_AUTHORIZATION.items()))
    | st.tuples(random_authorization, st.just(frozenset()))
)

HOST_CHOICES = [
    "whoami.localhost", "app.localhost", "WHOAMI.LOCALHOST", "App.Localhost", "ctx.localhost",
    "whoami.localhost.evil.com", "evil.com", "localhost", "127.0.0.1", "[::1]:80", "",
    " whoami.localhost ", "whoami.localhost:", "whoami.localhost:abc", "app.localhost:99999",
]  # fmt: skip
PATH_CHOICES = [
    "/", "/public/", "/public/x", "/public", "/publicity", "//public/", "/%70ublic/x",
    "/public/../secret", "/public/%2e%2e/x", "/public/..;/x", "/public/..%2fx",
    "/secret/../public/x", "/x/public/", PING, PING + "/", "/outpost.goauthentik.io/start",
    "/outpost.goauthentik.io/start?rd=https://evil.com", "/outpost.goauthentik.io/callback",
    "/outpost.goauthentik.io/callback?code=x&state=y", "/outpost.goauthentik.io/sign_out",
    "/outpost.goauthentik.io/", "/x?X-authentik-auth-callback=true&code=1&state=2",
    "/x?X-authentik-logout=true", "/public/?X-authentik-logout=true", "?", "*", "",
]  # fmt: skip


@st.composite
def check_requests(draw: st.DrawFn, port: int, session: tuple[str, str]) -> dict[str, Any]:
    """A CheckRequest's parts plus what the oracle needs (`auth_ok`, `cookie_ok`)."""
    # Mostly the real applications' hosts, so most requests reach the decision steps.
    real = [
        f"whoami.localhost:{port}",
        f"app.localhost:{port}",
        "whoami.localhost",
        "APP.localhost",
    ]
    host = draw(
        st.sampled_from(real) | st.sampled_from(real) | st.sampled_from(HOST_CHOICES) | text
    )
    path = draw(st.sampled_from(PATH_CHOICES) | st.builds(lambda p: "/" + p, text) | text)
    if draw(st.booleans()):
        path += "?" + draw(text)
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "OPTIONS", "DELETE", ""]) | text)
    headers: dict[str, str] = {
        k.lower(): v
        for k, v in draw(st.dictionaries(header_names, header_values, max_size=6)).items()
        if k.lower() not in ("authorization", "cookie", "host", ":authority", "x-request-id")
    }
    authorization = draw(authorizations)
    auth_ok: frozenset[str] = frozenset()
    if authorization is not None:
        headers["authorization"], auth_ok = authorization
    # Cookies: random ones, our cookie names with random values, and the real session.
    session_name, session_value = session
    parts = draw(
        st.lists(
            st.builds(
                lambda n, v: f"{n}={v}",
                st.sampled_from([session_name, APP_COOKIE, "a", ""]) | text,
                text | huge,
            ),
            max_size=3,
        )
    )
    cookie_ok: frozenset[str] = frozenset()
    if draw(st.booleans()):
        # The real session, anywhere among them: valid even next to a same-named forgery
        # (a browser may send two cookies of one name; the service may try each).
        parts.insert(draw(st.integers(0, len(parts))), f"{session_name}={session_value}")
        cookie_ok = frozenset({"whoami"})
    if parts:
        headers["cookie"] = draw(st.sampled_from(["; ", ";", ",", " "])).join(parts)
    context = draw(
        st.none()
        | st.none()
        | st.sampled_from(["whoami", "app", "nope", ""]).map(lambda a: {"ext_authz_app": a})
        | st.dictionaries(text, text, max_size=2)
    )
    return {
        "host": host,
        "path": path,
        "method": method,
        "headers": headers,
        "context": context or {},
        "auth_ok": auth_ok,
        "cookie_ok": cookie_ok,
    }


# -- the oracle ---------------------------------------------------------------------------------


def applications_for(host: str, context: dict[str, str]) -> set[str]:
    """The application(s) the request may be for (SPEC §4 step 2)."""
    named = context.get("ext_authz_app")
    if named:
        return {named} & set(APPS)
    name = host.strip().lower().partition(":")[0]
    return {app for app in APPS if name == f"{app}.localhost"}


def may_allow(case: dict[str, Any]) -> bool:
    path = case["path"].partition("?")[0] or "/"
    if path.rstrip("/") == PING:
        return True
    # Skip paths are judged on the normalised path (SPEC §4 step 6): `//public/` is a
    # skip path, `/public/../secret` is not, and a path with no safe normal form never is.
    normal = normalize_path(path)
    for app in applications_for(case["host"], case["context"]):
        if normal is not None and any(p.search(normal) for p in SKIP[app]):
            return True
        if app in case["auth_ok"] or app in case["cookie_ok"]:
            return True
    return False


def build(case: dict[str, Any], n: int) -> CheckRequest:
    request = CheckRequest()
    http = request.attributes.request.http
    http.CopyFrom(
        AttributeContext.HttpRequest(
            host=case["host"], path=case["path"], method=case["method"], protocol="HTTP/1.1"
        )
    )
    for key, value in case["headers"].items():
        http.headers[key] = value
    http.headers["x-request-id"] = f"fuzz-{n}"
    for key, value in case["context"].items():
        request.attributes.context_extensions[key] = value
    return request


def bad_header_values(response: CheckResponse, case: dict[str, Any]) -> list[str]:
    """Answer headers with CR, LF or NUL that the request did not carry itself (Envoy never
    sends those; what the service echoes back from such input is not its invention)."""
    given = "".join(
        [case["host"], case["path"], case["method"]]
        + [k + v for k, v in case["headers"].items()]
        + [k + v for k, v in case["context"].items()]
    )
    forbidden = [c for c in "\r\n\x00" if c not in given]
    options = [
        *response.ok_response.headers,
        *response.ok_response.response_headers_to_add,
        *response.denied_response.headers,
    ]
    return [
        o.header.key
        for o in options
        if any(c in o.header.value or c in o.header.key for c in forbidden)
    ]


def describe(case: dict[str, Any]) -> dict[str, Any]:
    """The case for a failure message, long values shortened."""

    def short(v: Any) -> Any:
        return v if not isinstance(v, str) or len(v) < 120 else f"{v[:60]!r}...({len(v)} chars)"

    return {
        k: ({hk: short(hv) for hk, hv in v.items()} if isinstance(v, dict) else short(v))
        for k, v in case.items()
    }


# -- the test -------------------------------------------------------------------------------------


def test_random_check_requests(make_stack: Any) -> None:
    stack: Stack = make_stack(fresh=True)  # one replica, memory store, both applications
    replica = stack.replicas[0]
    signed_in = stack.get(
        "whoami", "/", headers={"Authorization": basic(BOB.username, BOB.app_password)}
    )
    assert signed_in.status_code == 200
    session = next(
        (
            line.split(";", 1)[0].split("=", 1)
            for line in signed_in.headers.get_list("set-cookie")
            if line.startswith("authentik_proxy_")
        ),
        None,
    )
    assert session is not None, "whoami set no session cookie"
    session_pair = (session[0], session[1])
    counter = [0]
    allowed = [0]
    seen: Counter[str] = Counter()  # what the examples covered, printed at the end

    with grpc.insecure_channel(
        replica.grpc_address, options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
    ) as channel:
        stub = AuthorizationStub(channel)

        @settings(
            max_examples=300,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(check_requests(stack.port, session_pair))
        def one(case: dict[str, Any]) -> None:
            counter[0] += 1
            apps = applications_for(case["host"], case["context"])
            seen[f"application: {'/'.join(sorted(apps)) or 'none'}"] += 1
            longest = max([len(v) for v in case["headers"].values()] + [len(case["path"])])
            seen[f"longest value: {'>=16KiB' if longest >= 16384 else '<16KiB'}"] += 1
            seen[f"authorization valid for: {'/'.join(sorted(case['auth_ok'])) or 'none'}"] += 1
            try:
                response = stub.Check(build(case, counter[0]), timeout=30.0)
            except grpc.RpcError as exc:
                pytest.fail(f"gRPC error {exc.code()} for {describe(case)}")  # type: ignore[attr-defined]
            assert response.status.message != "internal_error", (
                f"the check crashed (see the replica log, request id fuzz-{counter[0]}): "
                f"{describe(case)}"
            )
            seen[
                f"answer: grpc {response.status.code} http {response.denied_response.status.code}"
            ] += 1
            if response.status.code == 0:
                allowed[0] += 1
                assert may_allow(case), f"WRONGFUL ALLOW: {describe(case)}"
            bad = bad_header_values(response, case)
            assert not bad, (bad, describe(case))

        one()

        # Still up, still serving, still deciding correctly.
        assert replica.alive()
        assert grpc_serving(replica.grpc_address, AUTHORIZATION_SERVICE)
        good = {
            "host": f"whoami.localhost:{stack.port}",
            "path": "/after-fuzz",
            "method": "GET",
            "headers": {"authorization": basic(ALICE.username, ALICE.app_password)},
            "context": {},
        }
        assert stub.Check(build(good, 0), timeout=30.0).status.code == 0
        bad = {**good, "headers": {"authorization": basic(ALICE.username, "wrong")}}
        assert stub.Check(build(bad, 0), timeout=30.0).status.code != 0
    crashed = [r for r in replica.log_records() if r.get("msg") == "check failed"]
    assert not crashed, crashed[:3]
    print(f"\nfuzz: {counter[0]} CheckRequests, {allowed[0]} allowed")
    for key, n in sorted(seen.items()):
        print(f"  {key}: {n}")
