"""Our own Python per Check, without gRPC or Envoy: `python -m bench.micro`.

Calls the servicer's `Check` in-process with a realistic CheckRequest (the headers a
browser sends through Envoy) on the paths `make bench` measures end to end: a cached
session cookie, cached Basic credentials, a skip path. What this prints is the part
of the per-Check CPU that our code can change; the rest is grpc and the kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from typing import Any

from prometheus_client import CollectorRegistry

from ext_authz._proto import CheckRequest, CheckResponse
from ext_authz.adapters.grpc_servicer import CheckServicer
from ext_authz.app import build
from ext_authz.config import parse_settings
from ext_authz.core.model import Identity
from ext_authz.metrics import Metrics

BROWSER_HEADERS = {
    ":authority": "app.example.com",
    ":method": "GET",
    ":path": "/some/page?q=1",
    ":scheme": "https",
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "accept-encoding": "gzip, deflate, br",
    "accept-language": "en-GB,en;q=0.9",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36",
    "x-forwarded-proto": "https",
    "x-request-id": "6f1c9c3e-5a55-4d7e-9a7e-2b0f6c1a9d11",
    "sec-fetch-mode": "navigate",
    "sec-fetch-site": "none",
}

ALICE = Identity(
    sub="alice",
    preferred_username="alice",
    email="alice@example.com",
    name="Alice Example",
    groups=("admins", "staff"),
    attributes={"app_username": "admin", "app_password": "s3cret"},
    token="eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
)


def settings(argon2_hash: str) -> Any:
    return parse_settings(
        {
            "secret": "micro-benchmark-secret-0123456789abcdef",
            "directory": {
                "users": [
                    {
                        "username": "alice",
                        "email": "alice@example.com",
                        "app_passwords": [argon2_hash],
                    }
                ]
            },
            "applications": [
                {
                    "name": "app",
                    "external_host": "https://app.example.com",
                    "skip_path_regex": ["^/public/"],
                    "receive": {"create_session": False},
                    "send": {
                        "basic": {
                            "enabled": True,
                            "username_attribute": "app_username",
                            "password_attribute": "app_password",
                        }
                    },
                }
            ],
        },
        environ={},
    )


def request(path: str, **extra: str) -> CheckRequest:
    message = CheckRequest()
    http = message.attributes.request.http
    http.method, http.host, http.path, http.scheme = "GET", "app.example.com", path, "https"
    for key, value in {**BROWSER_HEADERS, **extra}.items():
        http.headers[key] = value
    return message


async def measure(iterations: int) -> dict[str, float]:
    from argon2 import PasswordHasher

    config = settings(PasswordHasher(time_cost=1, memory_cost=1024).hash("pw"))
    components = build(config, Metrics(CollectorRegistry()))
    servicer = CheckServicer(components.service.check, components.service.check_now)
    assert components.sessions is not None
    cookie = await components.sessions.create("app", ALICE, time.time() + 3600)
    app = config.applications[0]
    cases = {
        "session": request("/some/page?q=1", cookie=f"theme=dark; {app.cookie_name}={cookie}"),
        "basic": request(
            "/some/page", authorization="Basic " + base64.b64encode(b"alice:pw").decode()
        ),
        "skip": request("/public/logo.png"),
    }
    results: dict[str, float] = {}
    for name, message in cases.items():
        first = CheckResponse.FromString(await servicer.Check(message, None))
        assert first.status.code == 0, (name, first)
        for _ in range(200):  # warm caches
            await servicer.Check(message, None)
        started = time.process_time()
        for _ in range(iterations):
            await servicer.Check(message, None)
        results[name] = (time.process_time() - started) / iterations * 1e6
    await components.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--iterations", type=int, default=20_000)
    args = parser.parse_args()
    for name, micros in asyncio.run(measure(args.iterations)).items():
        print(f"{name:8s} {micros:7.1f} µs of our Python per Check")


if __name__ == "__main__":
    main()
