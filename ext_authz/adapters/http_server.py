"""A small HTTP/1.1 server on httptools (llhttp), for the forward-auth and operations ports.

What it owns: connections, parsing (httptools, never our own), keep-alive and the
order of pipelined answers, the limits of SPEC §10 and the drain. What it does not
own: routing and decisions. A `Handler` turns an `HttpRequest` into an
`HttpResponse`, either at once (a plain value, written from `data_received`
without creating a task: the cheap path for answers from in-process caches) or as
an awaitable (run as a task; cancelled when the client goes away, so nobody's
work runs on for an answer no one will read).

Limits (the rule this module guards: no client can make it hold much, or wait long):

- the request line and headers together at most `MAX_HEAD_BYTES` (64 KiB);
- `HEAD_TIMEOUT` from a request's first byte (or the connection's start) to the
  end of its headers, `IDLE_TIMEOUT` between requests on a kept-alive connection;
- no request body is read: a request that announces one (or an upgrade) is
  answered, then the connection is closed, lingering: what the client still sends
  is read and dropped for up to `LINGER_TIMEOUT`, so it sees the answer, not a reset;
- at most `MAX_PIPELINED` parsed requests wait behind a slow one; reading pauses
  beyond that, and while a client leaves answers unread (answering pauses too, so
  they never pile up), for at most `IDLE_TIMEOUT`.

Connections (the rule: no client can hold the port): at most `ConnectionLimits.total`
open at once, and `per_peer` from one address (`per_proxy` from a trusted proxy, which
multiplexes many users). A connection over a limit first makes room by closing the
longest-idle connection (of that peer, or of anyone when the total is reached: one
waiting between requests, or that has sent nothing yet); with none idle it is answered
503 with `connection: close` and closed. `on_refused(reason)` counts each ("total",
"peer", and "evicted" for the idle ones closed to make room). Slow heads are bounded by
`HEAD_TIMEOUT`, idle ones by `IDLE_TIMEOUT`.

End of input from the client (EOF) means it went away: answers already written are
flushed, an answer still being worked out is cancelled.

A request httptools cannot parse, or one over a limit, is answered 400 with
`connection: close` (after the answers owed to the requests before it) and one log
line (the peer and the parser's reason, never a header value). A response header
value holding CR, LF or NUL is never written (it is dropped and logged): the last
guard against response splitting.

Drain (`HttpServer.drain`): answers carry `connection: close` from `begin_drain()`
on, so kept-alive clients reconnect (elsewhere, once this listener is closed);
`drain()` then stops accepting, lets in-flight requests finish within the grace
period, closes idle connections and aborts what is left at the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType

import httptools

from ext_authz.logs import event

__all__ = [
    "HEAD_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_HEAD_BYTES",
    "ConnectionLimits",
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
]

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0  # above the 60 s idle timeout of the proxies' pools we ship
MAX_PIPELINED = 16
LINGER_TIMEOUT = 2.0  # after our last answer, how long the client's unread bytes are drained
_CRLF = b"\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections a port holds (see the module docstring)."""

    total: int = 4096
    per_peer: int = 64
    per_proxy: int = 1024
    is_proxy: Callable[[str], bool] = lambda peer: False

    def for_peer(self, peer: str) -> int:
        return self.per_proxy if self.is_proxy(peer) else self.per_peer


_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
    b"content-length: 20\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    b"too many connections"
)


def _safe(text: str) -> bool:
    """No CR, LF or NUL: `in` scans in C (a frozenset's isdisjoint walks the string
    one character at a time, and a JWT header value is a kilobyte)."""
    return "\r" not in text and "\n" not in text and "\0" not in text


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request's head. `headers` has lower-case names; repeated headers are
    joined with `,` (as Envoy joins them in a CheckRequest). Names and values are
    decoded as UTF-8 with `surrogateescape`, so bytes that are not UTF-8 survive a
    round trip back into a response unchanged. `peer` is the client's IP address."""

    method: str
    target: str
    headers: Mapping[str, str]
    peer: str


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


Handler = Callable[[HttpRequest], "HttpResponse | Awaitable[HttpResponse]"]

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_NO_BODY = frozenset((*range(100, 200), 204, 304))


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def serialize(response: HttpResponse, *, keep_alive: bool, head: bool = False) -> bytes:
    """The bytes of `response` on the wire. Header values with CR, LF or NUL are left
    out (the caller logs them: see `unsafe_headers`)."""
    status = response.status
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode())]
    for name, value in response.headers:
        if _safe(name) and _safe(value):
            parts.append(_encode(name) + b": " + _encode(value) + _CRLF)
    body = response.body
    if status in _NO_BODY:
        body = b""  # RFC 9110 §8.6: no Content-Length, and no body, in a 1xx, 204 or 304
    else:
        parts.append(b"content-length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(_CRLF)
    if body and not head:
        parts.append(body)
    return b"".join(parts)


def unsafe_headers(response: HttpResponse) -> list[str]:
    return [name for name, value in response.headers if not (_safe(name) and _safe(value))]


class _BadRequest(Exception):
    """A request we refuse before it reaches the handler (the reason is safe to log)."""


_BAD_REQUEST = HttpResponse(400, (("content-type", "text/plain"),), b"bad request\n")


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order.

    Flow control, so that no client makes us hold much: reading pauses while more
    than `MAX_PIPELINED` parsed requests wait, and while the transport's write buffer
    is over its high-water mark (a client that sends but does not read); answering
    pauses with it, so unread answers never pile up in memory. A client that leaves
    answers unread for `IDLE_TIMEOUT` is dropped.

    Timers: `HEAD_TIMEOUT` runs from the connection's start, from the first byte of a
    request, or from the answer before it when its head was already under way;
    `IDLE_TIMEOUT` between requests. None runs while an answer is being worked out
    (the handler is the slow party then, not the client).
    """

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self.peer = ""
        # The request being parsed.
        self._url = b""
        self._names: list[bytes] = []
        self._values: list[bytes] = []
        self._head_bytes = 0
        self._raw_head = 0
        self._in_head = False
        # Parsed requests waiting for their answer, in order.
        self._queue: deque[tuple[HttpRequest, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._refusal: bytes | None = None  # a 400 owed after the answers before it
        self._stop_reading = False  # nothing after this point of the stream is parsed
        self._reading_paused = False
        self._writing_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_is_head = False
        self._send_timer: asyncio.TimerHandle | None = None
        self._closing = False  # answered for the last time; lingering until the client's EOF
        self.idle_since = 0.0  # when it last became idle (for eviction)

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.idle_since = self._loop.time()
        if not self._server.admit(self):
            self._transport = None
            self._stop_reading = True
            with contextlib.suppress(Exception):
                transport.write(_UNAVAILABLE)
            transport.close()
            return
        self._arm(HEAD_TIMEOUT, head=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._server.connections:
            self._server.release(self)  # (refused or evicted ones were not, or no longer)
        self._transport = None
        self._disarm()
        self._cancel_send_timer()
        self._queue.clear()
        self._stop_work()
        self._server.connection_closed()

    def data_received(self, data: bytes) -> None:
        if self._stop_reading:
            return
        # httptools buffers a header split across reads before calling on_header; count
        # the raw bytes of an unfinished head too, so that buffer stays bounded.
        self._raw_head += len(data)
        try:
            self._parser.feed_data(data)
            if self._in_head and self._raw_head > 2 * MAX_HEAD_BYTES:
                raise _BadRequest("request head over 64 KiB")
        except _BadRequest as exc:
            self._refuse(str(exc))
        except httptools.HttpParserUpgrade:
            pass  # answered as a plain request (on_headers_complete); nothing more is read
        except httptools.HttpParserError as exc:
            # An exception raised in one of our callbacks arrives wrapped.
            if isinstance(exc.__context__, _BadRequest):
                self._refuse(str(exc.__context__))
            else:
                self._refuse(f"unparsable request: {str(exc)[:80]}")

    def eof_received(self) -> bool | None:
        # The client sends nothing more. Answers already written are still flushed, but
        # one still being worked out is for a client that hung up: proxies close the
        # connection when their own client goes away (they do not half-close), so stop
        # the work behind it now rather than when a write fails.
        self._queue.clear()
        self._stop_work()
        return None  # the transport closes itself once its buffer is flushed

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._flow()
        self._cancel_send_timer()
        self._send_timer = self._loop.call_later(IDLE_TIMEOUT, self.abort)

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._cancel_send_timer()
        self._run_queue()

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._stop_reading:
            return
        self._url = b""
        self._names = []
        self._values = []
        self._head_bytes = 0
        self._in_head = True
        if self._task is None and not self._queue and not self._timer_is_head:
            self._arm(HEAD_TIMEOUT, head=True)  # a new request starts: its head must come

    def on_url(self, url: bytes) -> None:
        if self._stop_reading:
            return  # bytes after a request whose body we do not read: ignored
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools hands over whole names and values (it buffers split ones itself;
        # `data_received` bounds that buffer).
        if self._stop_reading:
            return
        self._names.append(name)
        self._values.append(value)
        self._grow(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._raw_head = 0
        if self._stop_reading:
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in zip(self._names, self._values, strict=True):
            name = _decode(raw_name).lower()
            value = _decode(raw_value)
            previous = headers.get(name)
            headers[name] = value if previous is None else f"{previous},{value}"
        parser = self._parser
        keep_alive = parser.should_keep_alive()
        length = headers.get("content-length", "0").strip()
        if "transfer-encoding" in headers or (length and length != "0") or parser.should_upgrade():
            # No body is read (SPEC §10), and no other protocol spoken: answer, then
            # close instead of reading what follows.
            keep_alive = False
            self._stop_reading = True
        request = HttpRequest(
            method=parser.get_method().decode("ascii", "replace"),
            target=_decode(self._url),
            headers=MappingProxyType(headers),
            peer=self.peer,
        )
        self._enqueue(request, keep_alive)

    # --- queue and answers --------------------------------------------------------------

    def _grow(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _BadRequest("request head over 64 KiB")

    def _enqueue(self, request: HttpRequest, keep_alive: bool) -> None:
        self._queue.append((request, keep_alive))
        self._run_queue()

    def _run_queue(self) -> None:
        while (
            self._queue
            and self._task is None
            and self._transport is not None
            and not self._writing_paused
        ):
            request, keep_alive = self._queue.popleft()
            try:
                result = self._server.handler(request)
            except Exception:
                event(logging.ERROR, "http handler failed", peer=self.peer, exc_info=True)
                result = HttpResponse(500, (("content-type", "text/plain"),), b"internal error\n")
            if isinstance(result, HttpResponse):
                self._respond(request, result, keep_alive)
            else:
                self._disarm()
                self._task = self._loop.create_task(self._finish(request, result, keep_alive))
        self._flow()

    def _flow(self) -> None:
        """Pause reading while answers cannot be written or too many requests wait."""
        transport = self._transport
        if transport is None:
            return
        if self._closing:
            return
        if self._writing_paused or len(self._queue) > MAX_PIPELINED:
            if not self._reading_paused:
                transport.pause_reading()
                self._reading_paused = True
        elif self._reading_paused and len(self._queue) <= MAX_PIPELINED // 2:
            transport.resume_reading()
            self._reading_paused = False

    async def _finish(
        self, request: HttpRequest, pending: Awaitable[HttpResponse], keep_alive: bool
    ) -> None:
        try:
            response = await pending
        except asyncio.CancelledError:
            raise
        except Exception:
            event(logging.ERROR, "http handler failed", peer=self.peer, exc_info=True)
            response = HttpResponse(500, (("content-type", "text/plain"),), b"internal error\n")
        self._task = None
        if self._transport is None:
            return
        self._respond(request, response, keep_alive)
        self._run_queue()

    def _respond(self, request: HttpRequest, response: HttpResponse, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        last = not self._queue
        keep_alive = keep_alive and not self._server.draining
        unsafe = unsafe_headers(response)
        if unsafe:
            event(logging.ERROR, "response header dropped: unsafe value", headers=unsafe)
        refusal = self._refusal if last and keep_alive else None
        transport.write(
            serialize(
                response, keep_alive=keep_alive and refusal is None, head=request.method == "HEAD"
            )
        )
        if refusal is not None:
            transport.write(refusal)  # the 400 owed after the answers before it
        if not keep_alive or refusal is not None:
            self._close_after_answer()
            return
        if last:
            self.idle_since = self._loop.time()
            self._arm(HEAD_TIMEOUT if self._in_head else IDLE_TIMEOUT, head=self._in_head)

    def _refuse(self, reason: str) -> None:
        """400 and close: the rest of the byte stream cannot be trusted."""
        if self._stop_reading:
            return  # what follows a last request (a body, `Connection: close`) is not read
        self._stop_reading = True
        event(logging.WARNING, "bad http request", peer=self.peer, reason=reason)
        self._server.bad_requests += 1
        if self._transport is None:
            return
        if self._task is None and not self._queue:
            self._transport.write(serialize(_BAD_REQUEST, keep_alive=False))
            self._close_after_answer()
        else:
            # Answers already owed come first, then the 400; nothing after it.
            self._refusal = serialize(_BAD_REQUEST, keep_alive=False)

    def _close_after_answer(self) -> None:
        """Close once the answer is out, without losing it: the client may still be
        sending (a body, the rest of a refused head), and closing a socket with unread
        input sends a reset that can destroy the answer before the client reads it. So
        send our FIN, read and drop the client's bytes until its own FIN, and close
        then, or after `LINGER_TIMEOUT` at the latest (a lingering close)."""
        transport = self._transport
        self._queue.clear()
        self._stop_reading = True
        self._closing = True
        if transport is None:
            return
        self._disarm()
        if self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                # The client went first (ENOTCONN): nothing to linger for.
                transport.close()
                return
            self._timer = self._loop.call_later(LINGER_TIMEOUT, transport.close)
        else:
            transport.close()

    def _stop_work(self) -> None:
        if self._task is not None and not self._task.done():
            # Nobody will read this answer: stop the work behind it.
            self._task.cancel()

    # --- timers and drain ---------------------------------------------------------------

    def _arm(self, seconds: float, *, head: bool) -> None:
        self._disarm()
        self._timer = self._loop.call_later(seconds, self._timed_out)
        self._timer_is_head = head

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_is_head = False

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._timer_is_head = False
        if self._transport is not None and self._task is None and not self._queue:
            self._transport.close()

    @property
    def idle(self) -> bool:
        return self._closing or (self._task is None and not self._queue and not self._in_head)

    def close_if_idle(self) -> None:
        if self.idle and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class HttpServer:
    """One listening socket and its connections. `start()` binds (raises OSError)."""

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        reuse_port: bool,
        limits: ConnectionLimits | None = None,
        on_refused: Callable[[str], None] | None = None,
        on_count: Callable[[int], None] | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or ConnectionLimits()
        self._on_refused = on_refused or (lambda reason: None)
        self._on_count = on_count or (lambda count: None)
        self._per_peer: dict[str, int] = {}
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.draining = False
        self.bad_requests = 0
        self._server: asyncio.Server | None = None
        self._closed_event = asyncio.Event()

    async def start(self) -> int:
        """Bind and listen; return the port (the real one when 0 was asked)."""
        self._server = await self.loop.create_server(
            lambda: _Connection(self),
            self._host,
            self._port,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
            backlog=1024,
        )
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    def begin_drain(self) -> None:
        """From now on every answer closes its connection."""
        self.draining = True

    async def drain(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish within `grace` seconds, close."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + max(0.0, grace)
        for connection in list(self.connections):
            connection.close_if_idle()
        while self.connections and self.loop.time() < deadline:
            self._closed_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed_event.wait(), deadline - self.loop.time())
            for connection in list(self.connections):
                connection.close_if_idle()
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def connection_closed(self) -> None:
        self._closed_event.set()

    # --- connection limits ------------------------------------------------------------

    def admit(self, connection: _Connection) -> bool:
        """Count a new connection in, making room by closing the longest-idle one
        when a limit is reached; False (not counted) when no room can be made."""
        peer = connection.peer
        over = self._per_peer.get(peer, 0) >= self.limits.for_peer(peer)
        if over and not self._evict(peer):
            self._on_refused("peer")
            return False
        if len(self.connections) >= self.limits.total and not self._evict(None):
            self._on_refused("total")
            return False
        self.connections.add(connection)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self._on_count(len(self.connections))
        return True

    def release(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        left = self._per_peer.get(connection.peer, 1) - 1
        if left > 0:
            self._per_peer[connection.peer] = left
        else:
            self._per_peer.pop(connection.peer, None)
        self._on_count(len(self.connections))
        self.connection_closed()

    def _evict(self, peer: str | None) -> bool:
        """Close the longest-idle connection (of `peer`, or of anyone); True if one was.
        It stops counting at once: its socket closes on its own time."""
        oldest: _Connection | None = None
        for candidate in self.connections:
            if peer is not None and candidate.peer != peer:
                continue
            if candidate.idle and (oldest is None or candidate.idle_since < oldest.idle_since):
                oldest = candidate
        if oldest is None:
            return False
        self.release(oldest)
        oldest.abort()
        self._on_refused("evicted")
        return True


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) -> (host, port) for `create_server`."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
