"""Where a Check's CPU goes inside the gRPC server: `python -m bench.grpc_cost`.

No Envoy: a grpc client in this process calls a grpc.aio server in a child process,
one call at a time, and the child's CPU (from /proc) is divided by the calls. Four
servicers tell the parts apart:

- floor:      answers an empty OK (the allow-all servicer);
- canned:     answers our full CheckResponse for a cached session, computed once;
- work-empty: does all our work for the cached session, answers an empty OK;
- ours:       the real servicer.

canned ~ floor means the response size costs nothing; work-empty ~ ours means the
cost is our work as it runs inside the server, however small it is in a tight loop
(`python -m bench.micro`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("floor", "canned", "work-empty", "ours")


async def _serve(mode: str, port: int, cookie_file: Path) -> None:
    import grpc
    from argon2 import PasswordHasher
    from prometheus_client import CollectorRegistry

    from bench.micro import ALICE, request, settings
    from ext_authz._proto import CheckResponse, OkHttpResponse, Status
    from ext_authz.adapters.grpc_servicer import CheckServicer, add_check_service
    from ext_authz.app import build
    from ext_authz.metrics import Metrics

    empty = CheckResponse(status=Status(code=0), ok_response=OkHttpResponse()).SerializeToString()
    config = settings(PasswordHasher(time_cost=1, memory_cost=1024).hash("pw"))
    components = build(config, Metrics(CollectorRegistry()))
    assert components.sessions is not None
    value = await components.sessions.create("app", ALICE, time.time() + 3600)
    cookie = f"theme=dark; {config.applications[0].cookie_name}={value}"
    cookie_file.write_text(cookie)
    ours = CheckServicer(components.service.check, components.service.check_now)
    canned = await ours.Check(request("/some/page?q=1", cookie=cookie), None)

    class Servicer(CheckServicer):
        async def Check(self, message: Any, context: Any) -> Any:
            if mode == "floor":
                return empty
            if mode == "canned":
                return canned
            answer = await ours.Check(message, context)
            return empty if mode == "work-empty" else answer

    server = grpc.aio.server()
    add_check_service(server, Servicer(ours._check))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(mode: str, calls: int) -> tuple[float, float]:
    import grpc

    from bench.micro import request
    from ext_authz._proto import AuthorizationStub
    from tests.stack.proc import free_port

    port = free_port()
    cookie_file = Path(tempfile.mkdtemp(prefix="ext-authz-grpc-cost-")) / "cookie"
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_cost", "--serve", mode, "--port", str(port),
         "--cookie-file", str(cookie_file)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "READY"
        message = request("/some/page?q=1", cookie=cookie_file.read_text())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = AuthorizationStub(channel)
            for _ in range(500):
                stub.Check(message)
            cpu, wall = _cpu_seconds(child.pid), time.monotonic()
            for _ in range(calls):
                stub.Check(message)
            cpu, wall = _cpu_seconds(child.pid) - cpu, time.monotonic() - wall
        return cpu / calls * 1e6, calls / wall
    finally:
        child.terminate()
        child.wait(10)
        shutil.rmtree(cookie_file.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cookie-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.port, args.cookie_file))
        return
    for mode in MODES:
        micros, rate = _measure(mode, args.calls)
        print(f"{mode:10s} {micros:6.0f} µs server CPU per Check  ({rate:,.0f} calls/s)")


if __name__ == "__main__":
    main()
