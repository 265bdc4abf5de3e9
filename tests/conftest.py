"""Shared fixtures: the test stack (tests.stack) as pytest sees it.

Session-scoped servers (`workdir`, `redis_server`, `echo_server`, `idp`) start once;
`make_stack(...)` returns an Envoy + ext-authz stack, cached per parameter set for the
session (or `fresh=True`: a stack of its own, stopped at the end of the test).
`stack` is the default one.  When a test fails, the log tail of every live process
is added to its report.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, settings

from tests.clock_guard import pytest_make_collect_report  # noqa: F401  (a hook)
from tests.stack.demo import Stack, build_idp
from tests.stack.echo import EchoServer
from tests.stack.idp import IDP_DIR, IdP
from tests.stack.proc import free_port, live_processes, reserve_ports
from tests.stack.redis import RedisServer

# Property tests run on shared, busy machines, where how long one example takes says
# nothing about the code: no per-example deadline, and no "too slow" health check, for
# every @given in the suite (a test's own @settings still applies on top).
settings.register_profile("ext-authz", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ext-authz")

# Envoy ports known to the IdP (its redirect URIs must match exactly): one per stack
# that talks to the IdP.
ENVOY_PORT_POOL_SIZE = 16

Overrides = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]] | None

# Tests whose counts belong in every run's output, passed or not: the fault drills
# (ok / denied / 503 / errors / wrongful allows) and the fuzzers (requests sent).
COUNTED = ("tests/drills/", "test_fuzz_service.py")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reports = [
        r
        for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
        if r.when == "call" and any(part in r.nodeid for part in COUNTED)
    ]
    if not reports:
        return
    terminalreporter.section("drill and fuzz counts")
    for report in reports:
        out = "".join(text for name, text in report.sections if name == "Captured stdout call")
        terminalreporter.write_line(f"{report.nodeid}: {report.outcome}")
        for line in out.strip("\n").splitlines():
            terminalreporter.write_line("  " + line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for proc in live_processes():
            report.sections.append(
                (f"log tail: {proc.name} (pid {proc.pid}, {proc.log_path})", proc.tail(60))
            )
    return report


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the session's configs and process logs."""
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """A private redis-server shared by the session (use your own RedisServer to kill it)."""
    server = RedisServer(workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def echo_server(workdir: Path) -> Iterator[EchoServer]:
    server = EchoServer(workdir).start()
    yield server
    server.stop()


class _PortPool:
    def __init__(self, ports: list[int]) -> None:
        self.all = list(ports)
        self._free = list(ports)

    def take(self) -> int:
        if not self._free:
            raise RuntimeError(
                f"all {len(self.all)} Envoy ports known to the IdP are in use: raise "
                "ENVOY_PORT_POOL_SIZE in tests/conftest.py or use fewer cached IdP stacks"
            )
        return self._free.pop(0)

    def give_back(self, port: int) -> None:
        if port in self.all and port not in self._free:
            self._free.append(port)


@pytest.fixture(scope="session")
def envoy_port_pool() -> _PortPool:
    return _PortPool(reserve_ports(ENVOY_PORT_POOL_SIZE))


@pytest.fixture(scope="session")
def idp(workdir: Path, envoy_port_pool: _PortPool) -> Iterator[IdP]:
    """The demo IdP (tests.stack.demo), redirect URIs for every pooled Envoy port.

    Never skipped: without Node or tests/idp/node_modules the tests that need it fail.
    """
    if shutil.which("node") is None:
        pytest.fail("the test IdP needs Node.js 20+ (`node` is not on PATH)", pytrace=False)
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(
            f"{IDP_DIR / 'node_modules'} is missing: run `npm ci --prefix tests/idp`",
            pytrace=False,
        )
    server = build_idp(workdir, envoy_port_pool.all, shared_domain=True).start()
    yield server
    server.stop()


class MakeStack(Protocol):
    def __call__(
        self,
        *,
        config_overrides: Overrides = None,
        replicas: int = 1,
        store: str | RedisServer = "memory",
        idp: bool = True,
        context_app: str = "whoami",
        env: dict[str, str] | None = None,
        fresh: bool = False,
        front: str = "envoy",
    ) -> Stack: ...


class _StackCache:
    def __init__(self) -> None:
        self.stacks: dict[str, Stack] = {}
        self.count = 0

    def stop_all(self) -> None:
        for s in self.stacks.values():
            s.stop()
        self.stacks.clear()


@pytest.fixture(scope="session")
def _stack_cache() -> Iterator[_StackCache]:
    cache = _StackCache()
    yield cache
    cache.stop_all()


@pytest.fixture
def make_stack(
    request: pytest.FixtureRequest,
    workdir: Path,
    echo_server: EchoServer,
    envoy_port_pool: _PortPool,
    _stack_cache: _StackCache,
) -> Iterator[MakeStack]:
    """Factory: `make_stack(config_overrides=..., replicas=1|2, store="memory"|"redis"|
    RedisServer, idp=True, context_app="whoami", env=None, fresh=False, front="envoy")
    -> Stack`.

    - config_overrides: a dict merged into the demo config (tests.stack.demo.merge_config:
      `{"applications": {"whoami": {...}}}` patches one application), or a function
      config -> config.
    - store: "memory" (each replica its own memory), "redis" (the session redis_server,
      a key prefix of its own per stack), or a RedisServer you started (implies fresh).
    - idp: include application `app` (OIDC at the session IdP); needs Node.
    - fresh: a stack of its own, stopped when the test ends (for tests that kill or
      restart parts of it). Otherwise stacks are cached per parameters for the session.
    - front: the proxy in front (tests.stack.demo.FRONTS): "envoy" (gRPC), "envoy-http",
      "nginx", "nginx-api" or "caddy" (forward auth, SPEC §10).
    """
    own: list[Stack] = []

    def factory(
        *,
        config_overrides: Overrides = None,
        replicas: int = 1,
        store: str | RedisServer = "memory",
        idp: bool = True,
        context_app: str = "whoami",
        env: dict[str, str] | None = None,
        fresh: bool = False,
        front: str = "envoy",
    ) -> Stack:
        if callable(config_overrides) or isinstance(store, RedisServer):
            fresh = True
        key = json.dumps(
            [config_overrides, replicas, store, idp, context_app, env, front],
            sort_keys=True,
            default=str,
        )
        if not fresh and key in _stack_cache.stacks:
            return _stack_cache.stacks[key]

        idp_server: IdP | None = request.getfixturevalue("idp") if idp else None
        redis: RedisServer | None
        if isinstance(store, RedisServer):
            redis = store
        elif store == "redis":
            redis = request.getfixturevalue("redis_server")
        elif store == "memory":
            redis = None
        else:
            raise ValueError(f"store: 'memory', 'redis' or a RedisServer, not {store!r}")
        _stack_cache.count += 1
        n = _stack_cache.count
        port = envoy_port_pool.take() if idp else free_port()
        stack = Stack(
            workdir=workdir / f"stack-{n}",
            echo=echo_server,
            envoy_port=port,
            idp=idp_server,
            store_url=redis.url if redis else "memory://",
            redis=redis,
            replicas=replicas,
            config_overrides=config_overrides,
            context_app=context_app,
            key_prefix=f"ext-authz-{n}:",
            env=env,
            name=f"stack-{n}",
            front=front,
        )
        try:
            stack.start()
        except BaseException:
            envoy_port_pool.give_back(port)
            raise
        if fresh:
            own.append(stack)
        else:
            _stack_cache.stacks[key] = stack
        return stack

    yield factory
    for s in own:
        s.stop()
        envoy_port_pool.give_back(s.port)


@pytest.fixture
def stack(make_stack: MakeStack) -> Stack:
    """The default stack: demo config, one replica, memory store, with the IdP."""
    return make_stack()
