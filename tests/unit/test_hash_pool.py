"""HashPool: bounded, fair, and no work for callers that left (SPEC §5 "Cost and abuse").

Workers are held with threading.Events, so every ordering here is decided by the
pool's scheduling, never by timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from ext_authz.hash_pool import DEFAULT_WORKERS, HashPool, PoolBusy, requester

pytestmark = pytest.mark.anyio

WAIT = 10.0  # seconds: only bounds a failure


def recorder(log: list[str], name: str) -> Callable[[], str]:
    def job() -> str:
        log.append(name)
        return name

    return job


async def settle() -> None:
    """Let the loop run the callbacks already scheduled (no timing involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_runs_in_a_pool_thread_and_returns_or_raises() -> None:
    pool = HashPool(2)
    try:
        assert await pool.run(threading.get_ident) != threading.get_ident()

        def boom() -> None:
            raise ValueError("bad hash")

        with pytest.raises(ValueError, match="bad hash"):
            await pool.run(boom)
        assert pool.running == 0 and pool.pending == 0
    finally:
        pool.close()


async def test_admission_is_bounded_per_client_and_in_all() -> None:
    pool = HashPool(1, max_pending=3, max_pending_per_client=2)
    gate = threading.Event()
    try:
        busy = asyncio.ensure_future(pool.run(lambda: gate.wait(WAIT), client="a"))
        await settle()
        assert pool.running == 1 and pool.pending == 0
        a1 = asyncio.ensure_future(pool.run(lambda: 1, client="a"))
        a2 = asyncio.ensure_future(pool.run(lambda: 2, client="a"))
        await settle()
        with pytest.raises(PoolBusy):  # a's queue is full...
            await pool.run(lambda: 3, client="a")
        b1 = asyncio.ensure_future(pool.run(lambda: 4, client="b"))  # ...b still gets in
        await settle()
        with pytest.raises(PoolBusy):  # and now the whole queue is full
            await pool.run(lambda: 5, client="c")
        assert pool.pending == 3 and pool.refused == 2
        gate.set()
        assert await asyncio.gather(busy, a1, a2, b1) == [True, 1, 2, 4]
        assert await pool.run(lambda: 6, client="a") == 6  # room again
    finally:
        gate.set()
        pool.close()


async def test_clients_are_served_round_robin() -> None:
    pool = HashPool(1)
    gate = threading.Event()
    order: list[str] = []
    try:
        first = asyncio.ensure_future(pool.run(lambda: gate.wait(WAIT), client="flood"))
        await settle()
        flood = [
            asyncio.ensure_future(pool.run(recorder(order, f"flood-{i}"), client="flood"))
            for i in range(5)
        ]
        await settle()
        user = asyncio.ensure_future(pool.run(recorder(order, "user"), client="user"))
        await settle()
        gate.set()
        await asyncio.gather(first, user, *flood)
        # The user came after five queued guesses, and waits for one of them only.
        assert order == ["flood-0", "user", "flood-1", "flood-2", "flood-3", "flood-4"]
    finally:
        gate.set()
        pool.close()


async def test_the_requester_of_the_context_is_the_client() -> None:
    pool = HashPool(1, max_pending_per_client=1)
    gate = threading.Event()
    try:
        busy = asyncio.ensure_future(pool.run(lambda: gate.wait(WAIT)))
        await settle()
        requester.set("10.0.0.1")
        queued = asyncio.ensure_future(pool.run(lambda: "first"))
        await settle()
        with pytest.raises(PoolBusy):
            await pool.run(lambda: "second")  # the same client: its one place is taken
        requester.set("10.0.0.2")
        other = asyncio.ensure_future(pool.run(lambda: "other"))
        gate.set()
        assert await asyncio.gather(busy, queued, other) == [True, "first", "other"]
    finally:
        gate.set()
        pool.close()


async def test_a_queued_job_whose_caller_left_never_starts() -> None:
    pool = HashPool(1)
    gate = threading.Event()
    ran: list[str] = []
    try:
        busy = asyncio.ensure_future(pool.run(lambda: gate.wait(WAIT), client="a"))
        await settle()
        gone = asyncio.ensure_future(pool.run(recorder(ran, "gone"), client="a"))
        kept = asyncio.ensure_future(pool.run(recorder(ran, "kept"), client="b"))
        await settle()
        assert pool.pending == 2
        gone.cancel()  # Envoy gave up on this request
        await settle()
        assert pool.pending == 1 and pool.dropped == 1
        gate.set()
        assert await kept == "kept"
        await busy
        assert ran == ["kept"] and pool.started == 2
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        gate.set()
        pool.close()


async def test_a_cancelled_running_job_finishes_and_frees_its_worker() -> None:
    pool = HashPool(1)
    gate = threading.Event()
    try:
        running = asyncio.ensure_future(pool.run(lambda: gate.wait(WAIT)))
        await settle()
        running.cancel()  # argon2 cannot be interrupted: it runs on, its result is dropped
        await settle()
        assert pool.running == 1
        after = asyncio.ensure_future(pool.run(lambda: "after"))
        await settle()
        assert not after.done() and pool.pending == 1  # still only one hash at a time
        gate.set()
        assert await after == "after"
        assert pool.running == 0
    finally:
        gate.set()
        pool.close()


async def test_close_drops_what_waits() -> None:
    pool = HashPool(1)
    gate = threading.Event()
    busy = asyncio.ensure_future(pool.run(lambda: gate.wait(WAIT)))
    await settle()
    queued = asyncio.ensure_future(pool.run(lambda: "never"))
    await settle()
    pool.close()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await busy is True


def test_bounds_and_default_size() -> None:
    assert DEFAULT_WORKERS == 1  # one 64 MiB run at a time
    with pytest.raises(ValueError):
        HashPool(0)
    with pytest.raises(ValueError):
        HashPool(1, max_pending_per_client=0)


async def test_drain_refuses_what_could_not_finish_in_time_and_lets_the_running_end() -> None:
    pool = HashPool(1)
    gate = threading.Event()
    try:
        running = asyncio.ensure_future(pool.run(lambda: gate.wait(WAIT), client="a"))
        await settle()
        queued = [asyncio.ensure_future(pool.run(lambda: "late", client=c)) for c in "ab"]
        await settle()
        # The process stops now: what waits is refused at once (answered 503 by the
        # service), and so is anything new; the running job is left to finish.
        pool.drain(asyncio.get_running_loop().time())
        await settle()
        for job in queued:
            with pytest.raises(PoolBusy, match="draining"):
                await job
        with pytest.raises(PoolBusy):
            await pool.run(lambda: "new")
        assert pool.pending == 0 and pool.running == 1
        gate.set()
        assert await running is True
    finally:
        gate.set()
        pool.close()
