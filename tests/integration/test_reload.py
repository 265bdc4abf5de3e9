"""SIGHUP re-reads the YAML file and swaps in a new application table (SPEC §11), in
the real service: one process on the memory store, and a supervisor with two workers on
a real Redis (the supervisor forwards the signal to every worker).

Asked over forward auth (Traefik's dialect) with the directory's app passwords, so no
IdP is needed; sessions made before the reload are used after it."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack.demo import ALICE, ext_authz_config, merge_config, whoami_app
from tests.stack.extauthz import ExtAuthz
from tests.stack.proc import wait_until
from tests.stack.redis import RedisServer
from tests.support import basic

pytestmark = pytest.mark.integration

DEADLINE = 20.0  # bounds a failure; a passing test never waits for it
ENVOY_PORT = 18081  # names the applications' external_host; nothing listens there
AUTH = "/outpost.goauthentik.io/auth/traefik"
ALICE_BASIC = basic(ALICE.username, ALICE.app_password)


def _ask(client: httpx.Client, host: str, uri: str = "/", **headers: str) -> httpx.Response:
    """One forward-auth question; only the cookies given in `headers` are sent."""
    client.cookies.clear()
    return client.get(
        AUTH,
        headers={
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": host,
            "X-Forwarded-Uri": uri,
            **headers,
        },
    )


def _second_app() -> dict[str, Any]:
    app = whoami_app(ENVOY_PORT)
    app["name"] = "second"
    app["external_host"] = f"http://second.localhost:{ENVOY_PORT}"
    return app


def _hangup(replica: ExtAuthz) -> None:
    pid = replica.process.pid
    assert pid is not None
    os.kill(pid, signal.SIGHUP)


def _reload_and_wait(
    replica: ExtAuthz, config: dict[str, Any], probe: Callable[[], bool], what: str
) -> None:
    replica.config = config
    replica.write_config()
    _hangup(replica)
    wait_until(probe, DEADLINE, what, replica.process)


def _scenario(replica: ExtAuthz) -> None:
    url = replica.forward_auth_url
    assert url is not None
    with httpx.Client(base_url=url, timeout=DEADLINE) as client:
        first = _ask(client, "whoami.localhost", Authorization=ALICE_BASIC)
        assert first.status_code == 200
        cookie = first.headers["set-cookie"].split(";", 1)[0]
        assert _ask(client, "second.localhost", Authorization=ALICE_BASIC).status_code == 403

        # Added by the file: served after SIGHUP, with no restart.
        added = merge_config(replica.config, {"applications": {"second": _second_app()}})
        _reload_and_wait(
            replica,
            added,
            lambda: _ask(client, "second.localhost", Authorization=ALICE_BASIC).status_code == 200,
            "the added application served",
        )
        # The unchanged application's session survived the swap.
        kept = _ask(client, "whoami.localhost", Cookie=cookie)
        assert kept.status_code == 200, kept.text
        assert kept.headers["x-authentik-username"] == ALICE.username

        # A skip path added to the file is open after the next SIGHUP.
        assert _ask(client, "second.localhost", "/open/x").status_code == 401
        opened = merge_config(added, {"applications": {"second": {"skip_path_regex": ["^/open/"]}}})
        _reload_and_wait(
            replica,
            opened,
            lambda: _ask(client, "second.localhost", "/open/x").status_code == 200,
            "the added skip path open",
        )

        # A file that no longer validates changes nothing, and says why.
        replica.config_path.write_text("applications: [{name: BAD}]\n")
        _hangup(replica)
        wait_until(
            lambda: "reload refused: config error" in replica.logs(),
            DEADLINE,
            "the refused reload logged",
            replica.process,
        )
        assert _ask(client, "second.localhost", "/open/x").status_code == 200

        # Removed from the file: its host is unknown from the next Check.
        removed = dict(
            opened, applications=[a for a in opened["applications"] if a["name"] != "second"]
        )
        _reload_and_wait(
            replica,
            removed,
            lambda: _ask(client, "second.localhost", Authorization=ALICE_BASIC).status_code == 403,
            "the removed application's host refused",
        )
        assert _ask(client, "whoami.localhost", Cookie=cookie).status_code == 200


def test_sighup_swaps_the_applications_of_one_process(workdir: Path) -> None:
    config = ext_authz_config(ENVOY_PORT)
    with ExtAuthz(config, workdir / "reload", name="reload-one") as replica:
        _scenario(replica)
        assert replica.alive()


def test_sighup_reaches_every_worker_of_a_supervisor(
    workdir: Path, redis_server: RedisServer
) -> None:
    config = merge_config(
        ext_authz_config(ENVOY_PORT, redis_server.url, key_prefix="reload-workers:"),
        {"server": {"workers": 2}},
    )
    with ExtAuthz(config, workdir / "reload", name="reload-workers") as replica:
        _scenario(replica)
        # Both workers swapped: many fresh connections (spread over the workers by
        # SO_REUSEPORT) all see the removal.
        url = replica.forward_auth_url
        assert url is not None
        for _ in range(20):
            with httpx.Client(base_url=url, timeout=DEADLINE) as fresh:
                answer = _ask(fresh, "second.localhost", Authorization=ALICE_BASIC)
                assert answer.status_code == 403
        records = replica.log_records()
        reloaded = {r.get("worker") for r in records if r.get("msg") == "applications reloaded"}
        assert reloaded >= {0, 1}, reloaded
