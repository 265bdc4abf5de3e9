"""Where a Check's CPU goes inside the gRPC server, and which server shape costs least:
`python -m bench.grpc_cost`.

No Envoy: grpc clients in this process call a gRPC server in a child process, and the
child's CPU (from /proc) is divided by the calls. Four servicers tell the parts apart:

- floor:      answers an empty OK (the allow-all servicer);
- canned:     answers our full CheckResponse for a cached session, computed once;
- work-empty: does all our work for the cached session, answers an empty OK;
- ours:       the real servicer.

- ours-twice: the real servicer's work twice per Check, answering the second.

canned ~ floor means the response size costs nothing; work-empty ~ ours means the
cost is our work as it runs inside the server, however small it is in a tight loop
(`python -m bench.micro`). ours-twice - ours is what the same work costs when it runs
again at once (warm): on these VMs the first pass of a Check costs several times its
tight-loop cost and the second almost nothing (bench/README.md, "Server shapes").

Server shapes (`--shapes`, issue 13): `aio` (grpc.aio on asyncio's loop, what
ext-authz runs), `aio-uvloop` (grpc.aio on uvloop), `sync` (grpcio's thread-pool
server, 8 threads, the Check answered by `check_now`, a miss run on an event loop in a
thread of its own). Each is measured with one call at a time (`@c1`: no batching)
and with `--concurrency` client threads.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MODES = ("floor", "canned", "work-empty", "ours", "ours-twice")
SHAPES = ("aio", "aio-uvloop", "sync")


async def _components(cookie_file: Path) -> tuple[Any, str]:
    from argon2 import PasswordHasher
    from prometheus_client import CollectorRegistry

    from bench.micro import ALICE, settings
    from ext_authz.app import build
    from ext_authz.metrics import Metrics

    config = settings(PasswordHasher(time_cost=1, memory_cost=1024).hash("pw"))
    components = build(config, Metrics(CollectorRegistry()))
    assert components.sessions is not None
    value = await components.sessions.create("app", ALICE, time.time() + 3600)
    cookie = f"theme=dark; {config.applications[0].cookie_name}={value}"
    cookie_file.write_text(cookie)
    return components, cookie


def _empty() -> bytes:
    from ext_authz._proto import CheckResponse, OkHttpResponse, Status

    serialized: bytes = CheckResponse(
        status=Status(code=0), ok_response=OkHttpResponse()
    ).SerializeToString()
    return serialized


async def _serve_aio(mode: str, port: int, cookie_file: Path) -> None:
    import grpc

    from bench.micro import request
    from ext_authz.adapters.grpc_servicer import CheckServicer, add_check_service

    empty = _empty()
    components, cookie = await _components(cookie_file)
    ours = CheckServicer(components.service.check, components.service.check_now)
    canned = await ours.Check(request("/some/page?q=1", cookie=cookie), None)

    class Servicer(CheckServicer):
        async def Check(self, message: Any, context: Any) -> Any:
            if mode == "floor":
                return empty
            if mode == "canned":
                return canned
            answer = await ours.Check(message, context)
            if mode == "ours-twice":
                answer = await ours.Check(message, context)
            return empty if mode == "work-empty" else answer

    server = grpc.aio.server()
    add_check_service(server, Servicer(components.service.check))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


def _serve_sync(mode: str, port: int, cookie_file: Path) -> None:
    """grpcio's thread-pool server; a miss is awaited on a loop in its own thread."""
    import grpc

    from ext_authz._proto import AUTHORIZATION_SERVICE_NAME, CheckRequest
    from ext_authz.adapters.envoy import check_response_bytes, to_auth_request

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    components, _ = asyncio.run_coroutine_threadsafe(_components(cookie_file), loop).result()
    service = components.service
    empty = _empty()

    def check(message: Any, context: Any) -> bytes:
        if mode == "floor":
            return empty
        request = to_auth_request(message)
        decision = service.check_now(request)
        if decision is None:
            decision = asyncio.run_coroutine_threadsafe(service.check(request), loop).result()
        answer = check_response_bytes(decision, http=request.has_http)
        return empty if mode == "work-empty" else answer

    handler = grpc.unary_unary_rpc_method_handler(
        check, request_deserializer=CheckRequest.FromString, response_serializer=bytes
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(AUTHORIZATION_SERVICE_NAME, {"Check": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(mode: str, shape: str, calls: int, concurrency: int) -> tuple[float, float]:
    import grpc

    from bench.micro import request
    from ext_authz._proto import AuthorizationStub
    from tests.stack.proc import free_port

    port = free_port()
    cookie_file = Path(tempfile.mkdtemp(prefix="ext-authz-grpc-cost-")) / "cookie"
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_cost", "--serve", mode, "--shape", shape,
         "--port", str(port), "--cookie-file", str(cookie_file)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "READY"
        message = request("/some/page?q=1", cookie=cookie_file.read_text())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = AuthorizationStub(channel)
            for _ in range(500):
                stub.Check(message)
            each = max(1, calls // concurrency)

            def client(_: int) -> None:
                for _ in range(each):
                    stub.Check(message)

            cpu, wall = _cpu_seconds(child.pid), time.monotonic()
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(client, range(concurrency)))
            cpu, wall = _cpu_seconds(child.pid) - cpu, time.monotonic() - wall
        total = each * concurrency
        return cpu / total * 1e6, total / wall
    finally:
        child.terminate()
        child.wait(10)
        shutil.rmtree(cookie_file.parent, ignore_errors=True)


def _serve(mode: str, shape: str, port: int, cookie_file: Path) -> None:
    if shape == "sync":
        _serve_sync(mode, port, cookie_file)
        return
    if shape == "aio-uvloop":
        import uvloop

        uvloop.run(_serve_aio(mode, port, cookie_file))
        return
    asyncio.run(_serve_aio(mode, port, cookie_file))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=["aio"])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=SHAPES, default="aio", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cookie-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.shape, args.port, args.cookie_file)
        return
    for shape in args.shapes:
        for mode in args.modes:
            if shape == "sync" and mode == "canned":
                continue
            for concurrency in (1, args.concurrency):
                micros, rate = _measure(mode, shape, args.calls, concurrency)
                print(
                    f"{shape:10s} {mode:10s} c{concurrency:<3d} {micros:6.0f} µs server CPU "
                    f"per Check  ({rate:,.0f} calls/s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
