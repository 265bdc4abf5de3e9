"""Small helpers the end-to-end tests and drills share."""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any


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
