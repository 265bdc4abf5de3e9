"""A pytest plugin (hooks re-exported by tests/conftest.py): a test module that reads
the clock while it is being collected fails to collect.

A value with a lifetime (an expiry, a deadline) computed when a module is imported, or
in a `parametrize` list, is already old when its test runs, and on a slow machine that
is minutes later (issue 12: `exp = time.time() + 100` in a parametrize list expired
before the case ran). While pytest imports a test module and builds its items, every
call of `time.time`, `time.time_ns`, `time.monotonic` or `time.monotonic_ns` made
directly by code under tests/ is recorded; the module's collection then fails with the
file and line of each read. Reads in fixtures and test bodies (run time) are untouched,
and so are reads inside libraries.

Not covered: `datetime.now()`/`date.today()` (datetime's types cannot be patched
without handing libraries imported meanwhile a subclass) and clock reads in a library
called at import. Also: `from time import time` executed during collection binds the
guard, which outside collection only passes the call through.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["pytest_make_collect_report"]

TESTS = Path(__file__).resolve().parent
GUARDED = ("time", "time_ns", "monotonic", "monotonic_ns")

_collecting = False
_reads: list[str] = []


def _guard(name: str, real: Callable[[], Any]) -> Callable[[], Any]:
    def read_clock() -> Any:
        if _collecting:
            caller = sys._getframe(1)
            path = caller.f_code.co_filename
            if path.startswith(str(TESTS)) and path != __file__:
                _reads.append(
                    f"{Path(path).relative_to(TESTS.parent)}:{caller.f_lineno} "
                    f"({caller.f_code.co_name}) reads time.{name}()"
                )
        return real()

    read_clock.__name__ = name
    read_clock.__wrapped__ = real  # type: ignore[attr-defined]
    return read_clock


for _name in GUARDED:
    _real = getattr(time, _name)
    if not hasattr(_real, "__wrapped__"):  # imported twice: guard once
        setattr(time, _name, _guard(_name, _real))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Modules are imported, and their parametrize lists built, while their collect
    report is made: record the clock reads of that window, fail the module on any."""
    global _collecting
    if not isinstance(collector, pytest.Module):
        return (yield)
    _collecting = True
    _reads.clear()
    try:
        report = yield
    finally:
        _collecting = False
    if _reads and report.outcome != "failed":
        reads = "\n  ".join(dict.fromkeys(_reads))
        report.outcome = "failed"
        report.longrepr = (
            f"{collector.nodeid}: the clock is read while the module is collected:\n"
            f"  {reads}\n"
            "A value made then (an expiry, a deadline) is stale by the time its test "
            "runs. Compute it inside the test or fixture, or inject a clock "
            "(tests/clock_guard.py)."
        )
    return report
