"""The benchmark world: what runs on loopback while the scenarios are driven.

Started lazily from what the chosen scenarios need, with the tests.stack launchers:
redis-server (private port, no persistence), the test IdP, the allow-all servicer
(the floor), the allow-all httptools server (the HTTP floor, bench.http_servers
`httptools-asyncio`: the default loop, as ext-authz runs), ext-authz instances (`w1`:
workers 1; `w2`: workers 2; `nolocal`: workers 1 with store.local_cache_ttl 0; all on
the same Redis and secret, so one session cookie is valid at each; each also serves
forward auth on `server.forward_auth_listen`), one Envoy (bench.envoy) with a listener
per target, and for the nginx rows (bench.nginx) a tiny nginx upstream plus one nginx
per nginx listener. `stop()` stops everything it started, newest first.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench import nginx as bench_nginx
from bench.envoy import FORWARD_AUTH_PING, BenchEnvoy, Listener
from bench.measure import ProcessTree, check_results, http_checks
from bench.scenarios import Scenario
from tests.stack.allow_all import AllowAllServer
from tests.stack.demo import (
    ALICE,
    OIDC_CLIENT_ID,
    OIDC_CLIENT_SECRET,
    build_idp,
    ext_authz_config,
    host_url,
    merge_config,
)
from tests.stack.extauthz import ExtAuthz
from tests.stack.idp import IdP
from tests.stack.nginx import Nginx
from tests.stack.proc import ManagedProcess, free_port
from tests.stack.redis import RedisServer

USER = ALICE  # every credential of the benchmark is alice's
# 19 rules on other paths (each searched in vain), then one that admits USER's group.
ACCESS_RULES: list[dict[str, Any]] = [
    *({"paths": [f"^/area-{i}/"], "methods": ["GET", "POST"], "groups": ["admins"],
       "emails": ["@example.com"]} for i in range(19)),
    {"groups": list(USER.groups)},
]  # fmt: skip
HTTP_FLOOR_KIND = "httptools-asyncio"  # bench.http_servers: the server ext-authz uses, its loop
# The IdP's access-token lifetime here. A session made from a credential ends with the
# credential's token (SPEC §5): with the test IdP's default (300 s) the one session
# cookie of a run, and the minted JWT, expired before a full run (about 9 minutes)
# was over, and the last rows and the profiles measured sign-ins being throttled.
TOKEN_TTL = 3600


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def htpasswd_sha(username: str, password: str) -> str:
    """An htpasswd line in the {SHA} format Envoy's basic_auth filter accepts."""
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()  # noqa: S324
    return f"{username}:{{SHA}}{digest}"


class World:
    def __init__(
        self, scenarios: Sequence[Scenario], workdir: Path, envoy_concurrency: int = 1,
        log_level: str = "info",
    ) -> None:  # fmt: skip
        self.workdir = Path(workdir)
        self.envoy_concurrency = envoy_concurrency
        self.log_level = log_level
        self.listeners_needed = {s.listener for s in scenarios}
        self.nginx_needed = {s.listener for s in scenarios if s.proxy == "nginx"}
        self.authz_needed = {s.authz for s in scenarios if s.authz}
        # Which ext-authz instance each nginx listener asks (nginx-plain: none).
        self.nginx_authz = {s.listener: s.authz for s in scenarios if s.proxy == "nginx"}
        if any(s.credential == "cookie" for s in scenarios):
            # The session cookie is made by a Basic request through w1 (app).
            self.listeners_needed.add("w1")
            self.authz_needed.add("w1")
        self.idp_needed = any(s.needs_idp for s in scenarios)
        # The Envoy port every ext-authz config names in external_host; the Host
        # header of each request names it too, whatever listener wrk connects to.
        self.ports = {name: free_port() for name in self.listeners_needed | {"w1"}}
        self.redis: RedisServer | None = None
        self.idp: IdP | None = None
        self.allow_all: AllowAllServer | None = None
        self.allow_all_http: ManagedProcess | None = None
        self.allow_all_http_port = free_port()
        self.instances: dict[str, ExtAuthz] = {}
        self.envoy: BenchEnvoy | None = None
        self.nginx_upstream: bench_nginx.UpstreamNginx | None = None
        self.nginx: dict[str, Nginx] = {}
        self._started: list[Any] = []
        self._creds: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> World:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        ext_authz_needed = self.authz_needed - {"allow_all", "allow_all_http"}
        if ext_authz_needed:
            self.redis = self._keep(RedisServer(self.workdir, name="bench-redis").start())
        if self.idp_needed:
            idp = build_idp(self.workdir, [self.ports["w1"]])
            idp.access_token_ttl = TOKEN_TTL
            self.idp = self._keep(idp.start())
        if "allow_all" in self.authz_needed:
            floor = AllowAllServer(self.workdir, name="bench-allow-all")
            self.allow_all = self._keep(floor.start())
        if "allow_all_http" in self.authz_needed:
            self.allow_all_http = self._keep(self._start_http_floor())
        for name in sorted(ext_authz_needed):
            instance = ExtAuthz(self._config(name), self.workdir, name=f"bench-ext-authz-{name}")
            self.instances[name] = self._keep(instance.start(60.0))
        listeners = [self._listener(name)
                     for name in sorted(self.listeners_needed - self.nginx_needed)]  # fmt: skip
        self.envoy = self._keep(
            BenchEnvoy(listeners, self.workdir, concurrency=self.envoy_concurrency).start()
        )
        if self.nginx_needed:
            upstream = bench_nginx.UpstreamNginx(self.workdir)
            self.nginx_upstream = self._keep(upstream.start())
            for name in sorted(self.nginx_needed):
                self.nginx[name] = self._keep(self._nginx(name).start())

    def _start_http_floor(self) -> ManagedProcess:
        port = self.allow_all_http_port
        proc = ManagedProcess(
            "bench-allow-all-http",
            [sys.executable, "-m", "bench.http_servers", HTTP_FLOOR_KIND, "--port", str(port)],
            self.workdir / "bench-allow-all-http.log",
        )  # fmt: skip

        def serving() -> bool:
            url = f"http://127.0.0.1:{port}{FORWARD_AUTH_PING}"
            return httpx.get(url, timeout=1.0).status_code == 200

        proc.start(serving, 30.0, f"allow-all httptools serving on {port}")
        return proc

    def _nginx(self, name: str) -> Nginx:
        assert self.nginx_upstream is not None
        port, upstream = self.ports[name], self.nginx_upstream.address
        authz = self.nginx_authz.get(name)
        if authz is None:
            return bench_nginx.plain(upstream=upstream, workdir=self.workdir, listen_port=port,
                                     name=f"bench-{name}")  # fmt: skip
        return bench_nginx.shipped(upstream=upstream, listen_port=port, workdir=self.workdir,
                    ext_authz=self.instances[authz].forward_auth_address,
                    name=f"bench-{name}")  # fmt: skip

    def _keep(self, part: Any) -> Any:
        self._started.append(part)
        return part

    def stop(self) -> None:
        for part in reversed(self._started):
            with contextlib.suppress(Exception):
                part.stop()
        self._started.clear()

    def __enter__(self) -> World:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration -----------------------------------------------------------------

    def _config(self, name: str) -> dict[str, Any]:
        assert self.redis is not None
        port = self.ports["w1"]
        base = ext_authz_config(port, self.redis.url, self.idp, key_prefix="bench:",
                                log_level=self.log_level)  # fmt: skip
        apps: dict[str, Any] = {"whoami": {"receive": {"create_session": False}}}
        if self.idp is not None:
            apps["app-nosess"] = {
                "external_host": host_url("app-nosess", port),
                "oidc": {
                    "issuer": self.idp.issuer,
                    "client_id": OIDC_CLIENT_ID,
                    "client_secret": OIDC_CLIENT_SECRET,
                    "client_auth": "client_secret_post",
                },
                # No guessing limit (SPEC §5): the `miss` row sends a wrong password
                # per request to measure a verification at the IdP each time; with the
                # limit, after 10 it measured the 429 of a throttled client instead.
                "receive": {"create_session": False, "negative_cache_ttl": 0,
                            "throttle": {"failures": 0}},
            }
            # `app` with 20 access rules (SPEC §12), the last one deciding: what a
            # cached-session Check pays for them (`session-access` against `session`).
            apps["app-access"] = {
                "external_host": host_url("app-access", port),
                "oidc": dict(apps["app-nosess"]["oidc"]),
                "access": ACCESS_RULES,
            }
        overrides: dict[str, Any] = {
            "server": {"workers": 2 if name == "w2" else 1},
            "applications": apps,
        }
        if name == "nolocal":
            overrides["store"] = {"local_cache_ttl": 0}
        return merge_config(base, overrides)

    def _listener(self, name: str) -> Listener:
        port = self.ports[name]
        if name == "plain":
            return Listener(name, "plain", port)
        if name == "floor":
            assert self.allow_all is not None
            return Listener(name, "ext_authz", port, grpc_ports=(self.allow_all.port,))
        if name in self.instances:
            return Listener(name, "ext_authz", port, grpc_ports=(self.instances[name].port,))
        if name == "http-floor":
            return Listener(name, "forward_auth", port, http_ports=(self.allow_all_http_port,))
        if name.endswith("-http") and name.removesuffix("-http") in self.instances:
            instance = self.instances[name.removesuffix("-http")]
            assert instance.forward_auth_port is not None
            return Listener(name, "forward_auth", port, http_ports=(instance.forward_auth_port,))
        if name == "jwt":
            assert self.idp is not None
            jwks = httpx.get(self.idp.jwks_uri, timeout=5.0).text
            return Listener(name, "jwt_authn", port, jwks=jwks, issuer=self.idp.issuer,
                            audience=OIDC_CLIENT_ID)  # fmt: skip
        if name == "basic":
            return Listener(name, "basic_auth", port,
                            htpasswd=htpasswd_sha(USER.username, USER.app_password))  # fmt: skip
        raise ValueError(f"no listener {name!r}")

    # -- what scenarios use ------------------------------------------------------------

    def url(self, scenario: Scenario) -> str:
        return f"http://127.0.0.1:{self.ports[scenario.listener]}/bench"

    def host_header(self, scenario: Scenario) -> str:
        return f"{scenario.host}.localhost:{self.ports['w1']}"

    def headers(self, scenario: Scenario) -> list[tuple[str, str]]:
        """The request headers (secrets included: never print them)."""
        out = [("Host", self.host_header(scenario))]
        cred = scenario.credential
        if cred == "basic":
            out.append(("Authorization", _basic(USER.username, USER.app_password)))
        elif cred == "jwt":
            out.append(("Authorization", "Bearer " + self._token("jwt")))
        elif cred == "opaque":
            out.append(("Authorization", "Bearer " + self._token("opaque")))
        elif cred == "cookie":
            out.append(("Cookie", self._cookie(scenario.host)))
        elif cred == "miss":  # the probe's header; wrk's Lua script makes its own
            out.append(("Authorization", _basic(USER.username, "wrong-probe-password")))
        return out

    def _token(self, fmt: str) -> str:
        if fmt not in self._creds:
            assert self.idp is not None
            # RS256 on purpose (the demo client signs HS256, as authentik does): the
            # rows compare with Envoy's jwt_authn, which verifies against the JWKS.
            alg = "RS256" if fmt == "jwt" else None
            self._creds[fmt] = self.idp.mint_access_token(
                OIDC_CLIENT_ID, USER.username, fmt=fmt, alg=alg
            )
        return self._creds[fmt]

    def _cookie(self, host: str = "app") -> str:
        """name=value of a session of `host`'s application, made by one Basic request
        (create_session)."""
        slot = "cookie" if host == "app" else f"cookie-{host}"
        if slot not in self._creds:
            port = self.ports["w1"]
            if "w1" not in self.listeners_needed:
                raise RuntimeError("the session cookie is made through listener w1")
            r = httpx.get(
                f"http://127.0.0.1:{port}/login",
                headers={"Host": f"{host}.localhost:{port}",
                         "Authorization": _basic(USER.username, USER.app_password)},
                timeout=15.0,
            )  # fmt: skip
            cookies = [v.split(";", 1)[0] for k, v in r.headers.multi_items()
                       if k.lower() == "set-cookie"]  # fmt: skip
            if r.status_code != 200 or not cookies:
                raise RuntimeError(f"no session cookie from {host} (HTTP {r.status_code})")
            self._creds[slot] = cookies[0]
        return self._creds[slot]

    def probe(self, scenario: Scenario) -> int:
        """One request as wrk will send it; its status code."""
        r = httpx.get(self.url(scenario), headers=self.headers(scenario), timeout=15.0)
        return r.status_code

    def authz_tree(self, scenario: Scenario) -> ProcessTree | None:
        if scenario.authz is None:
            return None
        if scenario.authz == "allow_all":
            assert self.allow_all is not None and self.allow_all.process.pid is not None
            return ProcessTree(self.allow_all.process.pid)
        if scenario.authz == "allow_all_http":
            assert self.allow_all_http is not None and self.allow_all_http.pid is not None
            return ProcessTree(self.allow_all_http.pid)
        pid = self.instances[scenario.authz].process.pid
        assert pid is not None
        return ProcessTree(pid)

    def envoy_tree(self) -> ProcessTree:
        assert self.envoy is not None and self.envoy.pid is not None
        return ProcessTree(self.envoy.pid)

    def proxy_tree(self, scenario: Scenario) -> ProcessTree:
        """The proxy wrk talks to: Envoy, or the scenario's nginx (master and worker)."""
        if scenario.proxy == "nginx":
            pid = self.nginx[scenario.listener].process.pid
            assert pid is not None
            return ProcessTree(pid)
        return self.envoy_tree()

    def upstream_tree(self, scenario: Scenario) -> ProcessTree | None:
        """The application behind the proxy, when it is a process (nginx rows)."""
        if scenario.proxy == "nginx":
            assert self.nginx_upstream is not None and self.nginx_upstream.pid is not None
            return ProcessTree(self.nginx_upstream.pid)
        return None

    def check_results(self, scenario: Scenario) -> dict[str, int] | None:
        """The scenario's ext-authz instance's decisions so far, by transport, app,
        method and result (None for the floors and Envoy-only rows)."""
        instance = self.instances.get(scenario.authz or "")
        if instance is None or instance.http_url is None:
            return None
        return check_results(instance.http_url)

    def checks(self, scenario: Scenario, results: dict[str, int] | None = None) -> int:
        """Decisions so far for the scenario's listener: Envoy's ext_authz counters, or
        (nginx, which counts no subrequests) the ext-authz instance's own HTTP Checks
        (from `results`, a `check_results` reading, when given)."""
        if scenario.proxy == "nginx":
            return http_checks(results if results is not None else
                               self.check_results(scenario) or {})  # fmt: skip
        assert self.envoy is not None
        return self.envoy.checks(scenario.listener)
