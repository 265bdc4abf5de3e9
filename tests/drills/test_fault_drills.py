"""Fault drills (issue 7; SPEC §5 "IdP unreachable", §8, §9): steady load through Envoy
while Redis, the IdP or a replica fails.

Each drill has a redis-server of its own (and the IdP drill an IdP of its own) and a
fresh two-replica stack. A background pool of threads (`Load`) sends a fixed mix of
requests through Envoy to application `app` — a valid session cookie, valid (cached)
Basic credentials, no credentials, invalid credentials — and classifies every answer:

    ok           200 for a request with a valid credential, carrying its identity
    denied       401, 302 or 403
    unavailable  503 from ext-authz itself (it carries Retry-After)
    envoy_503    503 without Retry-After: Envoy got no answer from ext-authz
    error        any other status, or a transport error
    WRONGFUL     200 for a request without a valid credential, or with another identity

The counts per drill, phase and request kind are printed (run pytest with -s or -rA)
and attached to the report with `record_property`, with how long each phase took.
Every drill asserts zero wrongful allows, plus its own promise; none asserts how fast
something happened (that is the machine's business), only that it happened within a
bound that a working stack meets with a wide margin.

Timing: a measured phase lasts its nominal seconds and at least until
`PHASE_REQUESTS` answers to requests sent in it came back (`PHASE_BOUND` at most); a
wait for a condition (recovery, ejection, a drain) is bounded by `WAIT_BOUND`. The
load stops by itself after its drill's budget, the sum of those bounds
(`budget()`), so on a slow machine it outlives every phase instead of ending first.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from ext_authz._proto import AttributeContext, AuthorizationStub, CheckRequest
from tests.stack.demo import ALICE, BOB, CAROL, Stack, private_idp_stack
from tests.stack.echo import EchoServer
from tests.stack.idp import IdP
from tests.stack.proc import START_BOUND, port_open, wait_until
from tests.stack.redis import RedisServer
from tests.support import basic

THREADS = 4
PAUSE = 0.004  # between two requests of one thread: steady, not a flood (2 CPUs here)

# Bounds on failure only: a passing drill moves on as soon as the thing happened.
PHASE_REQUESTS = 20  # answers a measured phase collects at least
PHASE_BOUND = 20.0  # ... within this long (a working stack: well under a second)
WAIT_BOUND = 30.0  # a wait for a condition: recovery, ejection, a drain step
SLACK = 30.0  # the steps between phases: single requests, signals, warm-up answers


def budget(*, holds: int, waits: int) -> float:
    """How long a drill's load may run: the bounds of its phases and waits, summed."""
    return holds * PHASE_BOUND + waits * WAIT_BOUND + SLACK


REDIS_DRILL = budget(holds=3, waits=1)  # steady, redis-down, recovered; recovery
IDP_DRILL = budget(holds=2, waits=0)  # steady, idp-down
KILL_DRILL = budget(holds=2, waits=1)  # steady, after-hc; ejection
SIGTERM_DRILL = budget(holds=3, waits=3)  # steady, stopping, after; held, closed, exit
# The test's own limit: the longest budget, plus the start of a fresh two-replica
# stack (two replicas and Envoy, each bounded by START_BOUND) and its stop.
pytestmark = [
    pytest.mark.drill,
    pytest.mark.e2e,
    pytest.mark.timeout(
        max(REDIS_DRILL, IDP_DRILL, KILL_DRILL, SIGTERM_DRILL) + 3 * START_BOUND + SLACK
    ),
]

WRONGFUL = "WRONGFUL"
RESULTS = ("ok", "denied", "unavailable", "envoy_503", "error", WRONGFUL)
JSON = ("accept", "application/json")


# -- requests and their classification -------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One kind of request of the mix. `valid`: it carries a valid credential, and a
    200 must then show `user` as X-authentik-username; a 200 is wrongful otherwise."""

    kind: str
    valid: bool
    headers: tuple[tuple[str, str], ...] = ()
    user: str = ""
    host: str = "app"
    path: str = "/drill"


ProbeSource = Probe | Callable[[int], Probe]  # a fixed probe, or request number -> probe


def classify(probe: Probe, response: httpx.Response) -> str:
    status = response.status_code
    if status == 200:
        if not probe.valid:
            return WRONGFUL
        try:
            seen = response.json()["headers"].get("x-authentik-username", [])
        except (ValueError, KeyError, TypeError):
            return "error"
        return "ok" if seen == [probe.user] else WRONGFUL
    if status in (302, 401, 403):
        return "denied"
    if status == 503:
        return "unavailable" if response.headers.get("retry-after") else "envoy_503"
    return "error"


@dataclass(frozen=True)
class Outcome:
    sent: float  # time.monotonic() when sent
    done: float
    phase: str  # the phase when sent
    kind: str
    valid: bool
    result: str
    status: int  # 0: transport error


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that keeps nothing: a Set-Cookie answering one probe must not turn the
    next "no credentials" probe of the same thread into an authenticated one."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


class Load:
    """THREADS threads sending the probe mix through Envoy until stopped or `budget`
    seconds pass. `phase(name)` labels what is sent from then on."""

    def __init__(self, stack: Stack, probes: Sequence[ProbeSource], *, budget: float) -> None:
        self.stack = stack
        self.probes = list(probes)
        self.budget = budget
        self.outcomes: list[Outcome] = []
        self.marks: dict[str, float] = {}
        self._phase = "start"
        self._issued = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            for i in range(THREADS)
        ]
        self._deadline = 0.0
        self._stopped_at: float | None = None
        self.started = 0.0

    def start(self) -> Load:
        self.started = time.monotonic()
        self._deadline = self.started + self.budget
        for thread in self._threads:
            thread.start()
        return self

    def phase(self, name: str) -> float:
        now = time.monotonic()
        self.marks[name] = now
        self._phase = name
        return now

    def hold(
        self,
        name: str,
        seconds: float,
        *,
        at_least: int = PHASE_REQUESTS,
        kinds: Sequence[str] | None = None,
    ) -> None:
        """Label the phase and let the load run in it (see `keep`)."""
        self.phase(name)
        self.keep(name, seconds, at_least=at_least, kinds=kinds)

    def keep(
        self,
        name: str,
        seconds: float,
        *,
        at_least: int = PHASE_REQUESTS,
        kinds: Sequence[str] | None = None,
    ) -> None:
        """Let the load run in the current phase `name` for `seconds`, and on until
        `at_least` answers (to requests of `kinds`, if given) sent in it came back:
        a measuring window never depends on how fast the machine answers. Fails
        after PHASE_BOUND, or at once when the load has ended."""
        assert self._phase == name, (self._phase, name)
        self._stop.wait(seconds)
        deadline = self.marks[name] + max(seconds, PHASE_BOUND)
        while (got := self.count(name, kinds)) < at_least:
            if not any(t.is_alive() for t in self._threads):
                raise AssertionError(
                    f"the load ended (budget {self.budget:g}s) with {got} answers in phase"
                    f" {name!r}: the budget is shorter than the drill's phases"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"phase {name!r}: {got} answers after {PHASE_BOUND:g}s, wanted {at_least}"
                )
            self._stop.wait(0.05)

    def durations(self) -> dict[str, str]:
        """How long each phase lasted (the last one until the load stopped)."""
        ordered = sorted(self.marks.items(), key=lambda kv: kv[1])
        ends = [t for _, t in ordered[1:]] + [self._stopped_at or time.monotonic()]
        return {
            name: f"{end - start:.2f}s" for (name, start), end in zip(ordered, ends, strict=True)
        }

    def stop(self) -> list[Outcome]:
        self._stopped_at = time.monotonic()
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT_BOUND)
        with self._lock:
            return list(self.outcomes)

    def count(self, phase: str | None = None, kinds: Sequence[str] | None = None) -> int:
        with self._lock:
            return sum(
                1
                for o in self.outcomes
                if (phase is None or o.phase == phase) and (kinds is None or o.kind in kinds)
            )

    def _next(self) -> tuple[Probe, str] | None:
        with self._lock:
            if time.monotonic() >= self._deadline:
                return None
            n = self._issued
            self._issued += 1
        source = self.probes[n % len(self.probes)]
        probe = source if isinstance(source, Probe) else source(n)
        return probe, self._phase

    def _run(self) -> None:
        # Envoy answers within its ext_authz timeout (5 s, retries included); the
        # client's own timeout only catches a request nobody answers.
        with self.stack.client(cookies=_NoCookies(), timeout=WAIT_BOUND) as client:
            while not self._stop.is_set():
                item = self._next()
                if item is None:
                    return
                probe, phase = item
                sent = time.monotonic()
                try:
                    response = client.get(
                        self.stack.url(probe.host, probe.path), headers=list(probe.headers)
                    )
                    result, status = classify(probe, response), response.status_code
                except httpx.HTTPError:
                    result, status = "error", 0
                outcome = Outcome(
                    sent, time.monotonic(), phase, probe.kind, probe.valid, result, status
                )
                with self._lock:
                    self.outcomes.append(outcome)
                self._stop.wait(PAUSE)


def tally(
    outcomes: Sequence[Outcome],
    *,
    phase: str | None = None,
    kinds: Sequence[str] | None = None,
    valid: bool | None = None,
) -> Counter[str]:
    return Counter(
        o.result
        for o in outcomes
        if (phase is None or o.phase == phase)
        and (kinds is None or o.kind in kinds)
        and (valid is None or o.valid == valid)
    )


def report(
    name: str,
    load: Load,
    outcomes: Sequence[Outcome],
    record_property: Callable[[str, object], None],
    **facts: object,
) -> None:
    """Print the counts per phase and kind, and attach them to the test report."""
    phases = list(dict.fromkeys(o.phase for o in outcomes))
    kinds = list(dict.fromkeys(o.kind for o in outcomes))
    seconds = max((o.done for o in outcomes), default=load.started) - load.started
    table: dict[str, dict[str, dict[str, int]]] = {}
    lines = [f"\n=== drill {name}: {len(outcomes)} requests in {seconds:.1f}s"]
    for phase in phases:
        table[phase] = {}
        for kind in kinds:
            counts = tally(outcomes, phase=phase, kinds=[kind])
            if not counts:
                continue
            table[phase][kind] = dict(counts)
            shown = " ".join(f"{r}={counts[r]}" for r in RESULTS if counts[r])
            lines.append(f"  {phase:<12} {kind:<15} {shown}")
    total = tally(outcomes)
    lines.append("  total        " + " ".join(f"{r}={total[r]}" for r in RESULTS))
    slow = [o for o in outcomes if o.result in ("envoy_503", "error")]
    if slow:
        facts["failures (phase, kind, status, latency)"] = [
            (o.phase, o.kind, o.status, round(o.done - o.sent, 3)) for o in slow[:20]
        ]
    with contextlib.suppress(Exception):  # Envoy's view: why it answered 503 itself
        facts["envoy"] = {
            k.split("ext_authz.", 1)[-1]: v
            for k, v in load.stack.envoy.stats(
                r"(ext_authz\.(error|denied|ok|failure_mode_allowed|timeout))"
                r"|(cluster\.ext_authz\.(upstream_rq_(retry|retry_success|retry_overflow|timeout"
                r"|per_try_timeout|pending_overflow|5\d\d|rx_reset|tx_reset|retry_limit_exceeded)"
                r"|upstream_cx_(destroy_remote_with_active_rq|connect_fail|protocol_error)"
                r"|health_check\.failure|http2\.(rx_reset|tx_reset|goaway_sent|streams_active)))$"
            ).items()
            if v
        }
    facts["phase_durations"] = load.durations()
    for key, value in facts.items():
        lines.append(f"  {key}: {value}")
    print("\n".join(lines))
    record_property(
        f"drill_{name}", json.dumps({"counts": table, "total": dict(total), **facts}, default=str)
    )


# -- the probe mix -----------------------------------------------------------------------


def session_cookie(response: httpx.Response) -> tuple[str, str]:
    """(name, value) of the session cookie a response sets."""
    for line in response.headers.get_list("set-cookie"):
        name, _, rest = line.partition("=")
        if name.startswith("authentik_proxy_"):
            value = rest.split(";", 1)[0]
            if value:
                return name, value
    raise AssertionError(f"no session cookie set (HTTP {response.status_code})")


def sign_in_with_basic(stack: Stack, user: str, password: str) -> tuple[str, str]:
    """A session for `user`, made from Basic credentials; its cookie (name, value)."""
    response = stack.get("app", "/", headers={"Authorization": basic(user, password)})
    assert response.status_code == 200, (response.status_code, response.text)
    return session_cookie(response)


def warm_up(stack: Stack) -> tuple[str, str]:
    """Cache what the mix uses: ALICE's Basic credentials, ALICE's wrong password (the
    negative cache) and a session of CAROL's. Returns CAROL's cookie."""
    cookie = sign_in_with_basic(stack, CAROL.username, CAROL.app_password)
    ok = stack.get("app", "/", headers={"Authorization": basic(ALICE.username, ALICE.app_password)})
    assert ok.status_code == 200, ok.status_code
    wrong = stack.get(
        "app",
        "/",
        headers={"Authorization": basic(ALICE.username, "not-alices-password"), JSON[0]: JSON[1]},
    )
    assert wrong.status_code == 401, wrong.status_code
    return cookie


def probe_mix(cookie: tuple[str, str]) -> list[ProbeSource]:
    """Valid and invalid requests, interleaved (6 of 10 carry a valid credential)."""
    name, value = cookie
    session = Probe("session", True, (("cookie", f"{name}={value}"), JSON), CAROL.username)
    cached_basic = Probe(
        "basic", True, (("authorization", basic(ALICE.username, ALICE.app_password)), JSON),
        ALICE.username,
    )  # fmt: skip
    nothing = Probe("none", False, (JSON,))
    wrong_password = Probe(
        "wrong-password",
        False,
        (("authorization", basic(ALICE.username, "not-alices-password")), JSON),
    )

    def forged_cookie(n: int) -> Probe:
        return Probe("forged-cookie", False, (("cookie", f"{name}={secrets.token_urlsafe(32)}"),))

    def fresh_invalid(n: int) -> Probe:
        # Never seen before: no cache can answer, the IdP must be asked.
        return Probe(
            "fresh-invalid", False, (("authorization", basic("drill-nobody", f"nope-{n}")), JSON)
        )

    return [
        session, cached_basic, nothing,
        session, cached_basic, wrong_password,
        session, cached_basic, forged_cookie,
        fresh_invalid,
    ]  # fmt: skip


VALID_KINDS = ("session", "basic")


def assert_no_wrongful_allow(outcomes: Sequence[Outcome]) -> None:
    wrongful = [o for o in outcomes if o.result == WRONGFUL]
    assert not wrongful, f"{len(wrongful)} wrongful allows, e.g. {wrongful[:5]}"


def internal_errors(stack: Stack) -> list[dict[str, Any]]:
    """ERROR log records of every replica (a check that crashed, a fault mishandled)."""
    return [
        {k: r.get(k) for k in ("msg", "message", "event", "error", "exc_info") if k in r}
        for replica in stack.replicas
        for r in replica.log_records()
        if str(r.get("level", r.get("levelname", ""))).lower() in ("error", "critical")
    ]


# -- fixtures -------------------------------------------------------------------------------


# The drills are about faults, not guessing: their steady mix sends far more invalid
# credentials than `receive.throttle` lets one client try, and each must still reach
# the verifier (tests/e2e/test_abuse.py covers the throttle).
_OFF: dict[str, Any] = {"receive": {"throttle": {"failures": 0}}}
NO_THROTTLE: dict[str, Any] = {"applications": {"app": _OFF, "whoami": _OFF}}


@pytest.fixture
def two_replicas(make_stack: Any, drill_redis: RedisServer) -> Stack:
    """Two replicas sharing the drill's Redis; the session IdP (left running)."""
    stack: Stack = make_stack(replicas=2, store=drill_redis, config_overrides=NO_THROTTLE)
    return stack


# -- (a) Redis killed and restarted -------------------------------------------------------


def test_redis_killed_and_restarted(
    two_replicas: Stack,
    drill_redis: RedisServer,
    record_property: Callable[[str, object], None],
) -> None:
    stack = two_replicas
    cookie = warm_up(stack)
    load = Load(stack, probe_mix(cookie), budget=REDIS_DRILL).start()
    recovery = new_session_checks = 0.0
    try:
        load.hold("steady", 1.5)
        killed = load.phase("redis-down")
        drill_redis.kill()
        load.keep("redis-down", 3.0)
        restarting = time.monotonic()
        drill_redis.start()  # same port, empty (no persistence): every session is gone
        restarted = load.phase("recovering")

        # Valid credentials work again without restarting ext-authz: several in a row,
        # so both replicas (Envoy balances round-robin) have reconnected.
        streak = [0]

        def basic_works() -> bool:
            r = stack.get(
                "app", "/", headers={"Authorization": basic(ALICE.username, ALICE.app_password)}
            )
            streak[0] = streak[0] + 1 if r.status_code == 200 else 0
            return streak[0] >= 6

        wait_until(
            basic_works, WAIT_BOUND, "valid Basic credentials to work again after Redis restart"
        )
        recovery = time.monotonic() - restarted
        load.hold("recovered", 1.5)

        # A brand-new session after recovery works, on both replicas.
        name, value = sign_in_with_basic(stack, BOB.username, BOB.app_password)
        for _ in range(6):
            r = stack.get("app", "/after", headers={"Cookie": f"{name}={value}"})
            assert r.status_code == 200, r.status_code
            assert r.json()["headers"]["x-authentik-username"] == [BOB.username]
        new_session_checks = time.monotonic() - restarted
    finally:
        outcomes = load.stop()
    # Sessions checked while Redis was surely gone (sent after the kill, answered before
    # the restart began): honoured from the local cache, or 503; never "no such session"
    # (that would also expire the browser's cookie: a sign-out by outage).
    outage = [
        o for o in outcomes if o.kind == "session" and o.sent >= killed and o.done < restarting
    ]
    outage_denials = [
        (round(o.sent - killed, 3), round(o.done - killed, 3), o.status)
        for o in outage
        if o.result == "denied"
    ]
    report(
        "redis_kill",
        load,
        outcomes,
        record_property,
        session_denied_during_outage_at=outage_denials,
        redis_down_for=f"{restarted - killed:.1f}s",
        recovered_after_restart=f"{recovery:.2f}s",
        new_session_ok_after=f"{new_session_checks:.2f}s",
        replica_errors=len(internal_errors(stack)),
    )
    assert_no_wrongful_allow(outcomes)
    # (Enough load in each measured phase: Load.keep made sure of it.)
    # Before the fault every valid request passes.
    assert set(tally(outcomes, phase="steady", kinds=VALID_KINDS)) == {"ok"}
    # Never a crash: ext-authz answers every request itself (200, a denial or its 503).
    broken = tally(outcomes)["error"] + tally(outcomes)["envoy_503"]
    assert broken == 0, f"{broken} errors / 503s not from ext-authz: {tally(outcomes)}"
    assert not outage_denials, (
        "a valid session was denied (not 503) while Redis was down: "
        f"(sent, answered, status) seconds after the kill: {outage_denials}"
    )
    # After recovery the cached credentials pass again, every time.
    assert set(tally(outcomes, phase="recovered", kinds=["basic"])) == {"ok"}
    assert all(r.alive() for r in stack.replicas)


# -- (b) the IdP stopped -----------------------------------------------------------------------


@pytest.fixture
def drill_idp_stack(
    workdir: Path, echo_server: EchoServer, drill_redis: RedisServer
) -> Iterator[tuple[Stack, IdP]]:
    """Two replicas, the drill's Redis and an IdP of their own (the drill stops it)."""
    with private_idp_stack(
        workdir,
        echo_server,
        drill_redis,
        name="drill-idp",
        replicas=2,
        config_overrides=NO_THROTTLE,
    ) as pair:
        yield pair


def test_idp_stopped(
    drill_idp_stack: tuple[Stack, IdP], record_property: Callable[[str, object], None]
) -> None:
    stack, idp = drill_idp_stack
    cookie = warm_up(stack)
    # Credentials nobody has shown yet (a valid app password, an unknown user, an
    # opaque token that needs introspection).
    opaque = idp.mint_access_token("whoami-oidc", BOB.username, fmt="opaque")
    never_seen = {
        "valid-app-password": basic(BOB.username, BOB.app_password),
        "unknown-user": basic("drill-stranger", "whatever"),
        "opaque-bearer": f"Bearer {opaque}",
    }
    load = Load(stack, probe_mix(cookie), budget=IDP_DRILL).start()
    fresh: dict[str, list[int]] = {}
    try:
        load.hold("steady", 1.5)
        load.phase("idp-down")
        idp.stop()
        for label, authorization in never_seen.items():
            fresh[label] = []
            for _ in range(4):  # both replicas, and not cached as "invalid" either
                r = stack.get(
                    "app", "/", headers={"Authorization": authorization, JSON[0]: JSON[1]}
                )
                fresh[label].append(r.status_code)
                assert r.status_code != 503 or r.headers.get("retry-after"), label
        load.keep("idp-down", 3.0, kinds=VALID_KINDS)
    finally:
        outcomes = load.stop()
    report(
        "idp_stop",
        load,
        outcomes,
        record_property,
        never_seen_statuses=fresh,
        replica_errors=len(internal_errors(stack)),
    )
    assert_no_wrongful_allow(outcomes)
    # Cached sessions and cached credentials keep succeeding, every one of them.
    for kind in VALID_KINDS:
        assert set(tally(outcomes, kinds=[kind])) == {"ok"}, (kind, tally(outcomes, kinds=[kind]))
    # Never-seen credentials: 503 (with Retry-After), neither 401 nor 200.
    for label, statuses in fresh.items():
        assert statuses == [503] * len(statuses), (label, statuses)
    assert tally(outcomes)["error"] + tally(outcomes)["envoy_503"] == 0, tally(outcomes)


# -- (c) one replica SIGKILLed ------------------------------------------------------------------


def test_replica_killed(
    two_replicas: Stack, record_property: Callable[[str, object], None]
) -> None:
    stack = two_replicas
    cookie = warm_up(stack)
    load = Load(stack, probe_mix(cookie), budget=KILL_DRILL).start()
    try:
        load.hold("steady", 1.5)
        killed = load.phase("killed")
        stack.replicas[0].kill()
        # Envoy's health check takes it out after two failed checks (1 s apart).
        wait_until(
            lambda: sorted(h for _, h in stack.envoy.cluster_health()) == [False, True],
            WAIT_BOUND,
            "Envoy to mark the killed replica unhealthy",
        )
        ejected = time.monotonic() - killed
        # Enough valid requests after the kill to show the retries cover it.
        load.hold("after-hc", 1.5, at_least=50, kinds=VALID_KINDS)
    finally:
        outcomes = load.stop()
    after_kill = [o for o in outcomes if o.sent >= killed]
    failed = [o for o in after_kill if o.result not in ("ok", "denied")]
    window = (
        f"{min(o.sent for o in failed) - killed:.2f}s..{max(o.done for o in failed) - killed:.2f}s"
        if failed
        else "none"
    )
    valid_after = [o for o in after_kill if o.valid]
    report(
        "replica_kill",
        load,
        outcomes,
        record_property,
        ejected_by_health_check_after=f"{ejected:.2f}s",
        valid_requests_after_kill=len(valid_after),
        valid_ok_after_kill=sum(o.result == "ok" for o in valid_after),
        failures_after_kill=len(failed),
        failure_window_after_kill=window,
    )
    assert_no_wrongful_allow(outcomes)
    # Envoy's retry (connect-failure, reset, unavailable; another host) covers the crash:
    # the goal, and the assertion, is zero failures.
    kinds = Counter((o.kind, o.result, o.status) for o in failed)
    assert not failed, f"{len(failed)} failures after the kill ({window}): {kinds}"
    assert stack.replicas[1].alive()


# -- (d) one replica SIGTERMed with checks in flight ---------------------------------------------

DIRECT_CHECKS = 4
GRACE = 30.0  # the drilled replica's grace_period: bounds a failure only (see below)


class GatedIdP:
    """An IdP whose token endpoint holds every request until the test opens the gate,
    then refuses the credentials (400 invalid_grant, so the Check answers 401).

    A Check verifying Basic credentials against it is provably in flight, in the
    replica's handler, from the moment its token request arrives (`held`) until the
    test opens the gate: the drain drill needs no race between a slow verification
    and the machine's speed to have checks in flight across the drain."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self._held = 0
        self._lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.endswith("/.well-known/openid-configuration"):
                    self._json(200, gate.discovery())
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with gate._lock:
                    gate._held += 1
                gate.opened.wait(2 * WAIT_BOUND)  # never forever, even if a test breaks
                self._json(400, {"error": "invalid_grant"})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gated-idp", daemon=True
        )

    @property
    def held(self) -> int:
        with self._lock:
            return self._held

    def discovery(self) -> dict[str, str]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
        }

    def open(self) -> None:
        self.opened.set()

    def __enter__(self) -> GatedIdP:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.open()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def gated_idp() -> Iterator[GatedIdP]:
    with GatedIdP() as idp:
        yield idp


def gated_app(idp: GatedIdP) -> dict[str, Any]:
    """Application `gated`: Basic verified at the gated IdP (authentik's app-password
    grant). Its IdP timeout outlasts any gate the drill holds."""
    return {
        "external_host": "http://gated.localhost",
        "oidc": {
            "issuer": idp.issuer,
            "client_id": "gated",
            "client_secret": "gated-client-secret",
            "timeout": f"{2 * WAIT_BOUND:g}s",
        },
        "unauthenticated": "deny",
        "receive": {"basic": {"enabled": True, "verify": "authentik"}},
    }


def gated_check_request(n: int) -> CheckRequest:
    """A Check on application `gated` with a Basic credential never seen before."""
    http = AttributeContext.HttpRequest(
        method="GET",
        host="gated.localhost",
        path=f"/drain/{n}",
        headers={
            "authorization": basic("drain-user", f"drain-{n}-{secrets.token_hex(4)}"),
            "accept": "application/json",
            "x-request-id": f"drill-drain-{n}",
        },
    )
    request = CheckRequest()
    request.attributes.request.http.CopyFrom(http)
    request.attributes.context_extensions["ext_authz_app"] = "gated"
    return request


def test_replica_sigterm_drains_in_flight_checks(
    make_stack: Any,
    drill_redis: RedisServer,
    gated_idp: GatedIdP,
    record_property: Callable[[str, object], None],
) -> None:
    """SIGTERM with checks in flight (SPEC §2, §9): every check the replica had
    accepted is answered, the process exits 0, and Envoy's traffic never notices.

    The direct checks are accepted beyond doubt: each one's handler is waiting for the
    gated IdP when SIGTERM comes, and the gate stays shut until the replica has
    finished its notice (health NOT_SERVING) and closed its port, i.e. until the gRPC
    server is stopping with them in flight. The grace period is long (GRACE) because
    it is not what is drilled: a check still running when the grace ends is cut
    (UNAVAILABLE) by design. With the former 2 s grace and argon2 checks, a busy
    machine cut checks that had started a second before SIGTERM."""
    stack: Stack = make_stack(
        replicas=2,
        store=drill_redis,
        config_overrides={
            "server": {"grace_period": f"{GRACE:g}s"},
            "applications": {**NO_THROTTLE["applications"], "gated": gated_app(gated_idp)},
        },
    )
    replica = stack.replicas[0]
    host, _, port = replica.grpc_address.rpartition(":")
    cookie = warm_up(stack)
    mix = probe_mix(cookie)

    def slow(n: int) -> Probe:  # argon2 on `whoami`: Envoy's checks in flight during the drain
        return Probe(
            "slow-invalid",
            False,
            (("authorization", basic(ALICE.username, f"slow-{n}")), JSON),
            host="whoami",
        )

    load = Load(stack, [*mix, slow], budget=SIGTERM_DRILL).start()
    answers: list[str] = []
    pending_at_term = 0
    code: int | None = None
    timings: dict[str, str] = {}
    try:
        load.hold("steady", 1.5)
        # Checks sent straight to the replica, so Envoy's retry cannot hide a dropped one.
        with grpc.insecure_channel(replica.grpc_address) as channel:
            stub = AuthorizationStub(channel)
            batch = [
                stub.Check.future(gated_check_request(n), timeout=4 * WAIT_BOUND)
                for n in range(DIRECT_CHECKS)
            ]
            wait_until(
                lambda: gated_idp.held == DIRECT_CHECKS,
                WAIT_BOUND,
                "every direct check to be waiting for the IdP, in the replica's handler",
            )
            pending_at_term = sum(not f.done() for f in batch)
            term = load.phase("draining")
            replica.process.send_signal(signal.SIGTERM)
            # The port closes when the notice is over and the gRPC server stops.
            wait_until(
                lambda: not port_open(host, int(port)),
                WAIT_BOUND,
                "the draining replica to stop listening",
            )
            # Envoy's traffic while the gRPC server stops with checks in flight (its
            # connection to the replica goes away; retries must cover that): enough
            # of it to see it unhurt, before the gate opens.
            closed = load.phase("stopping")
            load.keep("stopping", 0.0)
            released = time.monotonic()
            gated_idp.open()
            code = replica.process.wait(timeout=WAIT_BOUND)
            exited = time.monotonic()
            for future in batch:
                try:
                    answer = future.result(timeout=WAIT_BOUND)
                    answers.append(f"{answer.status.code}/{answer.denied_response.status.code}")
                except grpc.RpcError as exc:
                    answers.append(f"rpc-error {exc.code()}")  # type: ignore[attr-defined]
            timings = {
                "sigterm_to_port_closed": f"{closed - term:.2f}s",
                "gate_held_after_close": f"{released - closed:.2f}s",
                "gate_opened_to_exit": f"{exited - released:.2f}s",
            }
        load.hold("after", 1.0)
    finally:
        gated_idp.open()
        outcomes = load.stop()
    drain_log = [
        r.get("msg") or r.get("message") or r.get("event")
        for r in replica.log_records()
        if (r.get("msg") or r.get("message") or r.get("event")) in ("draining", "stopped")
    ]
    report(
        "replica_sigterm",
        load,
        outcomes,
        record_property,
        exit_code=code,
        grace_period=f"{GRACE:g}s",
        direct_checks_pending_at_sigterm=pending_at_term,
        direct_check_answers=dict(Counter(answers)),
        drain_log=drain_log,
        **timings,
    )
    assert_no_wrongful_allow(outcomes)
    # Every direct check was in the replica's handler at SIGTERM (the gate held it)...
    assert pending_at_term == DIRECT_CHECKS, pending_at_term
    # ... and every one was answered by ext-authz (401: refused credentials), none cut.
    assert answers == ["16/401"] * DIRECT_CHECKS, answers
    assert code == 0
    assert drain_log == ["draining", "stopped"], drain_log
    # Nothing through Envoy failed because of the drain: no 503 of any kind, no error.
    bad = {r: n for r, n in tally(outcomes).items() if r not in ("ok", "denied")}
    assert not bad, bad
    assert set(tally(outcomes, kinds=VALID_KINDS)) == {"ok"}
