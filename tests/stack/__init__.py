"""The test stack: launchers for every server of the test and demo world.

One description serves both pytest (fixtures in tests/conftest.py) and `make run`
(`python -m tests.stack`), so the demo is what is tested:

- proc      child processes, ports, readiness, log tails
- redis     a private redis-server
- echo      the echo upstream
- envoy     Envoy rendered from envoy/envoy.yaml.tmpl
- allow_all an allow-all ext_authz servicer (the benchmark floor)
- extauthz  an ext-authz replica (`python -m ext_authz serve`)
- idp       the test OIDC provider (Node, tests/idp)
- demo      the demo world: users, groups, clients, the ext-authz config
"""
