"""No client value can forge or mislabel a log line (issue 11, finding 9; SPEC §9 "Logs"),
through the real Envoy of the test stack.

- `log_format: console` escapes control characters: a `%0a` in the callback's
  `error` stays inside its one line.
- A client-sent `X-Request-Id` never reaches the log as if Envoy had made it: the
  shipped Envoy configs make Envoy the edge (`use_remote_address`), so Envoy replaces
  it with its own id.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.stack.demo import Stack

pytestmark = pytest.mark.e2e

REFUSED = "sign-in refused by the identity provider"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def wait_for(find: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    """Poll the replica's log until `find` returns something (the line is written
    before the answer leaves; the deadline only bounds a failure)."""
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line: {what}")
        time.sleep(0.05)


def test_a_client_sent_x_request_id_is_replaced_by_envoys_own(stack: Stack) -> None:
    marker = f"probe_{uuid.uuid4().hex}"
    answer = stack.get(
        "app",
        f"/outpost.goauthentik.io/callback?error={marker}",
        headers={"X-Request-Id": "forged-123"},
    )
    assert answer.status_code == 403
    replica = stack.replicas[0]
    (record,) = wait_for(
        lambda: [
            r for r in replica.log_records() if r.get("msg") == REFUSED and r.get("error") == marker
        ],
        f"{REFUSED} for {marker}",
    )
    assert record["request_id"] != "forged-123"
    assert UUID.match(record["request_id"]), record["request_id"]


def test_console_log_lines_cannot_be_forged_through_the_callback(make_stack: Any) -> None:
    stack: Stack = make_stack(config_overrides={"server": {"log_format": "console"}})
    marker = f"probe{uuid.uuid4().hex}"
    forged = "%0d%0aerror%20signed%20in%20app=app%20user=admin%0a%1b[2Kwarning%20x"
    answer = stack.get("app", f"/outpost.goauthentik.io/callback?error={marker}{forged}")
    assert answer.status_code == 403
    replica = stack.replicas[0]
    lines = wait_for(
        lambda: [line for line in replica.logs().splitlines() if marker in line],
        f"{REFUSED} for {marker}",
    )
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith("info") and REFUSED in line
    assert "\x1b" not in line and "\r" not in line
    text = replica.logs()
    assert not any(
        other.startswith(("error signed in", "warning x", "\x1b")) for other in text.splitlines()
    ), text[-2000:]
