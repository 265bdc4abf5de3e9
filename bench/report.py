"""The benchmark's outputs: ratios to the floor, the goals, a table, JSON, Markdown, PNG.

Every figure is also given as a ratio to the `floor` scenario of the same run (the
allow-all gRPC servicer behind the same Envoy): `ratios[field] = value / floor value`
(None when either side is missing or the floor is 0, e.g. Redis and IdP counts); to
the same proxy without authorization (`plain` for Envoy rows, `nginx-plain` for nginx
rows): `ratios_plain`; and for HTTP forward-auth rows to `http-floor` (the allow-all
httptools server behind the same Envoy): `ratios_http_floor`. Each ratio is taken
within one pass (the `@c1` rows against `@c1` rows only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

UNBATCHED_SUFFIX = "@c1"
UNBATCHED = ("floor", "session", "basic-app", "basic-directory", "http-floor", "http-session")

RATIO_FIELDS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_check", "envoy_cpu_us_per_request",
                "proxy_cpu_us_per_request", "rss_mb")  # fmt: skip

# (column header, row key, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("scenario", "scenario", "s"),
    ("req/s", "rps", ".0f"),
    ("req/s ÷ plain", "rps_vs_plain", ".2f"),
    ("p50 ms", "p50_ms", ".2f"),
    ("p99 ms", "p99_ms", ".2f"),
    ("authz CPU µs/Check", "cpu_us_per_check", ".0f"),
    ("proxy CPU µs/req", "proxy_cpu_us_per_request", ".0f"),
    ("Redis cmds/Check", "redis_per_check", ".3f"),
    ("IdP req/1k Checks", "idp_per_1k_checks", ".1f"),
    ("RSS MB/worker", "rss_mb", ".1f"),
)


def _pass(name: str) -> str:
    """The pass a row belongs to: "" for the main one, "@c1" for the unbatched one."""
    return name[name.index("@") :] if "@" in name else ""


def _ratios(row: dict[str, Any], base: dict[str, Any] | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in RATIO_FIELDS:
        value, of = row.get(key), base.get(key) if base else None
        out[key] = round(value / of, 2) if value is not None and of else None
    return out


def add_ratios(rows: Sequence[dict[str, Any]]) -> None:
    """Ratios to the floor, to the plain proxy and (HTTP rows) to the HTTP floor, each
    measured in the same pass (same load) of the same run."""
    by_pass = {(r["scenario"].split("@")[0], _pass(r["scenario"])): r
               for r in rows if "error" not in r}  # fmt: skip
    for row in rows:
        name, load = row["scenario"].split("@")[0], _pass(row["scenario"])
        row["ratios"] = _ratios(row, by_pass.get(("floor", load)))
        plain = "nginx-plain" if row.get("proxy") == "nginx" else "plain"
        row["ratios_plain"] = _ratios(row, by_pass.get((plain, load)))
        row["rps_vs_plain"] = row["ratios_plain"]["rps"] if name != plain else None
        if row.get("transport") == "http":
            row["ratios_http_floor"] = _ratios(row, by_pass.get(("http-floor", load)))


def _row(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["scenario"] == name and "error" not in r), None)


def goals(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets of issues 7 and 10, each met / not met / not measured, with the figure."""
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

    # Issue 10: HTTP forward auth. Each figure is a ratio of two rows of the same pass.
    def add_between(goal: str, scenario: str, other: str, key: str, ok: Any) -> None:
        row, base = _row(rows, scenario), _row(rows, other)
        value = None
        if row is not None and base is not None and row.get(key) is not None and base.get(key):
            value = round(row[key] / base[key], 3)
        status = "not measured" if value is None else ("met" if ok(value) else "not met")
        out.append({"goal": goal, "scenario": scenario, "versus": other, "value": value,
                    "status": status})  # fmt: skip

    add_between("http-session req/s >= 0.5x plain Envoy", "http-session", "plain", "rps",
                lambda v: v >= 0.5)  # fmt: skip
    for suffix, load in (("", "saturated"), (UNBATCHED_SUFFIX, "one connection")):
        add_between(f"http-session authz CPU per Check <= 1/4 of gRPC session ({load})",
                    "http-session" + suffix, "session" + suffix, "cpu_us_per_check",
                    lambda v: v <= 0.25)  # fmt: skip
    # Issue 17: 20 access rules cost a cached-session Check at most 5% more.
    for row, base in (("session-access", "session"), ("http-session-access", "http-session")):
        add_between(f"{row} authz CPU per Check <= 1.05x {base}", row, base,
                    "cpu_us_per_check", lambda v: v <= 1.05)  # fmt: skip
    add_between("http-jwt req/s >= 0.5x Envoy native jwt_authn", "http-jwt", "native-jwt",
                "rps", lambda v: v >= 0.5)  # fmt: skip
    add_between("nginx-session req/s >= 0.5x nginx-plain", "nginx-session", "nginx-plain",
                "rps", lambda v: v >= 0.5)  # fmt: skip
    return out


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    text = format(value, fmt)
    ratio = (row.get("ratios") or {}).get(key)
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
        lines += [f"| {g['goal']} | {_goal_rows(g)} | {g['value']} | **{g['status']}** |"
                  for g in gs]  # fmt: skip
        return "\n".join(lines)
    return "\n".join(f"  [{g['status']:>12}] {g['goal']}: {g['value']}" for g in gs)


def _goal_rows(g: dict[str, Any]) -> str:
    return f"{g['scenario']} ÷ {g['versus']}" if g.get("versus") else g["scenario"]


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
        "per scenario. Ratios (x) are to `floor` (allow-all gRPC servicer) of the same run; "
        "`req/s ÷ plain` is to the same proxy without authorization (`plain` Envoy, or "
        "`nginx-plain` for nginx rows). Proxy CPU: Envoy's, or for nginx rows the nginx in "
        "front (its upstream's CPU is `upstream_cpu_us_per_request` in results.json).",
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


def _color(row: dict[str, Any]) -> str:
    name = row["scenario"].split("@")[0]
    if name in ("plain", "floor", "http-floor", "nginx-plain"):
        return "#888888"  # no decision: the baselines
    if name.startswith("native"):
        return "#55a868"  # Envoy decides alone
    if row.get("proxy") == "nginx":
        return "#8172b2"  # nginx auth_request
    if row.get("transport") == "http":
        return "#dd8452"  # Envoy http_service
    return "#4c72b0"  # Envoy gRPC


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
        colors = [_color(r) for r in good]
        ax.barh(names, values, color=colors)
        if floor is not None and floor.get(key):
            ax.axvline(floor[key], color="#c44e52", linestyle="--", linewidth=1)
        ax.set_title(title)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    fig.suptitle(f"ext-authz benchmark ({meta['started']}, Envoy --concurrency "
                 f"{meta['envoy_concurrency']}, wrk -c{meta['wrk_connections']}); "
                 "dashed: floor; blue gRPC, orange http_service, purple nginx, "
                 "green Envoy-native, grey no decision")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
