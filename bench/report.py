"""The benchmark's outputs: ratios to the floor, the goals, a table, JSON, Markdown, PNG.

Every figure is also given as a ratio to the `floor` scenario of the same run (the
allow-all servicer behind the same Envoy): `ratios[field] = value / floor value`
(None when either side is missing or the floor is 0, e.g. Redis and IdP counts).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

UNBATCHED_SUFFIX = "@c1"
UNBATCHED = ("floor", "session", "basic-app", "basic-directory")

RATIO_FIELDS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_check", "envoy_cpu_us_per_request",
                "rss_mb")  # fmt: skip

# (column header, row key, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("scenario", "scenario", "s"),
    ("req/s", "rps", ".0f"),
    ("p50 ms", "p50_ms", ".2f"),
    ("p99 ms", "p99_ms", ".2f"),
    ("authz CPU µs/Check", "cpu_us_per_check", ".0f"),
    ("Envoy CPU µs/req", "envoy_cpu_us_per_request", ".0f"),
    ("Redis cmds/Check", "redis_per_check", ".3f"),
    ("IdP req/1k Checks", "idp_per_1k_checks", ".1f"),
    ("RSS MB/worker", "rss_mb", ".1f"),
)


def _pass(name: str) -> str:
    """The pass a row belongs to: "" for the main one, "@c1" for the unbatched one."""
    return name[name.index("@") :] if "@" in name else ""


def add_ratios(rows: Sequence[dict[str, Any]]) -> None:
    """Ratios to the floor measured in the same pass (same load) of the same run."""
    floors = {
        _pass(r["scenario"]): r
        for r in rows
        if r["scenario"].split("@")[0] == "floor" and "error" not in r
    }
    for row in rows:
        floor = floors.get(_pass(row["scenario"]))
        ratios: dict[str, float | None] = {}
        for key in RATIO_FIELDS:
            value, base = row.get(key), floor.get(key) if floor else None
            ratios[key] = round(value / base, 2) if value is not None and base else None
        row["ratios"] = ratios


def _row(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["scenario"] == name and "error" not in r), None)


def goals(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets of issue 7, each met / not met / not measured, with the figure."""
    out: list[dict[str, Any]] = []

    def add(goal: str, scenario: str, key: str, ok: Any, shown: str) -> None:
        row = _row(rows, scenario)
        value = None if row is None else (row["ratios"].get(key) if key in RATIO_FIELDS and
                                          shown == "ratio" else row.get(key))  # fmt: skip
        status = "not measured" if value is None else ("met" if ok(value) else "not met")
        out.append({"goal": goal, "scenario": scenario, "value": value, "status": status})

    # The CPU goals, at saturation (the main pass) and at equal, unbatched load (one
    # connection, where neither side amortises syscalls over concurrent Checks).
    for suffix, load in (("", "saturated"), (UNBATCHED_SUFFIX, "one connection")):
        add(
            f"cached-session CPU per Check <= 1.3x floor ({load})",
            "session" + suffix,
            "cpu_us_per_check",
            lambda v: v <= 1.3,
            "ratio",
        )
        add(
            f"cached Basic (app password) CPU per Check <= 1.5x floor ({load})",
            "basic-app" + suffix,
            "cpu_us_per_check",
            lambda v: v <= 1.5,
            "ratio",
        )
        add(
            f"cached Basic (directory) CPU per Check <= 1.5x floor ({load})",
            "basic-directory" + suffix,
            "cpu_us_per_check",
            lambda v: v <= 1.5,
            "ratio",
        )
    # 1.01: background PINGs and pool reconnects (HELLO) are counted too.
    add(
        "<= 1 Redis command per Check (session, no local cache)",
        "session-nolocal",
        "redis_per_check",
        lambda v: v <= 1.01,
        "value",
    )
    add(
        "~0 Redis commands per Check on a local-cache hit (session)",
        "session",
        "redis_per_check",
        lambda v: v < 0.01,
        "value",
    )
    add(
        "~0 Redis commands per Check on a local-cache hit (cached Basic)",
        "basic-app",
        "redis_per_check",
        lambda v: v < 0.01,
        "value",
    )
    for name in ("basic-app", "bearer-introspect", "bearer-jwt"):
        add(
            f"IdP verification calls per credential per cache_ttl <= 1 ({name})",
            name,
            "idp_verify_calls_cold",
            lambda v: v <= 1,
            "value",
        )
    return out


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    text = format(value, fmt)
    ratio = row.get("ratios", {}).get(key)
    if ratio is not None and row["scenario"].split("@")[0] != "floor":
        text += f" ({ratio:.2f}x)"
    return text


def table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    head = [c[0] for c in COLUMNS]
    body = []
    for row in rows:
        if "error" in row and "rps" not in row:
            body.append([row["scenario"], f"ERROR: {row['error']}"] + [""] * (len(head) - 2))
            continue
        body.append([_cell(row, key, fmt) for _, key, fmt in COLUMNS])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                  enumerate(zip(cells, widths, strict=True)))
        for cells in [head, *body]
    )  # fmt: skip


def goals_text(gs: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| goal | scenario | figure | status |", "|---|---|---|---|"]
        lines += [f"| {g['goal']} | {g['scenario']} | {g['value']} | **{g['status']}** |"
                  for g in gs]  # fmt: skip
        return "\n".join(lines)
    return "\n".join(f"  [{g['status']:>12}] {g['goal']}: {g['value']}" for g in gs)


def write_json(path: Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]],
               gs: Sequence[dict[str, Any]]) -> None:  # fmt: skip
    path.write_text(json.dumps({"meta": meta, "scenarios": list(rows), "goals": list(gs)},
                               indent=2, ensure_ascii=False) + "\n")  # fmt: skip


def write_markdown(path: Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]],
                   gs: Sequence[dict[str, Any]]) -> None:  # fmt: skip
    lines = [
        "# Benchmark results",
        "",
        f"Run {meta['started']} on {meta['machine']}; Envoy {meta['envoy_version']} "
        f"`--concurrency {meta['envoy_concurrency']}`; wrk -t{meta['wrk_threads']} "
        f"-c{meta['wrk_connections']}, {meta['warmup']} s warm-up + {meta['duration']} s "
        "per scenario. Ratios (x) are to `floor` (allow-all servicer) of the same run.",
        "",
        table(rows, markdown=True),
        "",
        "Scenarios:",
        "",
    ]
    lines += [f"- `{r['scenario']}`: {r['title']}" + (f" — **{r['error']}**" if "error" in r
              else "") for r in rows]  # fmt: skip
    lines += ["", "## Goals", "", goals_text(gs, markdown=True), ""]
    lines += ["Generated by `make bench` (bench/README.md explains every column).", ""]
    path.write_text("\n".join(lines))


def write_png(path: Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "rps" in r]
    names = [r["scenario"] for r in good]
    panels = (("requests/s", "rps"), ("p99 latency (ms)", "p99_ms"),
              ("authz CPU µs per Check", "cpu_us_per_check"),
              ("Redis commands per Check", "redis_per_check"))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 0.45 * len(names) + 2), sharey=True)
    floor = _row(good, "floor")
    axes[0].invert_yaxis()  # shared y: the first scenario on top in every panel
    for ax, (title, key) in zip(axes, panels, strict=True):
        values = [r.get(key) or 0 for r in good]
        colors = [
            "#888888"
            if n in ("plain", "floor")
            else "#55a868"
            if n.startswith("native")
            else "#4c72b0"
            for n in names
        ]
        ax.barh(names, values, color=colors)
        if floor is not None and floor.get(key):
            ax.axvline(floor[key], color="#c44e52", linestyle="--", linewidth=1)
        ax.set_title(title)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    fig.suptitle(f"ext-authz benchmark ({meta['started']}, Envoy --concurrency "
                 f"{meta['envoy_concurrency']}, wrk -c{meta['wrk_connections']}); "
                 "dashed: floor")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
