"""The benchmark harness runs end to end (`python -m bench --only floor --duration 1`).

Proves the wiring (allow-all servicer, the bench Envoy, wrk, /proc accounting, the
JSON/Markdown/PNG writers), not the speed: no timing assertions (STYLE.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack.proc import ROOT

pytestmark = pytest.mark.integration

ROW_KEYS = {
    "scenario", "requests", "rps", "p50_ms", "p99_ms", "non_2xx", "checks",
    "cpu_us_per_check", "envoy_cpu_us_per_request", "redis_per_check",
    "idp_per_1k_checks", "rss_mb", "rss_mb_per_worker", "ratios",
}  # fmt: skip


def test_bench_floor_runs_end_to_end(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed (make apt)")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "floor", "--duration", "1", "--warmup", "0",
         "--no-profile", "--no-unbatched", "--out", str(out),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    data = json.loads((out / "results.json").read_text())
    assert {"meta", "scenarios", "goals"} <= set(data)
    assert data["meta"]["envoy_concurrency"] == 1
    [row] = data["scenarios"]
    assert row["scenario"] == "floor"
    assert "error" not in row, row.get("error")
    assert set(row) >= ROW_KEYS
    assert row["requests"] > 0
    assert row["non_2xx"] == 0
    # Every request went through the allow-all servicer, which burnt some CPU for it.
    assert row["checks"] > 0
    assert row["cpu_us_per_check"] > 0
    assert row["ratios"]["rps"] == 1.0  # the floor, against itself
    assert (out / "results.md").read_text().startswith("# Benchmark results")
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table went to stdout too.
    assert "floor" in proc.stdout and "req/s" in proc.stdout
