"""Parallel guesses cannot overshoot the guessing limit (issue 19, SPEC §5), through
two real replicas on one real Redis behind a real Envoy: the count is reserved in the
store before a verification starts, so 50 wrong app passwords sent at once from one
address reach the IdP at most `failures` + (workers x replicas) times in the window,
and a good credential verified and cached before still passes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.stack.demo import ALICE, Stack
from tests.support import basic

pytestmark = pytest.mark.e2e

FAILURES = 5
GUESSES = 50
REPLICAS = 2


def test_fifty_parallel_wrong_passwords_reach_the_idp_at_most_failures_plus_two_times(
    make_stack: Any,
) -> None:
    limits = {
        "receive": {"throttle": {"failures": FAILURES, "window": "10m"}, "negative_cache_ttl": 0}
    }
    stack: Stack = make_stack(
        fresh=True,
        replicas=REPLICAS,
        store="redis",
        config_overrides={"applications": {"app": limits}},
    )
    assert stack.idp is not None
    good = basic(ALICE.username, ALICE.app_password)
    assert stack.get("app", "/", headers={"Authorization": good}).status_code == 200
    stack.idp.reset_stats()

    def guess(i: int) -> int:
        wrong = basic(ALICE.username, f"wrong-password-{i}")
        with stack.client() as client:
            return client.get(stack.url("app", "/"), headers={"Authorization": wrong}).status_code

    with ThreadPoolExecutor(max_workers=GUESSES) as pool:
        statuses = list(pool.map(guess, range(GUESSES)))
    verified = stack.idp.stats().get("token", 0)
    assert verified <= FAILURES + REPLICAS, (verified, statuses)
    assert statuses.count(401) == verified and statuses.count(429) == GUESSES - verified
    # The good credential, verified and cached before, is no guess.
    assert stack.get("app", "/", headers={"Authorization": good}).status_code == 200
