"""The benchmark scenarios: which listener, which credential, what answer is expected.

A scenario names data only; `bench.world.World` turns `credential` into headers and
`bench.__main__` runs it. `authz` names the process tree whose CPU is charged to
each Check (None: the proxy alone decides). Order matters: `floor` comes early so
every later figure has its ratio, and cold-cache scenarios (`basic-app`, the bearers)
run once on a fresh Redis, so their IdP counts show "one IdP call per credential"; the
forward-auth rows come last, so they reuse those cached credentials (as `session` and
`http-session` share one cached session) rather than warming them for the gRPC rows.

Listeners (bench.envoy): plain, floor (allow-all servicer), w1 (ext-authz
workers 1), w2 (workers 2), nolocal (workers 1, store.local_cache_ttl 0),
jwt (Envoy jwt_authn), basic (Envoy basic_auth); over HTTP/1.1 forward auth (SPEC
§10, Envoy `http_service` configured from envoy/envoy-http.yaml.tmpl): http-floor (the
httptools allow-all server of bench.http_servers), w1-http (w1's forward-auth port).
nginx (`proxy="nginx"`, bench.world): nginx-plain (no auth_request), nginx-w1 (the
shipped deploy/nginx/nginx.conf.tmpl asking w1's forward-auth port); both proxy to a
tiny nginx upstream that answers `return 200`.

Applications in ext-authz (tests.stack.demo world plus bench overrides):
  app        OIDC, create_session true: the cookie comes from here; Basic here makes a
             new session per cookie-less request
  app-nosess the same OIDC client, create_session false, negative_cache_ttl 0, no
             guessing limit (receive.throttle.failures 0, for `miss`)
  app-access `app` with 20 access rules (SPEC §12), the last deciding
  whoami     directory users (argon2id), create_session false
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    listener: str
    # "allow_all" | "allow_all_http" | "w1" | "w2" | "nolocal" | None
    authz: str | None
    host: str = "app"  # the application host name (Host: <host>.localhost:<port>)
    credential: str = "none"  # none | cookie | basic | jwt | opaque | miss
    expect: int = 200
    proxy: str = "envoy"  # envoy | nginx: who wrk talks to
    transport: str = "grpc"  # grpc | http: how the proxy asks the authorizer (if any)

    @property
    def needs_idp(self) -> bool:
        return (self.authz not in (None, "allow_all", "allow_all_http")
                or self.credential in ("jwt", "opaque"))  # fmt: skip

    @property
    def baseline(self) -> str:
        """The row without any authorization in front of the same proxy."""
        return "nginx-plain" if self.proxy == "nginx" else "plain"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("plain", "Envoy alone, no ext_authz (direct_response)", "plain", None),
    Scenario("floor", "Envoy + allow-all grpcio servicer (the floor)", "floor", "allow_all"),
    Scenario("session", "cached session cookie (app), workers 1", "w1", "w1",
             credential="cookie"),
    Scenario("session-w2", "cached session cookie (app), workers 2", "w2", "w2",
             credential="cookie"),
    Scenario("session-access", "cached session cookie, 20 access rules (app-access), "
             "workers 1", "w1", "w1", host="app-access", credential="cookie"),
    Scenario("session-nolocal", "cached session cookie, local_cache_ttl 0 (Redis each Check)",
             "nolocal", "nolocal", credential="cookie"),
    Scenario("basic-app", "Basic, authentik app password, cached, no session (app-nosess)",
             "w1", "w1", host="app-nosess", credential="basic"),
    Scenario("basic-directory", "Basic, directory argon2id password, cached, no session "
             "(whoami)", "w1", "w1", host="whoami", credential="basic"),
    Scenario("basic-new-session", "Basic cached, create_session true: a new session per "
             "cookie-less request (app)", "w1", "w1", host="app", credential="basic"),
    Scenario("bearer-jwt", "Bearer JWT (RS256), cached (app-nosess)", "w1", "w1",
             host="app-nosess", credential="jwt"),
    Scenario("bearer-introspect", "Bearer opaque via introspection, cached (app-nosess)",
             "w1", "w1", host="app-nosess", credential="opaque"),
    Scenario("miss", "Basic with a fresh wrong password per request: IdP every Check "
             "(negative_cache_ttl 0)", "w1", "w1", host="app-nosess", credential="miss",
             expect=401),
    Scenario("native-jwt", "Envoy jwt_authn (local_jwks), same JWT", "jwt", None,
             credential="jwt"),
    Scenario("native-basic", "Envoy basic_auth ({SHA} htpasswd), same Basic", "basic", None,
             credential="basic"),
    # HTTP/1.1 forward auth (issue 10): Envoy http_service, then nginx auth_request.
    Scenario("http-floor", "Envoy http_service + allow-all httptools server (the HTTP floor)",
             "http-floor", "allow_all_http", transport="http"),
    Scenario("http-session", "http_service: cached session cookie (app), workers 1",
             "w1-http", "w1", credential="cookie", transport="http"),
    Scenario("http-session-access", "http_service: cached session cookie, 20 access "
             "rules (app-access), workers 1", "w1-http", "w1", host="app-access",
             credential="cookie", transport="http"),
    Scenario("http-basic", "http_service: Basic, app password, cached, no session "
             "(app-nosess)", "w1-http", "w1", host="app-nosess", credential="basic",
             transport="http"),
    Scenario("http-jwt", "http_service: Bearer JWT (RS256), cached (app-nosess)", "w1-http",
             "w1", host="app-nosess", credential="jwt", transport="http"),
    Scenario("nginx-plain", "nginx alone, no auth_request (upstream: nginx return 200)",
             "nginx-plain", None, proxy="nginx"),
    Scenario("nginx-session", "nginx auth_request (deploy/nginx/nginx.conf.tmpl): cached "
             "session cookie (app)", "nginx-w1", "w1", credential="cookie", proxy="nginx",
             transport="http"),
)  # fmt: skip

BY_NAME = {s.name: s for s in SCENARIOS}

# The scenarios bench.profile samples with py-spy (each floor before the rows compared
# with it: floor for gRPC, http-floor for HTTP forward auth).
PROFILED = ("floor", "session", "basic-app", "basic-directory", "http-floor", "http-session")


def select(names: list[str] | None) -> list[Scenario]:
    """The scenarios named (in the canonical order), or all of them."""
    if not names:
        return list(SCENARIOS)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(BY_NAME)}")
    chosen = [s for s in SCENARIOS if s.name in names]
    # The forward-auth rows are read against their plain proxy and the HTTP floor:
    # those come along (the caller adds `floor` for every selection).
    needed = {s.baseline for s in chosen if s.proxy == "nginx" or s.transport == "http"}
    needed |= {"http-floor" for s in chosen if s.transport == "http"}
    return [s for s in SCENARIOS if s.name in names or s.name in needed]
