"""Small helpers the end-to-end tests and drills share."""

from __future__ import annotations

import base64
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
