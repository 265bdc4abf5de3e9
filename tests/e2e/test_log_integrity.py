"""No client value can forge or mislabel a log line (issue 11, finding 9; SPEC §9 "Logs"),
through the real Envoy of the test stack.

- `log_format: console` escapes control characters: a `%0a` in the callback's
  `error` stays inside its one line.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.stack.demo import Stack

pytestmark = pytest.mark.e2e

REFUSED = "sign-in refused by the identity provider"


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
