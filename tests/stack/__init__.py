"""The test stack: launchers for every server of the test and demo world.

One description serves both pytest (fixtures in tests/conftest.py) and `make run`
(`python -m tests.stack`), so the demo is what is tested:

- proc      child processes, ports, readiness, log tails
- redis     a private redis-server
- echo      the echo upstream
- envoy     Envoy rendered from envoy/envoy.yaml.tmpl (or envoy-http.yaml.tmpl)
- nginx     nginx rendered from deploy/nginx/*.conf.tmpl (auth_request)
- caddy     Caddy rendered from deploy/caddy/Caddyfile (forward_auth)
- traefik   Traefik's forwardAuth replayed from deploy/traefik/dynamic.yml
- templates the `${name}` placeholders of the shipped proxy configs
- forward_auth the headers the proxy configs copy (the contract with ext-authz)
- stub_auth a recording forward-auth stub for the proxy tests
- allow_all an allow-all ext_authz servicer (the benchmark floor)
- extauthz  an ext-authz replica (`python -m ext_authz serve`)
- idp       the test OIDC provider (Node, tests/idp)
- demo      the demo world: users, groups, clients, the ext-authz config
"""
