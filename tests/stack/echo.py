"""The echo upstream: answers every request with what it received.

`python -m tests.stack.echo --port N` serves HTTP/1.1 on 127.0.0.1:N.  Every request
gets 200 and a JSON body `{"method", "path", "headers", "body"}` where `headers` maps
each lower-cased header name to its values in arrival order, so duplicated headers
stay visible.  When `Accept` contains `text/html` the same data comes as an HTML page
(title "echo", the JSON in a <pre id="echo">) for browser tests.

`EchoServer` starts it as a child process.
"""

from __future__ import annotations

import argparse
import html
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.stack.proc import START_BOUND, ManagedProcess, free_port, port_open


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        data: dict[str, Any] = {
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body": body.decode("utf-8", "replace"),
        }
        text = json.dumps(data, indent=2, sort_keys=True)
        if "text/html" in (self.headers.get("accept") or ""):
            payload = (
                '<!doctype html>\n<html><head><meta charset="utf-8"><title>echo</title></head>'
                f'<body><h1>echo</h1><pre id="echo">{html.escape(text)}</pre></body></html>\n'
            ).encode()
            ctype = "text/html; charset=utf-8"
        else:
            payload = text.encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(payload)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _echo

    def log_message(self, format: str, *args: Any) -> None:
        # One short line per request: no headers or query (they may carry credentials).
        status = args[1] if len(args) > 1 else "-"
        sys.stderr.write(f"echo {self.command} {self.path.split('?')[0]} {status}\n")


def serve(port: int, host: str = "127.0.0.1") -> None:
    server = ThreadingHTTPServer((host, port), EchoHandler)
    server.daemon_threads = True
    print(f"echo listening on http://{host}:{server.server_port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class EchoServer:
    """The echo upstream as a child process (`python -m tests.stack.echo`)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.process = ManagedProcess(
            "echo",
            [sys.executable, "-m", "tests.stack.echo", "--port", str(self.port)],
            Path(workdir) / f"echo-{self.port}.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def start(self, timeout: float = START_BOUND) -> EchoServer:
        self.process.start(lambda: port_open("127.0.0.1", self.port), timeout)
        return self

    def stop(self) -> int | None:
        return self.process.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.stack.echo")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    # SIGTERM ends serve_forever through KeyboardInterrupt, like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    serve(args.port, args.host)


if __name__ == "__main__":
    main()
