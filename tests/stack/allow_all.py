"""An allow-all ext_authz servicer: the benchmark floor and the stack's smoke test.

`python -m tests.stack.allow_all --port N` answers every Check with status code 0
(OK) and an empty OkHttpResponse, and grpc.health.v1 SERVING for "" and
envoy.service.auth.v3.Authorization.  What Envoy plus gRPC cost without any decision.
`AllowAllServer` runs it as a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from ext_authz._proto import (
    AUTHORIZATION_SERVICE_NAME,
    AuthorizationServicer,
    CheckRequest,
    CheckResponse,
    OkHttpResponse,
    Status,
    add_AuthorizationServicer_to_server,
)
from tests.stack.proc import START_BOUND, ManagedProcess, free_port

_ALLOW = CheckResponse(status=Status(code=0), ok_response=OkHttpResponse())


class AllowAll(AuthorizationServicer):
    async def Check(  # the gRPC method name
        self, request: CheckRequest, context: grpc.aio.ServicerContext
    ) -> CheckResponse:
        return _ALLOW


async def start(port: int, host: str = "127.0.0.1") -> grpc.aio.Server:
    """The allow-all grpc.aio server, started on the running loop, health SERVING
    (also used by bench.http_servers to share a loop with an HTTP server)."""
    server = grpc.aio.server()
    add_AuthorizationServicer_to_server(AllowAll(), server)  # type: ignore[no-untyped-call]
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for service in ("", AUTHORIZATION_SERVICE_NAME):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server


async def serve(port: int, host: str = "127.0.0.1") -> None:
    server = await start(port, host)
    print(f"allow-all listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


class AllowAllServer:
    """The allow-all servicer as a child process; ready when its health says SERVING."""

    def __init__(self, workdir: Path, port: int | None = None, name: str = "allow-all") -> None:
        self.port = port if port is not None else free_port()
        self.process = ManagedProcess(
            name,
            [sys.executable, "-m", "tests.stack.allow_all", "--port", str(self.port)],
            Path(workdir) / f"{name}-{self.port}.log",
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = START_BOUND) -> AllowAllServer:
        self.process.start(
            lambda: grpc_serving(self.address), timeout, f"allow-all SERVING on {self.port}"
        )
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    def kill(self) -> int | None:
        return self.process.kill()


def grpc_serving(address: str, service: str = AUTHORIZATION_SERVICE_NAME) -> bool:
    """True when grpc.health.v1 Health/Check for `service` at `address` says SERVING."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # 5 s: a server not listening yet fails at once; a live one on a busy
            # machine must not be reported "not serving" for being slow.
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5.0)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.stack.allow_all")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.host))


if __name__ == "__main__":
    main()
