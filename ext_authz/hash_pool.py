"""The bounded, fair thread pool that runs password hashing (SPEC §5 "Cost and abuse").

argon2id is expensive on purpose: every run of the configured hashes takes 64 MiB and
tens to hundreds of milliseconds of CPU. On asyncio's default executor (up to 32
threads, an unbounded queue) a flood of wrong passwords ran six hashes at once and
queued the rest, so memory rose by hundreds of MB and a real user's login waited
behind every guess, past Envoy's timeout; and each queued run still ran after its
caller had gone. Here instead:

- **Bounded work**: `workers` threads, so at most `workers` hashes, and their memory,
  exist at any time. The default is one: a run with p=4 lanes already keeps four
  cores busy, and one 64 MiB run at a time keeps a flood's memory under the process's
  own idle size (issue 11: RSS within 2x of idle). More throughput is more replicas.
- **Bounded queue**: at most `max_pending` jobs wait, and at most
  `max_pending_per_client` of one client. A job beyond that is refused at once with
  `PoolBusy` (the service answers 503 with Retry-After) rather than queued behind
  work that could not finish before Envoy gives up.
- **Fair**: waiting jobs are kept per client and served round-robin, so a flood from
  one client address delays another client's login by about one hash per worker, not
  by the length of the flood.
- **No work for nobody**: a job whose caller stopped waiting (its await was cancelled:
  the client or Envoy gave up, or the service's deadline passed) is taken out of the
  queue and never starts. A job already running cannot be interrupted (argon2 is C);
  it finishes, and its result is dropped.
- **Drained in time**: on SIGTERM (`drain`), jobs that could not finish before the
  grace period ends are refused (PoolBusy) shortly before it does, so their requests
  get a deliberate 503 instead of being cut off with the connection.

The client is the one `requester` names in the caller's context (the service sets it
to the request's client address before it starts a verification), so verifiers keep
their plain `(username, password)` signatures.

Scheduling runs on the event loop thread only; the threads just run the hash.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["DEFAULT_WORKERS", "HashPool", "PoolBusy", "requester"]

T = TypeVar("T")

requester: ContextVar[str] = ContextVar("ext_authz_hash_requester", default="")
"""The client (address) on whose behalf hashing is asked for: the fairness key."""


class PoolBusy(Exception):
    """The pool's queue is full (overall or for this client): try again later."""


DEFAULT_WORKERS = 1


@dataclass(eq=False)
class _Job(Generic[T]):
    fn: Callable[[], T]
    future: asyncio.Future[T]
    client: str
    state: str = field(default="queued")  # queued -> running -> done, or queued -> dropped
    started_at: float = 0.0


class HashPool:
    def __init__(
        self,
        workers: int = DEFAULT_WORKERS,
        *,
        max_pending: int = 64,
        max_pending_per_client: int = 8,
    ) -> None:
        self.workers = workers
        if self.workers < 1 or max_pending < 1 or max_pending_per_client < 1:
            raise ValueError("workers and queue bounds must be >= 1")
        self.max_pending = max_pending
        self.max_pending_per_client = max_pending_per_client
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="ext-authz-hash")
        self._queues: OrderedDict[str, deque[_Job[Any]]] = OrderedDict()
        self._pending = 0
        self._running = 0
        self._run_time = 0.0  # a moving average of how long a job runs (seconds)
        self._closing_at: float | None = None  # loop time after which nothing is queued
        self.started = 0  # jobs handed to a thread (for tests and metrics)
        self.refused = 0  # jobs refused with PoolBusy
        self.dropped = 0  # queued jobs whose caller left before they started

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def running(self) -> int:
        return self._running

    async def run(self, fn: Callable[[], T], *, client: str | None = None) -> T:
        """`fn()` in a pool thread, once a worker is free and it is this client's turn.

        Raises PoolBusy when the queue is full; cancelling the await before the job
        started means it never starts."""
        loop = asyncio.get_running_loop()
        key = requester.get() if client is None else client
        queue = self._queues.get(key)
        closing = self._closing_at is not None and loop.time() >= self._closing_at
        if (
            closing
            or self._pending >= self.max_pending
            or (queue is not None and len(queue) >= self.max_pending_per_client)
        ):
            self.refused += 1
            raise PoolBusy("hashing pool busy")
        job: _Job[T] = _Job(fn, loop.create_future(), key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(job)
        self._pending += 1
        job.future.add_done_callback(lambda _: self._withdraw(job))
        self._dispatch(loop)
        return await job.future

    def drain(self, deadline: float) -> None:
        """The process stops at `deadline` (loop time). Shortly before, jobs still queued
        are refused, and so is new work, leaving the running ones time to finish."""
        loop = asyncio.get_running_loop()
        self._closing_at = deadline - max(0.25, 2 * self._run_time)
        loop.call_at(self._closing_at, self._refuse_queued)

    def _refuse_queued(self) -> None:
        for queue in self._queues.values():
            for job in queue:
                job.state = "dropped"
                if not job.future.done():
                    self.refused += 1
                    job.future.set_exception(PoolBusy("draining"))
        self._queues.clear()
        self._pending = 0

    def close(self) -> None:
        """Stop taking work; queued jobs are dropped, running ones finish in the background."""
        for queue in self._queues.values():
            for job in queue:
                job.state = "dropped"
                job.future.cancel()
        self._queues.clear()
        self._pending = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- scheduling (event loop thread) ----------------------------------------------

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._running < self.workers and self._queues:
            client, queue = next(iter(self._queues.items()))
            job = queue.popleft()
            self._pending -= 1
            if queue:
                self._queues.move_to_end(client)  # round-robin: the next client's turn
            else:
                del self._queues[client]
            if job.future.done():  # cancelled, its withdrawal not run yet
                job.state = "dropped"
                self.dropped += 1
                continue
            job.state = "running"
            job.started_at = loop.time()
            self._running += 1
            self.started += 1
            done = loop.run_in_executor(self._executor, job.fn)
            done.add_done_callback(functools.partial(self._finished, job, loop=loop))

    def _finished(
        self, job: _Job[Any], result: asyncio.Future[Any], *, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._running -= 1
        job.state = "done"
        took = loop.time() - job.started_at
        self._run_time = took if not self._run_time else 0.7 * self._run_time + 0.3 * took
        if not job.future.done():
            if result.cancelled():
                job.future.cancel()
            elif (exc := result.exception()) is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result.result())
        elif not result.cancelled():
            result.exception()  # retrieved: nobody waits for it any more
        self._dispatch(loop)

    def _withdraw(self, job: _Job[Any]) -> None:
        """The caller's future is done; if the job never started, it never will."""
        if job.state != "queued":
            return
        job.state = "dropped"
        queue = self._queues.get(job.client)
        if queue is not None:
            queue.remove(job)
            self._pending -= 1
            self.dropped += 1
            if not queue:
                del self._queues[job.client]
