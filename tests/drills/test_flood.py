"""The bounded flood drill (issue 11, "What it must show"; SPEC §5 "Cost and abuse").

One replica behind Envoy, with a redis-server of its own and the session IdP, both
applications at their default guessing limit (`receive.throttle`: 10 rejections a
minute). One client address floods them: FLOOD distinct bad credentials per
application (half wrong Basic passwords for alice, half bogus Bearer tokens, each
seen once), CONCURRENCY at a time:

- `whoami` (directory): a wrong password costs an argon2id run (64 MiB) in the hash
  pool; a bogus token costs one HMAC (the keyed digest finds no token).
- `app` (authentik): a wrong password is a token request at the IdP (an app
  password), a bogus token an introspection request.

Meanwhile a valid user signs in again and again from another client address, each
time with a credential nobody has verified yet, so each needs the verifier too: a new
directory user's app password on `whoami`, a newly minted opaque access token
(introspection) on `app`. The other address is another loopback address (127.0.0.2):
the test's client binds it as its local address, and Envoy reports it to ext-authz as
the request's source, which is what the limits count by.

What it shows: every answer to the valid user is a 200 with its identity (through
Envoy: an answer after Envoy's ext_authz timeout would be Envoy's own 503, never a
200); no bad credential is let in, and every answer is ext-authz's own (401, 429, or
503 with Retry-After when the hash pool is full); the replica's memory (VmRSS sampled,
and VmHWM) stays within 2x of its idle size. The counts per application and kind
(401 / 429 / 503 / other) and the timings are printed for the summary; timings are
never asserted.

Bounded: FLOOD x 2 requests, at most MAX_SIGN_INS valid ones, every wait with a
deadline that only bounds a failure.
"""

from __future__ import annotations

import json
import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from tests.stack.demo import BOB, OIDC_CLIENT_ID, Stack
from tests.stack.proc import START_BOUND, wait_until
from tests.stack.redis import RedisServer
from tests.support import RssSampler, basic, client_from, scrape, total, vm_kib

FLOOD = 200  # distinct bad credentials per application
CONCURRENCY = 50
MIN_SIGN_INS = 4  # valid sign-ins at least (half per application) ...
MAX_SIGN_INS = 24  # ... and on while the flood lasts, up to this many
FLOOD_BOUND = 120.0  # the whole flood, answered (a working stack: a few seconds)
ENVOY_TIMEOUT = 5.0  # envoy/envoy.yaml.tmpl's ext_authz timeout (printed next to latencies)
FLOODER = "127.0.0.1"
USER = "127.0.0.2"

pytestmark = [
    pytest.mark.drill,
    pytest.mark.e2e,
    pytest.mark.timeout(FLOOD_BOUND + 4 * START_BOUND + 60),
]


def drill_user(n: int) -> tuple[str, str]:
    """(username, app password) of the n-th extra directory user: one fresh valid
    credential for `whoami` per sign-in (one hash each, so one argon2id run each)."""
    return f"drill-user-{n}", f"drill-password-{n}"


def with_drill_users(config: dict[str, Any]) -> dict[str, Any]:
    users = list(config["directory"]["users"])
    hasher = PasswordHasher()  # the parameters of every other directory hash
    for n in range(MAX_SIGN_INS):
        username, password = drill_user(n)
        users.append({"username": username, "app_passwords": [hasher.hash(password)]})
    return {**config, "directory": {**config["directory"], "users": users}}


# -- the flood ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    app: str
    kind: str  # "password" or "token"
    authorization: str


def bad_credentials() -> list[Bad]:
    """FLOOD per application, interleaved; every one distinct (no cache answers it)."""
    out: list[Bad] = []
    for n in range(FLOOD // 2):
        for app in ("whoami", "app"):
            out.append(Bad(app, "password", basic("alice", f"flood-{n}-{secrets.token_hex(6)}")))
            out.append(Bad(app, "token", f"Bearer flood-{n}-{secrets.token_urlsafe(24)}"))
    return out


def classify(response: httpx.Response | None) -> str:
    """401 / 429 / 503 (ext-authz's own: with Retry-After) / other (a 200, Envoy's bare
    503, a transport error, anything else)."""
    if response is None:
        return "other"
    if response.status_code in (401, 429):
        return str(response.status_code)
    if response.status_code == 503 and response.headers.get("retry-after"):
        return "503"
    return "other"


class Flood:
    """CONCURRENCY threads, each with its own connection from FLOODER, sending the bad
    credentials until none is left."""

    def __init__(self, stack: Stack, credentials: list[Bad]) -> None:
        self.stack = stack
        self.left = list(reversed(credentials))
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.others: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.started = self.ended = 0.0

    def _take(self) -> Bad | None:
        with self.lock:
            return self.left.pop() if self.left else None

    def worker(self, client: httpx.Client) -> None:
        with client:
            while (bad := self._take()) is not None:
                try:
                    response: httpx.Response | None = client.get(
                        self.stack.url(bad.app, "/flood"),
                        headers={"Authorization": bad.authorization, "Accept": "application/json"},
                    )
                except httpx.HTTPError:
                    response = None
                result = classify(response)
                with self.lock:
                    self.counts[(bad.app, bad.kind, result)] += 1
                    if result == "other":
                        self.others.append(
                            (bad.app, bad.kind, response.status_code if response else 0)
                        )

    def run(self, pool: ThreadPoolExecutor) -> list[Any]:
        # The clients first (each costs some CPU to make), so the flood starts at once.
        clients = [client_from(FLOODER) for _ in range(CONCURRENCY)]
        self.started = time.monotonic()
        futures = [pool.submit(self.worker, client) for client in clients]
        for future in futures:
            future.add_done_callback(lambda _: self._maybe_ended())
        return futures

    def _maybe_ended(self) -> None:
        with self.lock:
            self.ended = time.monotonic()

    def table(self) -> list[str]:
        lines = []
        for app in ("whoami", "app"):
            for kind in ("password", "token"):
                row = {r: self.counts[(app, kind, r)] for r in ("401", "429", "503", "other")}
                shown = " ".join(f"{r}={n}" for r, n in row.items())
                lines.append(f"  flood  {app:<7} {kind:<9} {shown}")
        return lines


def requests_seen(stack: Stack) -> int:
    name = "http.ingress_http.downstream_rq_total"
    return stack.envoy.stats(r"^http\.ingress_http\.downstream_rq_total$").get(name, 0)


def test_a_bounded_flood_of_bad_credentials(
    make_stack: Any, drill_redis: RedisServer, record_property: Callable[[str, object], None]
) -> None:
    stack: Stack = make_stack(store=drill_redis, config_overrides=with_drill_users)
    idp = stack.idp
    assert idp is not None
    replica = stack.replicas[0]
    pid = replica.process.pid
    assert pid is not None and replica.http_url
    tokens = [idp.mint_access_token(OIDC_CLIENT_ID, BOB.username) for _ in range(MAX_SIGN_INS)]

    # Warm the replica up without hashing anything: skip paths, and one IdP round trip.
    for _ in range(20):
        assert stack.get("whoami", "/public/warm-up").status_code == 200
    with client_from(USER) as user:
        warm = idp.mint_access_token(OIDC_CLIENT_ID, BOB.username)
        response = user.get(
            stack.url("app", "/warm-up"), headers={"Authorization": f"Bearer {warm}"}
        )
        assert response.status_code == 200, response.status_code
    idle = vm_kib(pid, "VmRSS")
    idp_before = idp.stats()

    flood = Flood(stack, bad_credentials())
    sign_ins: list[tuple[str, int, float, bool, list[str]]] = []
    expected: list[list[str]] = []  # the identity each sign-in must show
    sampler = RssSampler(pid)
    sampler.start()
    seen = requests_seen(stack)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        futures = flood.run(pool)
        # The valid user starts once the flood's first wave has reached Envoy, and signs
        # in as long as the flood lasts (at least MIN_SIGN_INS, at most MAX_SIGN_INS).
        wait_until(
            lambda: requests_seen(stack) - seen >= CONCURRENCY, FLOOD_BOUND, "the flood at Envoy"
        )
        with client_from(USER) as user:
            n = 0
            while n < MAX_SIGN_INS and (n < MIN_SIGN_INS or not all(f.done() for f in futures)):
                during = not all(f.done() for f in futures)
                if n % 2 == 0:
                    username, password = drill_user(n // 2)
                    app, authorization = "whoami", basic(username, password)
                else:
                    app, username = "app", BOB.username
                    authorization = f"Bearer {tokens[n // 2]}"
                user.cookies.clear()  # a sign-in: the credential, not a session, is judged
                sent = time.monotonic()
                response = user.get(
                    stack.url(app, f"/sign-in/{n}"), headers={"Authorization": authorization}
                )
                took = time.monotonic() - sent
                seen_as = (
                    response.json()["headers"].get("x-authentik-username", [])
                    if response.status_code == 200
                    else []
                )
                sign_ins.append((app, response.status_code, took, during, seen_as))
                expected.append([username])
                n += 1
        done, not_done = wait_all(futures, timeout=FLOOD_BOUND)
        for future in done:
            future.result()
    sampler.stop.set()
    sampler.join()
    peak, high_water = sampler.peak, vm_kib(pid, "VmHWM")
    idp_after = idp.stats()
    metrics = scrape(replica.http_url)

    latencies = [took for _, _, took, _, _ in sign_ins]
    idp_calls = {
        endpoint: idp_after.get(endpoint, 0) - idp_before.get(endpoint, 0)
        for endpoint in ("token:client_credentials", "introspection")
    }
    lines = [
        f"\n=== drill flood: {2 * FLOOD} bad credentials from {FLOODER}, {CONCURRENCY} at a"
        f" time, answered in {flood.ended - flood.started:.1f}s",
        *flood.table(),
        "  total  "
        + " ".join(
            f"{r}={sum(n for k, n in flood.counts.items() if k[2] == r)}"
            for r in ("401", "429", "503", "other")
        ),
        f"  valid sign-ins from {USER}: {len(sign_ins)} ({sum(s[3] for s in sign_ins)} sent"
        f" while the flood ran): statuses {dict(Counter(s[1] for s in sign_ins))}",
        f"  valid sign-in latency: min {min(latencies):.2f}s median"
        f" {statistics.median(latencies):.2f}s max {max(latencies):.2f}s"
        f" (Envoy's timeout {ENVOY_TIMEOUT:g}s)",
        f"  replica RSS: idle {idle / 1024:.1f} MiB, peak sampled {peak / 1024:.1f} MiB"
        f" ({peak / idle:.2f}x), VmHWM {high_water / 1024:.1f} MiB ({high_water / idle:.2f}x)",
        f"  IdP requests during the flood (valid sign-ins included): {idp_calls}",
        "  throttled (429) by the replica: "
        + str(
            {app: total(metrics, "ext_authz_throttled_total", app=app) for app in ("whoami", "app")}
        ),
    ]
    if flood.others:
        lines.append(f"  other answers (app, kind, status): {flood.others[:20]}")
    print("\n".join(lines))
    record_property(
        "drill_flood",
        json.dumps(
            {
                "counts": {"/".join(k): v for k, v in flood.counts.items()},
                "sign_ins": [(a, s, round(t, 3), d) for a, s, t, d, _ in sign_ins],
                "rss_kib": {"idle": idle, "peak": peak, "hwm": high_water},
                "idp_calls": idp_calls,
            }
        ),
    )

    assert not not_done, f"{len(not_done)} flood threads still busy after {FLOOD_BOUND:g}s"
    # The valid user: a 200 with its identity, every time.
    assert [s[1] for s in sign_ins] == [200] * len(sign_ins), sign_ins
    assert [s[4] for s in sign_ins] == expected, sign_ins
    # ... and not only after the flood: the first one is sent once the flood's first
    # wave is at Envoy, with most of the flood still to come.
    assert any(during for _, _, _, during, _ in sign_ins), sign_ins
    # No bad credential let in, and every answer ext-authz's own (401, 429, 503 + Retry-After).
    assert sum(flood.counts.values()) == 2 * FLOOD
    assert not flood.others, flood.others[:20]
    # Memory stays within 2x of idle.
    assert peak < 2 * idle and high_water < 2 * idle, (idle, peak, high_water)
