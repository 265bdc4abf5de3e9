"""The benchmark harness runs end to end (`python -m bench --only floor --duration 1`).

Proves the wiring (allow-all servicer, the bench Envoy, wrk, /proc accounting, the
JSON/Markdown/PNG writers), not the speed: no timing assertions (STYLE.md). A second
run covers the forward-auth plumbing that needs neither Redis nor the IdP: Envoy
`http_service` configured from envoy/envoy-http.yaml.tmpl to the allow-all httptools
server (`http-floor`), and nginx from deploy/nginx/nginx.conf.tmpl without
auth_request in front of the nginx upstream (`nginx-plain`).
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


def _bench(tmp_path: Path, *only: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed (make apt)")
    out = tmp_path / "results"
    selection = [arg for name in only for arg in ("--only", name)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *selection, "--duration", "1", "--warmup", "0",
         "--no-profile", "--no-unbatched", "--out", str(out),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc, out


def test_bench_floor_runs_end_to_end(tmp_path: Path) -> None:
    proc, out = _bench(tmp_path, "floor")

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


def test_bench_forward_auth_rows_run_end_to_end(tmp_path: Path) -> None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.fail("nginx is not installed (make apt: nginx-light)")
    _, out = _bench(tmp_path, "http-floor", "nginx-plain")

    data = json.loads((out / "results.json").read_text())
    rows = {r["scenario"]: r for r in data["scenarios"]}
    # The HTTP rows come with their baselines: plain Envoy and the gRPC floor.
    assert set(rows) == {"plain", "floor", "http-floor", "nginx-plain"}
    for row in rows.values():
        assert "error" not in row, row.get("error")
        assert row["requests"] > 0 and row["non_2xx"] == 0
        assert row["proxy_cpu_us_per_request"] is not None
    http_floor = rows["http-floor"]
    assert (http_floor["proxy"], http_floor["transport"]) == ("envoy", "http")
    # Every request was a Check on the httptools server, over kept-alive connections.
    assert http_floor["checks"] > 0 and http_floor["cpu_us_per_check"] > 0
    assert http_floor["authz_connections"]["active"] > 0
    assert http_floor["ratios_plain"]["rps"] is not None
    assert http_floor["ratios_http_floor"]["rps"] == 1.0
    nginx_plain = rows["nginx-plain"]
    assert nginx_plain["proxy"] == "nginx" and nginx_plain["checks"] is None
    assert nginx_plain["upstream_cpu_us_per_request"] is not None
    assert nginx_plain["ratios_plain"]["rps"] == 1.0  # against itself
    assert {g["scenario"] for g in data["goals"]} >= {"http-session", "nginx-session"}


def test_the_table_bench_runs(tmp_path: Path) -> None:
    """`python -m bench.tables` (the application table at scale) on a tiny table: every
    row is written; what the numbers are is the benchmark's business."""
    out = tmp_path / "tables.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tables", "-n", "20", "-i", "200", "--seconds", "1.5",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert set(rows) == {
        "check_us_1", "check_us_20", "check_ratio", "refresh_all_s", "refresh_one_changed_s",
        "quiet_p50_us", "quiet_p99_us", "refreshing_p50_us", "refreshing_p99_us",
        "refreshing_p99_ratio", "refreshes", "rss_mb_20",
    }  # fmt: skip
    assert rows["refreshes"] >= 1 and rows["rss_mb_20"] > 0
