"""Running one scenario: probe, warm up, then measure a bounded wrk run.

Per scenario:
 1. one probe request as wrk will send it (its status must be the expected one);
 2. the IdP's request counters are reset (so `idp_calls_cold` counts from a cold
    credential cache: the probe, the warm-up and the run);
 3. wrk for `warmup` seconds (not measured);
 4. before/after snapshots around a wrk run of `duration` seconds: the authorizer's
    CPU (process tree), the proxy's CPU (Envoy, or the row's nginx and its upstream),
    the decisions (Envoy's ext_authz counters on the listener; for nginx, ext-authz's
    own HTTP Check count), Envoy's connections to the authorizer, Redis INFO
    commandstats, the IdP's counters; RSS per worker after the run.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.measure import diff, idp_total, machine_ticks, redis_commands, run_wrk, wrk_argv
from bench.scenarios import Scenario
from bench.world import World

LUA_MISS = Path(__file__).with_name("wrong_basic.lua")
# IdP endpoints that verify a credential (discovery and JWKS are per key, not per credential).
VERIFY_ENDPOINTS = ("token", "introspection", "userinfo")


def wrk_for(world: World, s: Scenario, duration: float, threads: int, connections: int
            ) -> list[str]:  # fmt: skip
    headers = [h for h in world.headers(s) if not (s.credential == "miss" and h[0] ==
                                                   "Authorization")]  # fmt: skip
    return wrk_argv(
        world.url(s), duration=duration, headers=headers,
        script=LUA_MISS if s.credential == "miss" else None,
        threads=threads, connections=connections,
    )  # fmt: skip


def run_scenario(
    world: World, s: Scenario, *, warmup: float, duration: float, threads: int,
    connections: int,
) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {"scenario": s.name, "title": s.title, "listener": s.listener,
                           "authz": s.authz, "expect": s.expect, "proxy": s.proxy,
                           "transport": s.transport if s.authz else None}  # fmt: skip
    idp = world.idp
    if idp is not None:
        idp.reset_stats()
    status = world.probe(s)
    if status != s.expect:
        row["error"] = f"probe answered {status}, expected {s.expect}"
        return row
    if warmup > 0:
        run_wrk(wrk_for(world, s, warmup, threads, connections), timeout=warmup + 60)

    assert world.envoy is not None
    tree = world.authz_tree(s)
    proxy_tree = world.proxy_tree(s)
    upstream_tree = world.upstream_tree(s)
    redis_port = world.redis.port if world.redis is not None else None
    ext_authz = s.authz is not None
    via_envoy = s.proxy == "envoy" and ext_authz

    def snapshot() -> dict[str, Any]:
        results = world.check_results(s) if ext_authz else None
        return {
            "results": results or {},
            "cpu": tree.cpu_seconds() if tree else 0.0,
            "proxy_cpu": proxy_tree.cpu_seconds(),
            "upstream_cpu": upstream_tree.cpu_seconds() if upstream_tree else 0.0,
            "checks": world.checks(s, results) if ext_authz else 0,
            "cx": world.envoy.upstream(s.listener) if via_envoy else {},  # type: ignore[union-attr]
            "redis": redis_commands(redis_port) if redis_port else {},
            "idp": idp.stats() if idp is not None else {},
            "machine": machine_ticks(),
            "t": time.monotonic(),
        }

    before = snapshot()
    wrk = run_wrk(wrk_for(world, s, duration, threads, connections), timeout=duration + 60)
    after = snapshot()

    checks = after["checks"] - before["checks"]
    decided = diff(after["results"], before["results"])
    redis_delta = diff(after["redis"], before["redis"])
    idp_delta = diff(after["idp"], before["idp"])
    per = checks if ext_authz else wrk.requests
    proxy_us = (
        round((after["proxy_cpu"] - before["proxy_cpu"]) / wrk.requests * 1e6, 1)
        if wrk.requests else None
    )  # fmt: skip
    busy, total = (a - b for a, b in zip(after["machine"], before["machine"], strict=True))
    row.update(asdict(wrk))
    row.update({
        # Of all CPUs, whoever used them: 1.0 means the machine was saturated.
        "machine_busy": round(busy / total, 3) if total else None,
        "wall_seconds": round(after["t"] - before["t"], 2),
        "checks": checks if ext_authz else None,
        "authz_cpu_seconds": round(after["cpu"] - before["cpu"], 3) if tree else None,
        "cpu_us_per_check": (
            round((after["cpu"] - before["cpu"]) / checks * 1e6, 1) if tree and checks else None
        ),
        "proxy_cpu_us_per_request": proxy_us,
        "envoy_cpu_us_per_request": proxy_us if s.proxy == "envoy" else None,
        "upstream_cpu_us_per_request": (
            round((after["upstream_cpu"] - before["upstream_cpu"]) / wrk.requests * 1e6, 1)
            if upstream_tree and wrk.requests else None
        ),
        # Envoy's connections to the authorizer: HTTP/1.1 holds one per concurrent Check.
        "authz_connections": {
            "active": after["cx"].get("upstream_cx_active", 0),
            "opened": after["cx"].get("upstream_cx_total", 0)
            - before["cx"].get("upstream_cx_total", 0),
        } if via_envoy else None,
        # ext-authz's own count: "transport app method result" -> Checks in the run.
        "check_results": decided if s.authz in world.instances else None,
        "redis_commands": redis_delta,
        "redis_per_check": (
            round(sum(redis_delta.values()) / per, 4) if redis_port and per else None
        ),
        "idp_requests": idp_delta,
        "idp_per_1k_checks": (
            round(idp_total(idp_delta) / per * 1000, 2) if idp is not None and per else None
        ),
        # From a cold credential cache: probe + warm-up + run, one credential.
        "idp_verify_calls_cold": (
            sum(after["idp"].get(k, 0) for k in VERIFY_ENDPOINTS) if idp is not None else None
        ),
        "rss_mb_per_worker": tree.worker_rss_mb() if tree else None,
    })  # fmt: skip
    row["rss_mb"] = (
        round(sum(row["rss_mb_per_worker"]) / len(row["rss_mb_per_worker"]), 1)
        if row["rss_mb_per_worker"]
        else None
    )
    if s.expect == 200 and wrk.non_2xx:
        row["error"] = f"{wrk.non_2xx} of {wrk.requests} responses were not 2xx"
    # wrk counts 3xx as successes: a row expecting 200 must have been allowed throughout.
    not_allowed = {k: n for k, n in decided.items() if not k.endswith(" allow")}
    if s.expect == 200 and not_allowed:
        row["error"] = f"{sum(not_allowed.values())} Checks were not allowed: {not_allowed}"
    throttled = {k: n for k, n in decided.items() if k.endswith("throttled")}
    if throttled:  # the row would measure the guessing limit, not its own path
        row["error"] = f"{sum(throttled.values())} Checks were throttled: {throttled}"
    if s.expect != 200 and wrk.non_2xx != wrk.requests:
        row["error"] = f"only {wrk.non_2xx} of {wrk.requests} responses were non-2xx"
    return row
