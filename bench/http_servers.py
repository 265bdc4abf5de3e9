"""Allow-all forward-auth servers, one per HTTP server candidate (bench.http_candidates).

`python -m bench.http_servers KIND --port N [--grpc-port M]` serves HTTP/1.1 on
127.0.0.1:N (keep-alive) and answers every request `200`, empty body, with three
identity headers (`x-authentik-*`), as an allowed forward-auth decision does (SPEC
§10). No request body is read. Every candidate hands `decide()` what a real decision
needs (method, request target, the header list), so each pays for turning the bytes
into those values, not only for parsing.

Kinds (LOOP is `asyncio`, the default loop, or `uvloop`):
  httptools-LOOP     httptools' C parser (llhttp) in an asyncio.Protocol
  h11-LOOP           h11 (pure Python) in an asyncio.Protocol
  aiohttp-LOOP       aiohttp's low-level server (aiohttp.web.Server, its C parser)
  granian-embed      granian's embedded server (RSGI) on this process's uvloop:
                     experimental in granian, its Rust runtime in a thread of ours
  grpc-LOOP          the allow-all gRPC servicer (tests.stack.allow_all) only
  both-LOOP          the allow-all grpc.aio servicer on --grpc-port and httptools on
                     --port, one process, one loop
Granian's own process model (`granian --interface rsgi|asgi`, its supervisor and a
worker process) serves `bench.http_servers:rsgi_app` or `:asgi_app`.

Imports stay light at module level: granian's worker imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any, cast

Header = tuple[bytes, bytes]

# An allowed decision: what SPEC §10 answers for a cached session, minus Set-Cookie.
IDENTITY: tuple[Header, ...] = (
    (b"x-authentik-username", b"alice"),
    (b"x-authentik-groups", b"admins"),
    (b"x-authentik-email", b"alice@example.com"),
)
LOOPS = ("asyncio", "uvloop")
KINDS = (
    *(f"{server}-{loop}" for server in ("httptools", "h11", "aiohttp", "grpc", "both")
      for loop in LOOPS),
    "granian-embed",
)  # fmt: skip


def decide(method: bytes, target: bytes, headers: list[Header]) -> tuple[int, tuple[Header, ...]]:
    """The allow-all decision: every request is allowed as alice."""
    return 200, IDENTITY


def _render(status: int, headers: tuple[Header, ...], keep_alive: bool) -> bytes:
    """An HTTP/1.1 response head with an empty body (httptools has no serializer)."""
    lines = [b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\n" % (status, b"OK" if status == 200 else b"")]
    lines += [b"%s: %s\r\n" % h for h in headers]
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


BAD_REQUEST = _render(400, (), keep_alive=False)


# --- httptools ------------------------------------------------------------------------


class HttptoolsProtocol(asyncio.Protocol):
    """One connection: httptools calls back per URL fragment, header and message end."""

    def __init__(self) -> None:
        import httptools

        self._errors = (httptools.HttpParserError, httptools.HttpParserUpgrade)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[Header] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self._errors:
            assert self.transport is not None
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    # parser callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        assert self.transport is not None
        status, headers = decide(self.parser.get_method(), self.url, self.headers)
        keep_alive = self.parser.should_keep_alive()
        self.transport.write(_render(status, headers, keep_alive))
        if not keep_alive:
            self.transport.close()


# --- h11 ------------------------------------------------------------------------------


class H11Protocol(asyncio.Protocol):
    """One connection: h11's state machine, driven from data_received."""

    def __init__(self) -> None:
        import h11

        self.h11 = h11
        self.conn = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        h11, conn, transport = self.h11, self.conn, self.transport
        assert transport is not None
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                transport.write(BAD_REQUEST)
                transport.close()
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                status, headers = decide(event.method, event.target, list(event.headers))
                response = h11.Response(
                    status_code=status, reason=b"OK" if status == 200 else b"",
                    headers=[(b"content-length", b"0"), *headers],
                )  # fmt: skip
                head, end = conn.send(response), conn.send(h11.EndOfMessage())
                transport.write((head or b"") + (end or b""))
            elif isinstance(event, h11.EndOfMessage):
                if conn.our_state is h11.MUST_CLOSE:
                    transport.close()
                    return
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                transport.close()
                return

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        return None


# --- aiohttp (low-level server) -------------------------------------------------------


async def _aiohttp_handler(request: Any) -> Any:
    from aiohttp import web

    status, headers = decide(request.method.encode(), request.raw_path.encode(),
                             list(request.raw_headers))  # fmt: skip
    return web.Response(status=status, headers={k.decode(): v.decode() for k, v in headers})


# --- granian (RSGI and ASGI applications) ---------------------------------------------

_IDENTITY_STR = [(k.decode(), v.decode()) for k, v in IDENTITY]


async def rsgi_app(scope: Any, protocol: Any) -> None:
    """RSGI: headers are a lazy mapping on the Rust side; reading them costs."""
    target = scope.path + ("?" + scope.query_string if scope.query_string else "")
    headers = [(k.encode(), v.encode()) for k, v in scope.headers.items()]
    status, _ = decide(scope.method.encode(), target.encode(), headers)
    protocol.response_empty(status, _IDENTITY_STR)


async def asgi_app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    status, headers = decide(scope["method"].encode(), target, list(scope["headers"]))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"0"), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": b""})


# --- serving --------------------------------------------------------------------------


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(kind: str, port: int, grpc_port: int | None) -> None:
    server = kind.split("-")[0]
    loop = asyncio.get_running_loop()
    stops: list[Callable[[], Awaitable[Any]]] = []  # run in order on SIGTERM
    if server in ("grpc", "both"):
        from tests.stack.allow_all import start

        grpc_server = await start(port if server == "grpc" else _required(grpc_port))
        stops.append(lambda: grpc_server.stop(0.5))
    if server in ("httptools", "h11", "both"):
        factory = H11Protocol if server == "h11" else HttptoolsProtocol
        http = await loop.create_server(factory, "127.0.0.1", port)
        stops.append(_closer(http))
    elif server == "aiohttp":
        from aiohttp import web

        low_level = web.Server(_aiohttp_handler, access_log=None)
        http = await loop.create_server(low_level, "127.0.0.1", port)
        stops += [_closer(http), lambda: low_level.shutdown(0.5)]
    elif server == "granian":
        from granian.constants import HTTPModes, Interfaces
        from granian.server.embed import Server as Embedded

        embedded = Embedded(rsgi_app, address="127.0.0.1", port=port,
                            interface=Interfaces.RSGI, http=HTTPModes.http1,
                            websockets=False, log_enabled=False)  # fmt: skip
        task = asyncio.create_task(embedded.serve())

        async def stop_granian() -> None:
            embedded.signal_handler_interrupt()  # type: ignore[no-untyped-call]
            await task

        stops.append(stop_granian)
    print(f"{kind} serving on 127.0.0.1:{port}", flush=True)
    await _until_signalled()
    for stop in stops:
        await stop()


def _required(port: int | None) -> int:
    if port is None:
        raise SystemExit("both-*: --grpc-port is required")
    return port


def _closer(server: asyncio.Server) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        server.close()  # stop accepting; open keep-alive connections die with the process

    return close


def serve(kind: str, port: int, grpc_port: int | None = None) -> None:
    """Run one kind until SIGTERM; `-uvloop` kinds (and granian-embed) on uvloop."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    if kind.endswith("-uvloop") or kind == "granian-embed":
        import uvloop

        uvloop.install()
    asyncio.run(_serve(kind, port, grpc_port))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_servers")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, help="both-*: the gRPC port")
    args = parser.parse_args(argv)
    serve(args.kind, args.port, args.grpc_port)


if __name__ == "__main__":
    main()
