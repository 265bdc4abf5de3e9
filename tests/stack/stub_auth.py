"""A recording forward-auth stub: what did the proxy really send, and what does it relay?

`StubAuthServer` is an HTTP/1.1 server on 127.0.0.1 (a free port), in this process,
standing where ext-authz's forward-auth listener would: each request is recorded
(method, target, headers in arrival order with their original spelling, the peer)
before it is answered, so by the time the client has the proxy's answer the
subrequest that decided it is already in `requests`. What it answers is scripted per
test: `answer(Answer(...))` for every request, or a function of the recorded request.

No decision logic lives here: the tests that use it pin the proxies' side of the
contract (tests/integration/test_proxies_subrequest.py), not ours.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Recorded:
    """One request as the stub saw it."""

    method: str
    target: str  # the request target: path and query
    headers: tuple[tuple[str, str], ...]  # (name as sent, value), in order
    peer: str  # the proxy's address
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def values(self, name: str) -> list[str]:
        """Every value of header `name` (any case), in arrival order."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        """The single value of `name`; None when absent, AssertionError when repeated."""
        found = self.values(name)
        assert len(found) <= 1, f"{name} sent {len(found)} times: {found}"
        return found[0] if found else None

    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""


@dataclass
class _State:
    requests: list[Recorded] = field(default_factory=list)
    responder: Callable[[Recorded], Answer] = lambda _: Answer()
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stub-auth"
    state: _State  # set on the subclass made per server

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        recorded = Recorded(
            method=self.command,
            target=self.path,
            headers=tuple(self.headers.items()),
            peer=self.client_address[0],
            body=body,
        )
        with self.state.lock:
            self.state.requests.append(recorded)
            responder = self.state.responder
        answer = responder(recorded)
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StubAuthServer:
    def __init__(self) -> None:
        self._state = _State()
        handler = type("StubHandler", (_Handler,), {"state": self._state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> StubAuthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StubAuthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting and inspection ------------------------------------------------------

    def answer(self, how: Answer | Callable[[Recorded], Answer]) -> None:
        """Answer every following request with `how` (or `how(request)`)."""
        responder = how if callable(how) else (lambda _: how)
        with self._state.lock:
            self._state.responder = responder

    @property
    def requests(self) -> list[Recorded]:
        with self._state.lock:
            return list(self._state.requests)

    def clear(self) -> None:
        with self._state.lock:
            self._state.requests.clear()

    def only(self) -> Recorded:
        """The one request recorded since the last clear(); AssertionError otherwise."""
        found = self.requests
        assert len(found) == 1, f"expected one forward-auth request, got {len(found)}: {found}"
        return found[0]
