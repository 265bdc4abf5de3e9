"""bench.spread's arithmetic (the runs themselves are benchmarks, never tests)."""

from __future__ import annotations

from bench.spread import markdown, ratios, summary


def run(floor_us: float, session_us: float, floor_rps: float, session_rps: float) -> dict:
    return {
        "scenarios": [
            {"scenario": "floor", "cpu_us_per_check": floor_us, "rps": floor_rps},
            {"scenario": "session", "cpu_us_per_check": session_us, "rps": session_rps},
            {"scenario": "plain", "cpu_us_per_check": None, "rps": 90000.0},
        ]
    }


def test_ratios_are_to_the_floor_of_the_same_run_and_spread_over_runs() -> None:
    runs = [ratios(run(100, 120, 10000, 8000)), ratios(run(200, 300, 5000, 4000))]
    runs.append(ratios(run(150, 210, 8000, 6000)))
    assert runs[0]["session"] == {"cpu": 1.2, "rps": 0.8, "cpu_us": 120}
    assert "plain" not in runs[0]
    spread = summary(runs)
    assert spread["session"]["cpu"] == [1.2, 1.4, 1.5]
    assert spread["session"]["rps"] == [0.75, 0.8, 0.8]
    text = markdown(spread, 3)
    assert "| session | 120 / 210 / 300 | 1.20 / 1.40 / 1.50 | 0.75 / 0.80 / 0.80 |" in text
