"""Running the service: the grpc.aio server, the HTTP port, workers, signals.

    serve(settings)
     +-- workers == 1: one process serves gRPC (Check + Health) and HTTP
     +-- workers  > 1: a supervisor serves HTTP (metrics summed over workers) and
                       keeps N worker processes on one gRPC port (SO_REUSEPORT),
                       restarting a crashed one and forwarding SIGTERM.

SIGTERM/SIGINT: health turns NOT_SERVING, in-flight checks finish within
`grace_period`, the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ext_authz._proto import AUTHORIZATION_SERVICE_NAME, add_AuthorizationServicer_to_server
from ext_authz.adapters.grpc_servicer import CheckServicer
from ext_authz.logs import configure_logging, event
from ext_authz.metrics import Metrics, render_metrics

if TYPE_CHECKING:
    from ext_authz.config import Settings

__all__ = ["serve"]

EXIT_BIND_FAILED = 3
Readiness = Callable[[], Awaitable[dict[str, str]]]


def serve(settings: Settings) -> int:
    configure_logging(settings.server.log_level, settings.server.log_format)
    if settings.server.workers > 1:
        return _supervise(settings)
    return asyncio.run(_worker(settings, index=0, reuse_port=False, with_http=True))


# --- one worker ----------------------------------------------------------------------


async def _worker(settings: Settings, *, index: int, reuse_port: bool, with_http: bool) -> int:
    from ext_authz.app import build

    metrics = Metrics()
    components = build(settings, metrics)
    await components.start()

    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
    )
    add_AuthorizationServicer_to_server(  # type: ignore[no-untyped-call]
        CheckServicer(components.service.check), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(settings.server.listen)
    except RuntimeError:
        port = 0
    if not port:
        event(logging.ERROR, "cannot listen", grpc=settings.server.listen, worker=index)
        await components.close()
        return EXIT_BIND_FAILED
    await server.start()
    for name in ("", AUTHORIZATION_SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    http_server = None
    if with_http and settings.server.http_listen:
        http_server = await _start_http(settings.server.http_listen, components.readiness)
        if http_server is None:
            await server.stop(0)
            await components.close()
            return EXIT_BIND_FAILED

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    grpc_address = settings.server.listen.rpartition(":")[0] + f":{port}"
    event(
        logging.INFO,
        "ready",
        grpc=grpc_address,
        http=settings.server.http_listen if with_http else "",
        worker=index,
        pid=os.getpid(),
    )
    await stop.wait()

    grace = settings.server.grace_period
    event(logging.INFO, "draining", worker=index, grace_period=grace)
    await health_servicer.enter_graceful_shutdown()
    # Keep answering for a moment after turning NOT_SERVING, so Envoy's health checks
    # (1 s apart in our configs) move traffic away before connections are closed.
    notice = min(1.0, grace / 4)
    await asyncio.sleep(notice)
    await server.stop(grace - notice)
    if http_server is not None:
        http_server.close()
        await http_server.wait_closed()
    await components.close()
    event(logging.INFO, "stopped", worker=index)
    return 0


def _worker_entry(settings: Settings, index: int) -> None:
    """Entry point of a spawned worker process."""
    configure_logging(settings.server.log_level, settings.server.log_format)
    raise SystemExit(asyncio.run(_worker(settings, index=index, reuse_port=True, with_http=False)))


# --- the supervisor ------------------------------------------------------------------


def _supervise(settings: Settings) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="ext-authz-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return asyncio.run(_supervisor(settings, metrics_dir))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _supervisor(settings: Settings, metrics_dir: str) -> int:
    from prometheus_client import multiprocess

    from ext_authz.app import build

    ctx = multiprocessing.get_context("spawn")
    workers: dict[int, Any] = {}
    started_at: dict[int, float] = {}

    def start(index: int) -> None:
        proc = ctx.Process(
            target=_worker_entry, args=(settings, index), name=f"worker-{index}", daemon=False
        )
        proc.start()
        workers[index] = proc
        started_at[index] = time.monotonic()

    for i in range(settings.server.workers):
        start(i)

    # The supervisor's readiness probe: its own store connection and discovery cache.
    probe = build(settings, Metrics(registry=_scratch_registry()))
    http_server = None
    if settings.server.http_listen:
        http_server = await _start_http(settings.server.http_listen, probe.readiness)
        if http_server is None:
            _terminate_all(workers, settings.server.grace_period)
            return EXIT_BIND_FAILED

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    event(
        logging.INFO,
        "supervisor ready",
        grpc=settings.server.listen,
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
    if http_server is not None:
        http_server.close()
        await http_server.wait_closed()
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


# --- the HTTP port: /healthz, /readyz, /metrics -------------------------------------


async def _start_http(listen: str, readiness: Readiness) -> asyncio.Server | None:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = line.decode("latin-1").split()
            while True:  # drain the request headers
                header = await asyncio.wait_for(reader.readline(), timeout=5)
                if header in (b"\r\n", b"\n", b""):
                    break
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            status, ctype, body = await _http_route(path, readiness)
            head = (
                f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        return await asyncio.start_server(handle, host, int(port), reuse_address=True)
    except OSError as exc:
        event(logging.ERROR, "cannot listen", http=listen, error=str(exc))
        return None


async def _http_route(path: str, readiness: Readiness) -> tuple[str, str, bytes]:
    if path == "/healthz":
        return "200 OK", "text/plain", b"ok\n"
    if path == "/readyz":
        problems = await readiness()
        if problems:
            body = json.dumps({"ready": False, "problems": problems}).encode()
            return "503 Service Unavailable", "application/json", body
        return "200 OK", "application/json", b'{"ready": true}'
    if path == "/metrics":
        return "200 OK", "text/plain; version=0.0.4; charset=utf-8", render_metrics()
    return "404 Not Found", "text/plain", b"not found\n"
