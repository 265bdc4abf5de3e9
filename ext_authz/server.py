"""Running the service: listeners, workers, signals.

    serve(settings)
     +-- workers == 1: one process runs every listener
     +-- workers  > 1: a supervisor serves the operations port (metrics summed over
                       workers) and keeps N worker processes, each with the gRPC and
                       forward-auth listeners on shared ports (SO_REUSEPORT),
                       restarting a crashed one and forwarding SIGTERM.

A worker's listeners, one per transport, are started and drained alike (`Listener`):

    GrpcListener   server.listen               Check + grpc.health.v1.Health
    HttpListener   server.forward_auth_listen  forward auth (adapters/forward_auth.py)
    HttpListener   server.http_listen          /healthz, /readyz, /metrics (operations.py)

A third transport is one more adapter and one more listener here.

SIGTERM/SIGINT: every listener stops advertising (health NOT_SERVING; HTTP answers
`connection: close`), keeps answering for a moment, then stops accepting; in-flight
checks finish within `grace_period`; the process exits 0.

SIGHUP: the config file is read again and a new application table (applications and
directory) replaces the current one at once (SPEC §11); the supervisor forwards it to
every worker. A file that no longer validates changes nothing (a log line says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ext_authz._proto import AUTHORIZATION_SERVICE_NAME
from ext_authz.adapters.forward_auth import ForwardAuth, TrustedProxies
from ext_authz.adapters.grpc_servicer import CheckLater, CheckNow, CheckServicer, add_check_service
from ext_authz.adapters.http_server import Handler, HttpServer, split_listen
from ext_authz.errors import ConfigError
from ext_authz.logs import configure_logging, event
from ext_authz.metrics import Metrics
from ext_authz.operations import OperationsHandler

if TYPE_CHECKING:
    from ext_authz.app import Components
    from ext_authz.config import Settings

__all__ = ["serve"]

EXIT_BIND_FAILED = 3


# Reads the settings again (SIGHUP); picklable, as spawned workers get it too.
Reload = Callable[[], "Settings"]


def serve(settings: Settings, reload: Reload | None = None) -> int:
    configure_logging(settings.server.log_level, settings.server.log_format)
    if settings.server.workers > 1:
        return _supervise(settings, reload)
    return asyncio.run(_worker(settings, index=0, reuse_port=False, with_http=True, reload=reload))


def _on_hangup(components: Components, reload: Reload | None, index: int) -> None:
    """SIGHUP: a new application table from the re-read config, or none at all."""
    if reload is None:
        event(logging.WARNING, "reload: nothing to read again", worker=index)
        return
    try:
        settings = reload()
    except ConfigError as exc:
        event(logging.ERROR, "reload refused: config error", worker=index, errors=exc.errors)
        return
    except OSError as exc:
        event(logging.ERROR, "reload refused: config unreadable", worker=index, error=str(exc))
        return
    table = components.reload(settings)
    event(
        logging.INFO,
        "applications reloaded",
        worker=index,
        applications=len(table),
        generation=table.generation,
    )


# --- listeners: one per transport, started and drained alike ---------------------------


class ListenError(Exception):
    """A listener could not bind its address (the message names it)."""


class Listener(Protocol):
    """One port of a worker. `start` binds and serves, returning the bound address;
    `begin_drain` stops advertising (health NOT_SERVING, `connection: close`) while
    still answering; `drain` stops accepting, lets in-flight work finish within
    `grace` seconds, and closes."""

    name: str

    async def start(self) -> str: ...

    async def begin_drain(self) -> None: ...

    async def drain(self, grace: float) -> None: ...


class GrpcListener:
    """`envoy.service.auth.v3.Authorization/Check` and `grpc.health.v1.Health`."""

    name = "grpc"

    def __init__(
        self, listen: str, check: CheckLater, check_now: CheckNow | None = None, *, reuse_port: bool
    ) -> None:
        self._listen = listen
        self._server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ]
        )
        add_check_service(self._server, CheckServicer(check, check_now))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)

    async def start(self) -> str:
        try:
            port = self._server.add_insecure_port(self._listen)
        except RuntimeError:
            port = 0
        if not port:
            raise ListenError(self._listen)
        await self._server.start()
        for service in ("", AUTHORIZATION_SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self._listen.startswith("unix"):
            return self._listen
        return self._listen.rpartition(":")[0] + f":{port}"

    async def begin_drain(self) -> None:
        await self._health.enter_graceful_shutdown()

    async def drain(self, grace: float) -> None:
        await self._server.stop(grace)


class HttpListener:
    """An HTTP/1.1 port (forward auth, or the operations port) on `HttpServer`."""

    def __init__(self, name: str, listen: str, handler: Handler, *, reuse_port: bool) -> None:
        self.name = name
        self._listen = listen
        self._handler = handler
        self._reuse_port = reuse_port
        self._server: HttpServer | None = None

    async def start(self) -> str:
        host, port = split_listen(self._listen)
        self._server = HttpServer(self._handler, host, port, reuse_port=self._reuse_port)
        try:
            bound = await self._server.start()
        except OSError as exc:
            raise ListenError(f"{self._listen} ({exc.strerror or exc})") from None
        return self._listen.rpartition(":")[0] + f":{bound}"

    async def begin_drain(self) -> None:
        if self._server is not None:
            self._server.begin_drain()

    async def drain(self, grace: float) -> None:
        if self._server is not None:
            await self._server.drain(grace)


async def _start_all(listeners: list[Listener], index: int) -> dict[str, str] | None:
    """Start every listener; on a failure drain the started ones and return None."""
    addresses: dict[str, str] = {}
    for listener in listeners:
        try:
            addresses[listener.name] = await listener.start()
        except ListenError as exc:
            event(
                logging.ERROR,
                "cannot listen",
                listener=listener.name,
                address=str(exc),
                worker=index,
            )
            for started in listeners:
                if started.name in addresses:
                    await started.drain(0)
            return None
    return addresses


async def _drain_all(listeners: list[Listener], grace: float) -> None:
    """Stop advertising, keep answering for a moment, then drain every listener."""
    for listener in listeners:
        await listener.begin_drain()
    # Keep answering for a moment after turning NOT_SERVING, so Envoy's health checks
    # (1 s apart in our configs) move traffic away before connections are closed.
    notice = min(1.0, grace / 4)
    await asyncio.sleep(notice)
    await asyncio.gather(*(listener.drain(grace - notice) for listener in listeners))


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


# --- one worker ----------------------------------------------------------------------


async def _worker(
    settings: Settings,
    *,
    index: int,
    reuse_port: bool,
    with_http: bool,
    reload: Reload | None = None,
) -> int:
    from ext_authz.app import build

    metrics = Metrics()
    components = build(settings, metrics)
    await components.start()
    server = settings.server
    service = components.service

    # Signals first: a SIGTERM while the listeners start is a drain, not a kill.
    stop = _stop_event()
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, _on_hangup, components, reload, index
    )
    listeners: list[Listener] = []
    if server.forward_auth_listen:
        forward_auth = ForwardAuth(
            service.check,
            service.check_now,
            TrustedProxies(server.trusted_networks),
            refused=lambda reason: metrics.count_check("-", reason, "-", "http"),
        )
        listeners.append(
            HttpListener(
                "forward_auth", server.forward_auth_listen, forward_auth, reuse_port=reuse_port
            )
        )
    if with_http and server.http_listen:
        operations = OperationsHandler(components.readiness)
        listeners.append(HttpListener("http", server.http_listen, operations, reuse_port=False))
    # gRPC last: its health turns SERVING when it starts, which must mean every port
    # of this worker is answering.
    listeners.append(
        GrpcListener(server.listen, service.check, service.check_now, reuse_port=reuse_port)
    )

    addresses = await _start_all(listeners, index)
    if addresses is None:
        await components.close()
        return EXIT_BIND_FAILED
    event(
        logging.INFO,
        "ready",
        grpc=addresses["grpc"],
        forward_auth=addresses.get("forward_auth", ""),
        http=addresses.get("http", ""),
        worker=index,
        pid=os.getpid(),
    )
    await stop.wait()

    event(logging.INFO, "draining", worker=index, grace_period=server.grace_period)
    components.begin_drain(server.grace_period)
    await _drain_all(listeners, server.grace_period)
    await components.close()
    event(logging.INFO, "stopped", worker=index)
    return 0


def _worker_entry(settings: Settings, index: int, reload: Reload | None = None) -> None:
    """Entry point of a spawned worker process."""
    configure_logging(settings.server.log_level, settings.server.log_format)
    raise SystemExit(
        asyncio.run(_worker(settings, index=index, reuse_port=True, with_http=False, reload=reload))
    )


# --- the supervisor ------------------------------------------------------------------


def _supervise(settings: Settings, reload: Reload | None = None) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="ext-authz-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return asyncio.run(_supervisor(settings, metrics_dir, reload))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _supervisor(settings: Settings, metrics_dir: str, reload: Reload | None = None) -> int:
    from prometheus_client import multiprocess

    from ext_authz.app import build

    ctx = multiprocessing.get_context("spawn")
    workers: dict[int, Any] = {}
    started_at: dict[int, float] = {}

    def start(index: int) -> None:
        proc = ctx.Process(
            target=_worker_entry,
            args=(settings, index, reload),
            name=f"worker-{index}",
            daemon=False,
        )
        proc.start()
        workers[index] = proc
        started_at[index] = time.monotonic()

    for i in range(settings.server.workers):
        start(i)

    # The supervisor's readiness probe: its own store connection and discovery cache.
    probe = build(settings, Metrics(registry=_scratch_registry()))
    if settings.authentik is not None:
        # Its /readyz says whether the providers are loaded: it follows authentik as
        # the workers do (one more instance in authentik's list of this outpost).
        await probe.start()
    listeners: list[Listener] = []
    if settings.server.http_listen:
        operations = OperationsHandler(probe.readiness)
        listeners.append(
            HttpListener("http", settings.server.http_listen, operations, reuse_port=False)
        )
    if await _start_all(listeners, -1) is None:
        _terminate_all(workers, settings.server.grace_period)
        await probe.close()
        return EXIT_BIND_FAILED

    stop = _stop_event()
    loop = asyncio.get_running_loop()

    def hangup() -> None:
        # Each worker reads the file itself; the probe follows so /readyz names the
        # applications the workers now serve.
        for proc in workers.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGHUP)
        _on_hangup(probe, reload, -1)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    event(
        logging.INFO,
        "supervisor ready",
        grpc=settings.server.listen,
        forward_auth=settings.server.forward_auth_listen,
        http=settings.server.http_listen,
        workers=settings.server.workers,
        pid=os.getpid(),
    )

    exit_code = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        if stop.is_set():
            break
        for index, proc in list(workers.items()):
            if proc.is_alive():
                continue
            code = proc.exitcode
            multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
            if code == EXIT_BIND_FAILED:
                event(logging.ERROR, "worker cannot listen; giving up", worker=index)
                exit_code = 1
                stop.set()
                break
            quick = time.monotonic() - started_at[index] < 2
            event(logging.ERROR, "worker exited; restarting", worker=index, exit_code=code)
            if quick:
                await asyncio.sleep(1)  # a crash loop must not spin the CPU
            start(index)

    event(logging.INFO, "draining", workers=len(workers))
    await loop.run_in_executor(None, _terminate_all, workers, settings.server.grace_period)
    for listener in listeners:
        await listener.drain(1.0)
    await probe.close()
    event(logging.INFO, "stopped")
    return exit_code


def _scratch_registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def _terminate_all(workers: dict[int, Any], grace: float) -> None:
    for proc in workers.values():
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 2
    for proc in workers.values():
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1)
