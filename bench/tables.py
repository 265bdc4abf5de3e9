"""The application table at scale (SPEC §11 goals): `python -m bench.tables`.

In-process, on the real service objects (CheckService, TableBuilder, MemoryStore):

- `check`: CPU per cached-session Check (`check_now`, the path a kept session takes on
  both transports) through a table of 1 application and of N, and their ratio
  (goal <= 1.1x);
- `refresh`: CPU to build and swap a table of N applications from their settings
  mappings (validation, OIDC clients, verifiers, routing), all new and with one
  changed (goal <= 1 s for N = 1,000);
- `during`: p50/p99 of cached-session Checks while the table is rebuilt with one
  provider changed every second (the `session-refreshing` goal: p99 within 2x of the
  same Checks with no refresh);
- `rss`: the resident memory of a real `ext-authz serve` worker whose YAML holds N
  applications (goal <= 100 MB), read from /proc after it is ready.

Numbers depend on the machine; run it quiet, and compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from ext_authz.adapters.memory_store import MemoryStore
from ext_authz.app import TableBuilder
from ext_authz.config import Application
from ext_authz.core.model import AuthRequest, Identity
from ext_authz.hash_pool import HashPool
from ext_authz.metrics import Metrics
from ext_authz.outpost import Composer
from ext_authz.service import CheckService
from ext_authz.sessions import CredentialCache, LoginStateRepository, SessionRepository
from ext_authz.table import TableHolder
from ext_authz.throttle import Throttle

SECRET = b"bench-tables-secret-0123456789abcdef-01234"
ALICE = Identity(
    sub="alice",
    preferred_username="alice",
    email="alice@example.com",
    name="Alice Example",
    groups=("admins", "staff"),
    attributes={"app_username": "admin", "app_password": "s3cret"},
)


def provider_mapping(i: int, *, skip: str = "^/public/") -> dict[str, Any]:
    """Application settings as a proxy provider maps them (SPEC §11), the i-th."""
    return {
        "name": f"app-{i:04d}",
        "external_host": f"https://app-{i:04d}.example.com",
        "skip_path_regex": [skip, "^/health$"],
        "session_lifetime": 86400,
        "intercept_header_auth": True,
        "oidc": {
            "issuer": "https://authentik.example.com/application/o/app/",
            "client_id": f"client-{i:04d}",
            "client_secret": f"secret-{i:04d}-0123456789",
            "scopes": ["openid", "profile", "email", "ak_proxy"],
        },
        "receive": {"basic": {"verify": "authentik"}, "bearer": {"verify": "auto"}},
        "send": {
            "basic": {
                "enabled": i % 2 == 0,
                "username_attribute": "app_username",
                "password_attribute": "app_password",
            }
        },
    }


def _service(holder: TableHolder, store: MemoryStore) -> CheckService:
    metrics = Metrics(CollectorRegistry())
    return CheckService(
        holder,
        sessions=SessionRepository(store, secret=SECRET, local_ttl=60),
        credentials=CredentialCache(store, secret=SECRET, local_ttl=60),
        logins=LoginStateRepository(store, secret=SECRET),
        metrics=metrics,
        throttle=Throttle(store, secret=SECRET, metrics=metrics),
    )


def _request(app: Application, cookie: str) -> AuthRequest:
    return AuthRequest(
        has_http=True,
        method="GET",
        host=app.host_name,
        path="/some/page",
        query="q=1",
        scheme="https",
        headers={
            "accept": "text/html",
            "cookie": f"theme=dark; {app.cookie_name}={cookie}",
            "user-agent": "Mozilla/5.0",
        },
        request_id="bench",
    )


async def _world(n: int) -> tuple[CheckService, TableBuilder, Composer, AuthRequest, Any]:
    http = httpx.AsyncClient()
    builder = TableBuilder(http, Metrics(CollectorRegistry()), secret=SECRET, hash_pool=HashPool())
    composer = Composer((), {})
    apps, _ = composer([provider_mapping(i) for i in range(n)])
    holder = TableHolder(builder.build(apps, None))
    store = MemoryStore("b:")
    service = _service(holder, store)
    target = apps[n // 2]
    cookie = await SessionRepository(store, secret=SECRET, local_ttl=60).create(
        target.name, ALICE, time.time() + 3600
    )
    request = _request(target, cookie)
    return service, builder, composer, request, http


def _check_cost(service: CheckService, request: AuthRequest, iterations: int) -> float:
    for _ in range(500):
        service.check_now(request)
    answer = service.check_now(request)
    assert answer is not None and type(answer).__name__ == "Allow", answer
    started = time.process_time()
    for _ in range(iterations):
        service.check_now(request)
    return (time.process_time() - started) / iterations * 1e6


async def check_rows(n: int, iterations: int) -> dict[str, float]:
    rows: dict[str, float] = {}
    for size in (1, n):
        service, *_, request, http = await _world(size)
        # The service's own session lookup fills its local cache on the awaited path.
        await service.check(request)
        rows[f"check_us_{size}"] = _check_cost(service, request, iterations)
        await http.aclose()
    rows["check_ratio"] = rows[f"check_us_{n}"] / rows["check_us_1"]
    return rows


async def refresh_rows(n: int) -> dict[str, float]:
    service, builder, composer, _, http = await _world(1)
    mappings = [provider_mapping(i) for i in range(n)]
    started = time.process_time()
    table = builder.build(Composer((), {})(mappings)[0], None)
    service.tables.swap(table)
    full = time.process_time() - started
    builder.build(composer(mappings)[0], None)  # warm the composer's cache
    mappings[n // 3] = provider_mapping(n // 3, skip="^/changed/")
    started = time.process_time()
    service.tables.swap(builder.build(composer(mappings)[0], None))
    one = time.process_time() - started
    await http.aclose()
    return {"refresh_all_s": full, "refresh_one_changed_s": one}


async def during_rows(n: int, seconds: float) -> dict[str, float]:
    """Latency of Checks with no refresh, then with a one-provider change every second."""
    service, builder, composer, request, http = await _world(n)
    await service.check(request)
    mappings = [provider_mapping(i) for i in range(n)]

    async def sample(duration: float) -> list[float]:
        latencies: list[float] = []
        end = time.monotonic() + duration
        while time.monotonic() < end:
            t0 = time.perf_counter()
            answer = service.check_now(request) or await service.check(request)
            latencies.append(time.perf_counter() - t0)
            assert type(answer).__name__ == "Allow"
            await asyncio.sleep(0)  # the loop runs other tasks between Checks, as a server
        return latencies

    async def refresher(stop: asyncio.Event) -> int:
        count = 0
        while not stop.is_set():
            await asyncio.sleep(1.0)
            count += 1
            i = count % n
            mappings[i] = provider_mapping(i, skip=f"^/changed-{count}/")
            service.tables.swap(builder.build(composer(mappings)[0], None))
        return count

    quiet = await sample(seconds)
    stop = asyncio.Event()
    task = asyncio.ensure_future(refresher(stop))
    busy = await sample(seconds)
    stop.set()
    refreshes = await task
    await http.aclose()

    def p(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] * 1e6

    return {
        "quiet_p50_us": p(quiet, 0.5),
        "quiet_p99_us": p(quiet, 0.99),
        "refreshing_p50_us": p(busy, 0.5),
        "refreshing_p99_us": p(busy, 0.99),
        "refreshing_p99_ratio": p(busy, 0.99) / p(quiet, 0.99),
        "refreshes": refreshes,
    }


def rss_row(n: int) -> dict[str, float]:
    """VmRSS of a real `ext-authz serve` (one worker) with N applications in its YAML."""
    from tests.stack.extauthz import ExtAuthz

    config = {
        "secret": SECRET.decode(),
        "server": {"log_level": "warning"},
        "applications": [provider_mapping(i) for i in range(n)],
    }
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        replica = ExtAuthz(config, Path(tmp), name="tables").start()
        try:
            pid = replica.process.pid
            status = Path(f"/proc/{pid}/status").read_text()
            kb = next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")
            )
        finally:
            replica.stop()
    return {f"rss_mb_{n}": kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--applications", type=int, default=1000)
    parser.add_argument("-i", "--iterations", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="each `during` phase")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument(
        "--only", action="append", choices=("check", "refresh", "during", "rss"), default=[]
    )
    args = parser.parse_args()
    only = set(args.only or ("check", "refresh", "during", "rss"))
    rows: dict[str, float] = {}
    if "check" in only:
        rows |= asyncio.run(check_rows(args.applications, args.iterations))
    if "refresh" in only:
        rows |= asyncio.run(refresh_rows(args.applications))
    if "during" in only:
        rows |= asyncio.run(during_rows(args.applications, args.seconds))
    if "rss" in only:
        rows |= rss_row(args.applications)
    for key, value in rows.items():
        print(f"{key:24s} {value:12.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
