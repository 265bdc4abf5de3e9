"""The cost of a guess, through the real Envoy (issue 11 finding 1, SPEC §5).

A flood of wrong Basic passwords on a directory application, each a new credential
(so each needs an argon2id run: 64 MiB), sent by one client while another client
signs in with a valid password. Before the fix the valid login waited behind every
queued guess until Envoy gave up (503), the guesses ran six at a time on asyncio's
default executor, memory rose 88 -> 388 MB, and queued runs went on after Envoy had
given up. Now hashing runs one at a time in a pool of its own, fair between client
addresses and bounded (an overflowing guess gets 503 with Retry-After at once).

The two clients are told apart the way Envoy tells them apart: by their address (the
flood connects from 127.0.0.1, the valid user from 127.0.0.2; both are loopback).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.stack.demo import BOB, Stack
from tests.stack.proc import wait_until
from tests.support import RssSampler, basic, client_from, echoed, vm_kib

pytestmark = pytest.mark.e2e

FLOOD = 60  # parallel guessers (issue 11)
ROUNDS = 4  # at most this many guesses each: a bounded flood (<= 240 requests)
ENVOY_TIMEOUT = 5.0  # envoy/envoy.yaml.tmpl's ext_authz timeout


def requests_seen(stack: Stack) -> int:
    name = "http.ingress_http.downstream_rq_total"
    return stack.envoy.stats(r"^http\.ingress_http\.downstream_rq_total$").get(name, 0)


def test_a_flood_of_wrong_passwords_neither_starves_a_login_nor_bloats_memory(
    make_stack: Any,
) -> None:
    # The throttle off: this is the hash pool's bound under a flood of guesses that all
    # reach it (tests/e2e/test_abuse.py and the flood drill cover the throttle).
    no_throttle = {"applications": {"whoami": {"receive": {"throttle": {"failures": 0}}}}}
    stack: Stack = make_stack(fresh=True, idp=False, config_overrides=no_throttle)
    pid = stack.replicas[0].process.pid
    assert pid is not None
    for _ in range(20):  # warm the process up, without hashing anything
        assert stack.get("whoami", "/public/warm-up").status_code == 200
    idle = vm_kib(pid, "VmRSS")

    done = threading.Event()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def guesser(n: int) -> None:
        with client_from("127.0.0.1") as client:
            for round_ in range(ROUNDS):
                if done.is_set():
                    return
                wrong = basic("alice", f"guess-{n}-{round_}")  # a new credential each time
                status = client.get(
                    stack.url("whoami", f"/flood/{n}"), headers={"Authorization": wrong}
                ).status_code
                with lock:
                    statuses[status] += 1

    sampler = RssSampler(pid)
    sampler.start()
    before = requests_seen(stack)
    with ThreadPoolExecutor(FLOOD) as pool:
        flood = [pool.submit(guesser, n) for n in range(FLOOD)]
        # The valid login starts once the whole first wave of guesses has reached Envoy.
        wait_until(lambda: requests_seen(stack) - before >= FLOOD, 30, "the flood at Envoy")
        with client_from("127.0.0.2") as user:
            started = time.monotonic()
            valid = user.get(
                stack.url("whoami", "/login"),
                headers={"Authorization": basic(BOB.username, BOB.app_password)},
            )
            latency = time.monotonic() - started
        done.set()
        for future in flood:
            future.result()
    sampler.stop.set()
    sampler.join()
    peak, high_water = sampler.peak, vm_kib(pid, "VmHWM")

    print(
        f"valid login: HTTP {valid.status_code} in {latency:.2f}s during a flood of "
        f"{sum(statuses.values())} wrong passwords from {FLOOD} parallel clients: "
        f"{dict(sorted(statuses.items()))}"
    )
    print(
        f"ext-authz RSS: idle {idle / 1024:.1f} MiB, peak sampled {peak / 1024:.1f} MiB "
        f"({peak / idle:.2f}x), VmHWM {high_water / 1024:.1f} MiB ({high_water / idle:.2f}x)"
    )
    assert echoed(valid)["x-authentik-username"] == [BOB.username]
    assert latency < ENVOY_TIMEOUT
    # Never let in: 401, busy (503, ours), or 429 once the guesser is past
    # receive.throttle (the default, 10 rejections): on a slow machine the valid login
    # can take long enough for the guessers' later rounds to meet the throttle.
    assert set(statuses) <= {401, 429, 503}, statuses
    assert peak < 2 * idle and high_water < 2 * idle
