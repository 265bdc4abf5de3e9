"""The ext-authz benchmark (`make bench` = `python -m bench`); see bench/README.md.

Modules: scenarios (what is measured), world (what runs on loopback), envoy (the
benchmark's Envoy config: one listener per target, direct_response upstream), runner
(one scenario: probe, warm-up, measured wrk run), measure (wrk, /proc, Redis, IdP
counters), report (ratios to the floor, goals, table, JSON/Markdown/PNG), profile
(py-spy summaries, PROFILE.md).
"""
