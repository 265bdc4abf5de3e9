"""The benchmark scenarios: which listener, which credential, what answer is expected.

A scenario names data only; `bench.world.World` turns `credential` into headers and
`bench.__main__` runs it. `authz` names the process tree whose CPU is charged to
each Check (None: Envoy alone decides). Order matters: `floor` comes early so every
later figure has its ratio, and cold-cache scenarios (`basic-app`, the bearers) run
once on a fresh Redis, so their IdP counts show "one IdP call per credential".

Listeners (bench.envoy): plain, floor (allow-all servicer), w1 (ext-authz
workers 1), w2 (workers 2), nolocal (workers 1, store.local_cache_ttl 0),
jwt (Envoy jwt_authn), basic (Envoy basic_auth).

Applications in ext-authz (tests.stack.demo world plus bench overrides):
  app        OIDC, create_session true: the cookie comes from here; Basic here makes a
             new session per cookie-less request
  app-nosess the same OIDC client, create_session false, negative_cache_ttl 0
  whoami     directory users (argon2id), create_session false
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    listener: str
    authz: str | None  # "allow_all" | "w1" | "w2" | "nolocal" | None
    host: str = "app"  # the application host name (Host: <host>.localhost:<port>)
    credential: str = "none"  # none | cookie | basic | jwt | opaque | miss
    expect: int = 200

    @property
    def needs_idp(self) -> bool:
        return self.authz not in (None, "allow_all") or self.credential in ("jwt", "opaque")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("plain", "Envoy alone, no ext_authz (direct_response)", "plain", None),
    Scenario("floor", "Envoy + allow-all grpcio servicer (the floor)", "floor", "allow_all"),
    Scenario("session", "cached session cookie (app), workers 1", "w1", "w1",
             credential="cookie"),
    Scenario("session-w2", "cached session cookie (app), workers 2", "w2", "w2",
             credential="cookie"),
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
)  # fmt: skip

BY_NAME = {s.name: s for s in SCENARIOS}

# The scenarios bench.profile samples with py-spy (the floor first: the baseline).
PROFILED = ("floor", "session", "basic-app", "basic-directory")


def select(names: list[str] | None) -> list[Scenario]:
    """The scenarios named (in the canonical order), or all of them."""
    if not names:
        return list(SCENARIOS)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(BY_NAME)}")
    return [s for s in SCENARIOS if s.name in names]
