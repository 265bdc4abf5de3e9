"""Small helpers the end-to-end tests and drills share."""

from __future__ import annotations

import base64
import http.client
import json
import threading
from typing import Any

import httpx

from tests.stack.demo import LoopbackTransport


def basic(user: str, password: str) -> str:
    """An `Authorization: Basic` value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def echoed(response: Any) -> dict[str, list[str]]:
    """The headers the echo upstream received (the response must be a 200 from it)."""
    assert response.status_code == 200, (response.status_code, response.text[:300])
    headers: dict[str, list[str]] = json.loads(response.text)["headers"]
    return headers


def raw_request(
    port: int,
    target: str,
    *,
    host: str,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    timeout: float = 15.0,
) -> tuple[int, dict[str, list[str]], str]:
    """One HTTP/1.1 request to 127.0.0.1:`port` with the request target sent exactly
    as given (httpx removes dot segments and re-encodes paths before sending).

    Returns (status, {lower-case header name: values}, body text).
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host)
        for name, value in headers or []:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        received: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            received.setdefault(name.lower(), []).append(value)
        return response.status, received, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def scrape(url: str) -> dict[str, float]:
    """Samples of a /metrics page by their full name with labels, e.g.
    'ext_authz_checks_total{app="app",...}' (`url`: the operations port's base URL)."""
    samples: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of metric `name` that carry all of `labels`."""
    out = 0.0
    for key, value in samples.items():
        if key.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            out += value
    return out


def vm_kib(pid: int, field: str) -> int:
    """VmRSS / VmHWM of a process, in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def client_from(address: str, **kwargs: Any) -> httpx.Client:
    """An httpx client whose connections come from the loopback `address` (Envoy
    reports it to ext-authz as the request's source: the client address that the
    guessing limits count by). It reaches *.localhost through Envoy; no redirects
    followed."""
    kwargs.setdefault("timeout", 30.0)
    return httpx.Client(transport=LoopbackTransport(local_address=address), **kwargs)


class RssSampler(threading.Thread):
    """Samples a process's VmRSS until stopped (a measurement, orders nothing)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, vm_kib(self.pid, "VmRSS"))
            self.stop.wait(0.01)
