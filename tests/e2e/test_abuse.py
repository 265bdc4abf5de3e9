"""Abuse resistance through the real parts (issue 11, findings 2, 3 and 12; SPEC §5
"Cost and abuse", §6 "Start", §9).

- Guessing limits (finding 2): wrong passwords from one client address, through
  Envoy, to two replicas that share one redis-server. Past `receive.throttle.failures`
  the answer is 429 with Retry-After and no verifier is asked: neither the IdP's token
  endpoint (`app`, authentik app passwords) nor the directory's hashing (`whoami`).
  The count lives in the store, so the replicas share it. A credential verified and
  cached before the flood still passes during it, even from the guessing address:
  nobody can lock a user out.
- Login states (finding 3): past `LOGIN_STATES_PER_FAILURE x failures` new sign-ins in
  the window a client gets the 429 page instead of another login state in the store.
- The operations port (finding 12), on the real process: a request line over 64 KiB
  is a 400 and one log line, and `/readyz` says which component is down, nothing more.

The client address is the one Envoy reports as the request's source (its downstream
address, `use_remote_address: true`): the guessing client connects from 127.0.0.1 and
the other client from 127.0.0.2, both loopback. The "client throttled" log line shows
which address ext-authz saw.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ext_authz.throttle import LOGIN_STATES_PER_FAILURE
from tests.e2e.signin import HTML, authorize_params
from tests.stack.demo import ALICE, BOB, Stack
from tests.stack.extauthz import ExtAuthz
from tests.stack.redis import RedisServer
from tests.support import basic, client_from, echoed, scrape, total

pytestmark = pytest.mark.e2e

FAILURES = 5  # receive.throttle.failures of both applications here
WINDOW = 60  # receive.throttle.window (the default, 1m): Retry-After is at most this
GUESSES = 12  # distinct wrong passwords, one after the other
GUESSER = "127.0.0.1"
OTHER = "127.0.0.2"
JSON = {"Accept": "application/json"}

_THROTTLE: dict[str, Any] = {"receive": {"throttle": {"failures": FAILURES}}}
THROTTLED: dict[str, Any] = {"applications": {"app": _THROTTLE, "whoami": _THROTTLE}}


@pytest.fixture
def shared(make_stack: Any) -> Stack:
    """Two replicas sharing the session's redis-server (a key prefix of their own),
    the IdP, and the small limit; fresh, so every count starts at zero."""
    stack: Stack = make_stack(replicas=2, store="redis", config_overrides=THROTTLED, fresh=True)
    return stack


# -- what the replicas say about themselves -----------------------------------------------


def summed(stack: Stack, name: str, **labels: str) -> float:
    """A metric summed over the stack's replicas (each has its own operations port)."""
    return sum(total(scrape(str(r.http_url)), name, **labels) for r in stack.replicas)


def records_since(replica: ExtAuthz, offset: int) -> list[dict[str, Any]]:
    """The replica's JSON log records after its first `offset` records."""
    return replica.log_records()[offset:]


def log_offsets(stack: Stack) -> list[int]:
    return [len(r.log_records()) for r in stack.replicas]


def new_records(stack: Stack, offsets: list[int], msg: str) -> list[list[dict[str, Any]]]:
    """Per replica, its records with message `msg` logged since `offsets`."""
    return [
        [r for r in records_since(replica, offset) if r.get("msg") == msg]
        for replica, offset in zip(stack.replicas, offsets, strict=True)
    ]


def checks_resent(stack: Stack) -> int:
    """Checks Envoy sent twice (a retry): each may be counted twice by the replicas."""
    stats = stack.envoy.stats(r"^cluster\.ext_authz\.upstream_rq_retry$")
    return stats.get("cluster.ext_authz.upstream_rq_retry", 0)


def verifier_calls(stack: Stack, app: str) -> dict[str, float]:
    """How often a verifier was asked, seen from both ends.

    - `misses`: credential-cache misses over the replicas; a miss is what sends a
      credential to its verifier (a throttled one is answered before the cache miss
      is counted), and on `whoami` each is exactly one argon2id run (the user's one
      app-password hash) in the hash pool.
    - `idp_token`: the IdP's own count of authentik app-password requests
      (client_credentials grants at its token endpoint), for `app`; `token_metric`:
      the replicas' count of their token requests (`ext_authz_idp_requests_total`).
    """
    misses = summed(stack, "ext_authz_cache_requests_total", cache="credential", result="miss")
    calls = {"misses": misses}
    if app == "app":
        assert stack.idp is not None
        calls["idp_token"] = stack.idp.stats().get("token:client_credentials", 0)
        calls["token_metric"] = summed(stack, "ext_authz_idp_requests_total", endpoint="token")
    return calls


def cpu_seconds(stack: Stack) -> float:
    """User + system CPU time of the replicas so far, from /proc (printed, not asserted:
    argon2id runs show up in it, a 429 hardly does)."""
    ticks = 0
    for replica in stack.replicas:
        with open(f"/proc/{replica.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def retry_after(response: httpx.Response) -> int:
    value = response.headers.get("retry-after", "")
    assert value.isdigit() and 1 <= int(value) <= WINDOW, (response.status_code, value)
    return int(value)


# -- finding 2: guessing limits ---------------------------------------------------------------


@pytest.mark.parametrize("app", ["app", "whoami"])
def test_guesses_past_the_limit_get_429_and_reach_no_verifier(shared: Stack, app: str) -> None:
    """`app`: Basic checked as authentik app passwords at the IdP's token endpoint;
    `whoami`: Basic checked against the directory's argon2id hashes."""
    stack = shared
    good = basic(ALICE.username, ALICE.app_password)
    with client_from(GUESSER) as guesser, client_from(OTHER) as other:

        def ask(client: httpx.Client, authorization: str, path: str) -> httpx.Response:
            client.cookies.clear()  # no session cookie: the credential is what is judged
            return client.get(
                stack.url(app, path), headers={**JSON, "Authorization": authorization}
            )

        # Alice signs in before the flood, from the guesser's own address (a NAT both
        # share: the hardest case). Her credential is now verified and cached.
        assert echoed(ask(guesser, good, "/before"))["x-authentik-username"] == [ALICE.username]
        offsets = log_offsets(stack)
        before = verifier_calls(stack, app)
        cpu_before = cpu_seconds(stack)
        checks_before = [
            total(scrape(str(r.http_url)), "ext_authz_checks_total", app=app)
            for r in stack.replicas
        ]

        answers: list[httpx.Response] = []
        during: list[httpx.Response] = []
        for n in range(GUESSES):
            wrong = basic(ALICE.username, f"guess-{n}-{secrets.token_hex(4)}")
            answers.append(ask(guesser, wrong, f"/guess/{n}"))
            if n >= FAILURES:  # the guesser is throttled: Alice's cached credential passes
                during.append(ask(guesser, good, f"/during/{n}"))
        after = verifier_calls(stack, app)
        cpu = cpu_seconds(stack) - cpu_before
        # A valid credential nobody verified yet is unverified like a guess: 429 from
        # the throttled address, and no verifier is asked...
        unverified = ask(guesser, basic(BOB.username, BOB.app_password), "/bob")
        unverified_calls = verifier_calls(stack, app)
        # ...while the count is per client address: from another one it is verified.
        elsewhere = ask(other, basic(BOB.username, BOB.app_password), "/bob")

    statuses = [r.status_code for r in answers]
    print(f"{app}: {GUESSES} wrong passwords -> {statuses}; verifier calls {before} -> {after}")
    print(f"replicas' CPU time over the guesses (and {len(during)} cached checks): {cpu:.2f}s")
    assert statuses == [401] * FAILURES + [429] * (GUESSES - FAILURES), statuses
    for response in answers[:FAILURES]:
        assert "Basic" in response.headers.get("www-authenticate", "")
    waits = [retry_after(r) for r in answers[FAILURES:]]
    print(f"Retry-After of the 429s: {waits}")

    # Exactly `failures` guesses reached a verifier, over both replicas together.
    assert after["misses"] - before["misses"] == FAILURES, (before, after)
    if app == "app":
        assert after["idp_token"] - before["idp_token"] == FAILURES, (before, after)
        assert after["token_metric"] - before["token_metric"] == FAILURES, (before, after)
    rejected = new_records(stack, offsets, "credential rejected")
    assert sum(len(r) for r in rejected) == FAILURES, rejected
    # Both replicas answered, and each verified fewer than `failures` guesses: only a
    # count the replicas share can have reached the limit.
    checks = [
        total(scrape(str(r.http_url)), "ext_authz_checks_total", app=app) - b
        for r, b in zip(stack.replicas, checks_before, strict=True)
    ]
    per_replica = [len(r) for r in rejected]
    print(f"checks answered per replica: {checks}; rejections per replica: {per_replica}")
    assert all(c > 0 for c in checks), checks
    assert all(len(r) < FAILURES for r in rejected), rejected

    # Nobody can lock Alice out: her cached credential passed all through the flood.
    assert [echoed(r)["x-authentik-username"] for r in during] == [[ALICE.username]] * len(during)
    assert unverified.status_code == 429, unverified.status_code
    retry_after(unverified)
    assert unverified_calls == after, (after, unverified_calls)
    assert echoed(elsewhere)["x-authentik-username"] == [BOB.username]

    # Metrics: every 429 counted; the client crossed the limit once, in both scopes
    # (its own count, and its count for the username alice).
    resent = checks_resent(stack)
    throttled = summed(stack, "ext_authz_throttled_total", app=app, kind="credential")
    assert GUESSES - FAILURES + 1 <= throttled <= GUESSES - FAILURES + 1 + resent, throttled
    for scope in ("client", "user"):
        started = summed(
            stack, "ext_authz_throttle_started_total", app=app, kind="credential", scope=scope
        )
        assert started == 1, (scope, started)
    # One log line across the replicas, naming the address Envoy reported.
    (line,) = [r for per in new_records(stack, offsets, "client throttled") for r in per]
    print(f"log: {json.dumps(line)}")
    assert line["app"] == app and line["kind"] == "credential" and line["scope"] == "client"
    assert line["client"] == GUESSER
    assert 1 <= line["seconds"] <= WINDOW


# -- finding 3: login states per client -------------------------------------------------------


@pytest.fixture
def store(shared: Stack) -> Iterator[redis.Redis]:
    assert shared.redis is not None
    client = shared.redis.client()
    yield client
    client.close()


def login_states(stack: Stack, client: redis.Redis) -> int:
    """Keys in this stack's login-state namespace (SPEC §8: one namespace per kind)."""
    pattern = f"{stack.config['store']['key_prefix']}login:*"
    return sum(1 for _ in client.scan_iter(match=pattern, count=1000))


def test_sign_ins_past_the_limit_get_the_429_page_and_store_nothing(
    shared: Stack, store: redis.Redis
) -> None:
    stack = shared
    most = LOGIN_STATES_PER_FAILURE * FAILURES
    extra = 10
    offsets = log_offsets(stack)
    assert login_states(stack, store) == 0
    answers: list[httpx.Response] = []
    with client_from(GUESSER) as browser, client_from(OTHER) as neighbour:
        for n in range(most + extra):
            browser.cookies.clear()  # each one a new unauthenticated visit
            answers.append(browser.get(stack.url("app", f"/page/{n}"), headers=HTML))
        stored = login_states(stack, store)
        # Another address still starts its sign-in.
        other = neighbour.get(stack.url("app", "/page"), headers=HTML)

    statuses = [r.status_code for r in answers]
    print(
        f"{most + extra} sign-ins from one address: {statuses.count(302)} x 302, "
        f"{statuses.count(429)} x 429; {stored} login states in Redis"
    )
    assert statuses == [302] * most + [429] * extra, statuses
    for started in answers[:most]:
        assert authorize_params(started.headers["location"])["state"]
    for refused in answers[most:]:
        retry_after(refused)
        assert refused.headers["content-type"].startswith("text/html")
        assert not refused.headers.get_list("set-cookie"), refused.headers
    assert stored == most, stored
    assert other.status_code == 302, other.status_code
    assert login_states(stack, store) == most + 1

    resent = checks_resent(stack)
    throttled = summed(stack, "ext_authz_throttled_total", app="app", kind="login")
    assert extra <= throttled <= extra + resent, throttled
    started = summed(
        stack, "ext_authz_throttle_started_total", app="app", kind="login", scope="client"
    )
    assert started == 1, started
    (line,) = [r for per in new_records(stack, offsets, "client throttled") for r in per]
    print(f"log: {json.dumps(line)}")
    assert (line["app"], line["kind"], line["client"]) == ("app", "login", GUESSER)


# -- finding 12: the operations port of the real process ---------------------------------------


def raw_exchange(port: int, data: bytes, timeout: float = 15.0) -> bytes:
    """Send `data` to 127.0.0.1:`port` and read until the server closes."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_a_request_line_over_64_kib_on_the_operations_port_is_400_and_one_log_line(
    make_stack: Any,
) -> None:
    stack: Stack = make_stack(idp=False, fresh=True)
    replica = stack.replicas[0]
    assert replica.http_port is not None
    text_before = replica.logs()
    records_before = len(replica.log_records())
    target = "/metrics?" + "a" * (64 * 1024 + 100)
    answer = raw_exchange(replica.http_port, f"GET {target} HTTP/1.1\r\nHost: ops\r\n\r\n".encode())
    print(f"answer to a {len(target)}-byte request target: {answer[:60]!r}")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"aaaa" not in answer

    logged = replica.logs()[len(text_before) :]
    records = records_since(replica, records_before)
    print(f"logged: {logged.strip()[:300]}")
    assert "Traceback" not in logged and "ValueError" not in logged, logged[:2000]
    assert [r["msg"] for r in records] == ["bad http request"], records
    assert "aaaa" not in logged  # the reason, never the request
    assert len(logged.strip().splitlines()) == 1, logged[:2000]
    # The port serves on.
    assert httpx.get(f"{replica.http_url}/healthz", timeout=5).status_code == 200


def test_readyz_with_the_store_down_names_the_store_and_nothing_else(
    make_stack: Any, workdir: Path
) -> None:
    own = RedisServer(workdir / "abuse-readyz", name="abuse-readyz-redis").start()
    try:
        stack: Stack = make_stack(store=own, idp=False)
        replica = stack.replicas[0]
        url = f"{replica.http_url}/readyz"
        assert httpx.get(url, timeout=10).json() == {"ready": True}
        offset = len(replica.log_records())
        own.stop()
        answers = [httpx.get(url, timeout=10) for _ in range(2)]
    finally:
        own.stop()
    for down in answers:
        print(f"/readyz with the store down: {down.status_code} {down.text}")
        assert down.status_code == 503
        assert down.json() == {"ready": False, "problems": ["store"]}
        assert str(own.port) not in down.text and "127.0.0.1" not in down.text
    # The details go to the log, once for the change (not once per probe).
    (line,) = [r for r in records_since(replica, offset) if r.get("msg") == "not ready"]
    print(f"log: {json.dumps(line)}")
    assert set(line["problems"]) == {"store"} and line["problems"]["store"]
