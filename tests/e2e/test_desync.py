"""Request smuggling and desync (issue 19 item 4): what a client frames is what is
answered, in order, on the forward-auth port itself and through the shipped nginx and
Caddy configs (real programs); no answer is ever another client's.

Each case sends raw bytes on one connection and reads every answer that comes back
until the connection closes or goes quiet (bounded): the number and order of answers is
asserted, and a request hidden in a body (`/smuggled`) is never answered as a request.
The identities are the directory's (whoami), so no IdP is needed."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from tests.stack.demo import ALICE, BOB, Stack
from tests.support import basic

pytestmark = pytest.mark.e2e

READ_BOUND = 10.0  # bounds a failure: a closed connection ends the read at once
QUIET = 1.5  # after the last answer, how long more bytes are waited for


def exchange(port: int, data: bytes) -> list[tuple[int, bytes]]:
    """Send `data` on one connection; every (status, head+body) answered, in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_BOUND) as sock:
        sock.sendall(data)
        buffer = b""
        sock.settimeout(QUIET)
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            buffer += chunk
    return split_answers(buffer)


def split_answers(buffer: bytes) -> list[tuple[int, bytes]]:
    answers = []
    while buffer.startswith(b"HTTP/1."):
        head, sep, rest = buffer.partition(b"\r\n\r\n")
        if not sep:
            break
        status = int(head.split(b" ", 2)[1])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            body, end, rest = rest.partition(b"0\r\n\r\n")
            body += end
        else:
            body, rest = rest[:length], rest[length:]
        answers.append((status, head + b"\r\n\r\n" + body))
        buffer = rest
    return answers


def request(path: str, host: str, *extra: str, body: bytes = b"") -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: whoami.localhost\r\n\r\n"
ALICE_AUTH = f"Authorization: {basic(ALICE.username, ALICE.app_password)}"
LAST = "Connection: close"  # the last request of a case: no wait for more bytes


def cases(host: str) -> dict[str, tuple[bytes, list[int]]]:
    """name -> (bytes on one connection, the statuses a correct server answers)."""
    with_length = request("/a", host, ALICE_AUTH, f"Content-Length: {len(SMUGGLED)}", body=SMUGGLED)
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    chunked = request("/a", host, ALICE_AUTH, "Transfer-Encoding: chunked", body=chunk)
    both = request(
        "/a",
        host,
        ALICE_AUTH,
        "Content-Length: 4",
        "Transfer-Encoding: chunked",
        body=b"0\r\n\r\n" + SMUGGLED,
    )
    return {
        "body-with-length-then-next": (
            with_length + request("/b", host, ALICE_AUTH, LAST),
            [200, 200],
        ),
        "chunked-body-then-next": (chunked + request("/b", host, ALICE_AUTH, LAST), [200, 200]),
        "length-and-chunked": (both, [400]),
        "two-lengths": (
            request(
                "/a", host, ALICE_AUTH, "Content-Length: 0", "Content-Length: 51", body=SMUGGLED
            ),
            [400],
        ),
        "negative-length": (request("/a", host, ALICE_AUTH, "Content-Length: -1"), [400]),
        "obs-fold": (request("/a", host, ALICE_AUTH, "X-Folded: one", " two"), [400]),
        "pipelined-after-empty-body": (
            request("/a", host, ALICE_AUTH, "Content-Length: 0")
            + request("/b", host, ALICE_AUTH)
            + request("/c", host, ALICE_AUTH, LAST),
            [200, 200, 200],
        ),
    }


def smuggled_through(text: bytes) -> bool:
    """An answer from the upstream to the hidden request (the echo names its path)."""
    return b'"path": "/smuggled"' in text


def assert_framed(answers: list[tuple[int, bytes]], expected: list[int], name: str) -> None:
    statuses = [status for status, _ in answers]
    # The hidden request never reaches the upstream as a request of its own.
    assert not any(smuggled_through(text) for _, text in answers), (name, statuses)
    if expected == [400]:
        # Refused (400), or not answered at all; never an allowed request.
        assert statuses in ([400], []), (name, statuses)
    else:
        assert statuses == expected, (name, statuses)


# RFC 9112 lets a server resolve two framings itself: Transfer-Encoding wins over
# Content-Length (§6.3), and obs-fold may be replaced by a space (§5.2). Caddy (Go's
# net/http) does both; then what follows the chunked body is a request of its own,
# judged on its own (401 without credentials), and the folded header is one header.
# Either way the same parser frames every request, so nothing desyncs.
RESOLVED_BY_THE_PROXY = {
    "length-and-chunked": [[400], [], [200, 401]],
    "obs-fold": [[400], [], [200]],
}


# --- the forward-auth port itself ----------------------------------------------------------


@pytest.fixture
def port(make_stack: Any) -> int:
    stack: Stack = make_stack(idp=False)
    replica = stack.replicas[0]
    assert replica.forward_auth_port is not None
    return replica.forward_auth_port


@pytest.mark.parametrize("name", list(cases("whoami.localhost")))
def test_the_forward_auth_port_answers_what_was_framed(port: int, name: str) -> None:
    # Envoy's dialect: the original request's path after the prefix, its Host.
    data, expected = cases("whoami.localhost")[name]
    data = data.replace(b"GET /", b"GET /outpost.goauthentik.io/auth/envoy/")
    answers = exchange(port, data)
    if name.startswith(("body-with", "chunked-body")):
        # No body is read: the request with one is answered, then the connection closes
        # (what follows is never parsed as a request).
        expected = [200]
    assert_framed(answers, expected, name)


# --- through nginx and Caddy (the shipped configs) -----------------------------------------


@pytest.fixture(params=["nginx", "caddy"])
def proxied(request: pytest.FixtureRequest, make_stack: Any) -> Stack:
    stack: Stack = make_stack(idp=False, front=request.param)
    return stack


@pytest.mark.parametrize("name", list(cases("whoami.localhost")))
def test_nginx_and_caddy_answer_what_was_framed(proxied: Stack, name: str) -> None:
    host = f"whoami.localhost:{proxied.port}"
    data, expected = cases(host)[name]
    answers = exchange(proxied.port, data)
    where = f"{proxied.front_kind}:{name}"
    if name in RESOLVED_BY_THE_PROXY:
        statuses = [status for status, _ in answers]
        assert statuses in RESOLVED_BY_THE_PROXY[name], (where, statuses)
        assert not any(smuggled_through(text) for _, text in answers), where
        return
    assert_framed(answers, expected, where)


def test_no_client_on_a_pooled_connection_gets_anothers_answer(proxied: Stack) -> None:
    """Alice and Bob, in parallel, each sending bodies and pipelined requests through the
    proxy, whose kept-alive pool to ext-authz they share: each answer names its sender."""
    host = f"whoami.localhost:{proxied.port}"
    mixed: list[str] = []

    def user(name: str, password: str) -> None:
        auth = f"Authorization: {basic(name, password)}"
        for i in range(10):
            data = request(
                f"/{name}/{i}", host, auth, f"Content-Length: {len(SMUGGLED)}", body=SMUGGLED
            ) + request(f"/{name}/{i}/next", host, auth)
            for status, text in exchange(proxied.port, data):
                if status != 200:
                    mixed.append(f"{name}: {status}")
                elif f'"x-authentik-username": [\n      "{name}"' not in text.decode():
                    mixed.append(f"{name} got another identity")

    threads = [
        threading.Thread(target=user, args=(ALICE.username, ALICE.app_password)),
        threading.Thread(target=user, args=(BOB.username, BOB.app_password)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert mixed == []
