"""The forward-auth contract between the shipped proxy configs and ext-authz (SPEC §10).

nginx, Caddy and Traefik can only copy headers they name from the auth answer onto
the upstream request. The shipped configs name these, and the tests hold them to it:

- `IDENTITY_HEADERS`: SPEC §7's table, what ext-authz sends for an identity;
- `AUTHENTIK_ONLY_HEADERS`: what authentik's outpost also sends and ext-authz does
  not (kept out of the upstream request all the same, so a client cannot pose them);
- `UPSTREAM_HEADERS`: what the proxy must copy from a 2xx answer: the identity
  headers, `Authorization` (the upstream Basic, or the client's own when it was not
  consumed; absent means removed) and `Cookie` (the client's cookies without
  ext-authz's; absent means removed).
"""

from __future__ import annotations

IDENTITY_HEADERS = (
    "X-authentik-username",
    "X-authentik-groups",
    "X-authentik-entitlements",
    "X-authentik-email",
    "X-authentik-name",
    "X-authentik-uid",
    "X-authentik-jwt",
    "X-authentik-meta-app",
    "X-authentik-meta-provider",
)
AUTHENTIK_ONLY_HEADERS = (
    "X-authentik-meta-jwks",
    "X-authentik-meta-outpost",
    "X-authentik-meta-version",
)
UPSTREAM_HEADERS = (*IDENTITY_HEADERS, "Authorization", "Cookie")

# authentik's outpost paths, as the proxies see them.
OUTPOST_PREFIX = "/outpost.goauthentik.io"
AUTH_PATHS = {
    "envoy": f"{OUTPOST_PREFIX}/auth/envoy",
    "nginx": f"{OUTPOST_PREFIX}/auth/nginx",
    "traefik": f"{OUTPOST_PREFIX}/auth/traefik",
    "caddy": f"{OUTPOST_PREFIX}/auth/caddy",
}
