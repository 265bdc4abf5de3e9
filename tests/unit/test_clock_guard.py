"""tests/clock_guard.py: a test module that reads the clock while it is collected
fails to collect; reads at run time are fine."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tests.clock_guard as guard
from tests.stack.proc import ROOT

CASE = """
import time

import pytest

EXPIRES = time.time() + 100  # read at import: stale by the time a slow suite gets here


def soon():
    return time.monotonic() + 5


@pytest.mark.parametrize("deadline", [soon()])  # read while the cases are built
def test_uses_them(deadline):
    assert time.time() < EXPIRES and time.monotonic() < deadline  # run time: fine
"""

FINE = """
import time


def test_reads_the_clock_when_it_runs():
    assert time.time() > 0 and time.monotonic() > 0
"""


def test_reads_are_recorded_only_while_collecting() -> None:
    guard._reads.clear()
    time.time()
    assert guard._reads == []
    guard._collecting = True
    try:
        time.time()
        time.monotonic_ns()
    finally:
        guard._collecting = False
    reads, guard._reads[:] = list(guard._reads), []
    assert len(reads) == 2, reads
    assert all(r.startswith("tests/unit/test_clock_guard.py:") for r in reads), reads
    assert "time.time()" in reads[0] and "time.monotonic_ns()" in reads[1]


def test_a_module_reading_the_clock_at_collection_fails_to_collect() -> None:
    # The case module must live under tests/ (the guard watches code there only).
    where = Path(tempfile.mkdtemp(prefix="clock-guard-", dir=Path(guard.__file__).parent))
    try:
        (where / "test_case_stale.py").write_text(CASE)
        (where / "test_case_fine.py").write_text(FINE)
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
             "--continue-on-collection-errors", str(where)],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(where, ignore_errors=True)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "ERROR collecting" in out and "test_case_stale.py" in out, out
    assert "test_case_stale.py:6 (<module>) reads time.time()" in out, out
    assert "test_case_stale.py:10 (soon) reads time.monotonic()" in out, out
    assert "1 error" in out, out
    assert "1 passed" in out, out  # the module that reads the clock at run time
