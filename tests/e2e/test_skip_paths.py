"""Skip paths through real Envoy (SPEC §4 step 6, issue 11 finding 4).

Application `whoami` needs no authentication under `^/public/`. A path that only
*looks* as if it were under `/public/` (dot segments, encoded dots and slashes,
`;` parameters) must not pass without credentials, and the upstream must receive
the path that was judged: Envoy normalises it (`normalize_path`, `merge_slashes`,
`path_with_escaped_slashes_action`) and ext-authz searches the skip regexes in its
own normalisation of what Envoy sends.

Each attack is also sent through an Envoy whose config does *not* normalise (the
shipped template with those three lines taken out, as the demo config was before):
ext-authz's own normalisation alone must then refuse it.

Requests go out through http.client with the target exactly as written: httpx would
remove the dot segments itself before sending.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.stack.demo import Stack, ext_authz_config
from tests.stack.echo import EchoServer
from tests.stack.envoy import Envoy
from tests.stack.extauthz import ExtAuthz
from tests.stack.proc import free_port
from tests.support import raw_request

pytestmark = pytest.mark.e2e

WHOAMI = "whoami.localhost"
_NORMALISATION = re.compile(
    r"^[ \t]*(normalize_path|merge_slashes|path_with_escaped_slashes_action):.*\n", re.MULTILINE
)


class RawPathEnvoy(Envoy):
    """The test stack's Envoy without path normalisation: ext-authz sees, and the
    upstream receives, the path as the client sent it."""

    def render(self) -> Path:
        path = super().render()
        text, count = _NORMALISATION.subn("", path.read_text())
        assert count == 3, "the template's path normalisation settings moved"
        path.write_text(text)
        return path


@pytest.fixture(scope="module")
def raw_path_port(workdir: Path, echo_server: EchoServer) -> Iterator[int]:
    """The Envoy port of whoami behind a RawPathEnvoy (one replica, no IdP)."""
    port = free_port()
    where = workdir / "raw-paths"
    replica = ExtAuthz(ext_authz_config(port), where, name="raw-paths-ext-authz")
    envoy = RawPathEnvoy(
        ext_authz_ports=[replica.port],
        echo_port=echo_server.port,
        workdir=where,
        listen_port=port,
        name="raw-paths-envoy",
    )
    try:
        replica.start()
        envoy.start()
        yield port
    finally:
        envoy.stop()
        replica.stop()


def get(port: int, target: str) -> tuple[int, dict[str, list[str]], str]:
    """GET `target` on whoami, following Envoy's own path redirects (an escaped slash
    is answered 307 to the unescaped path, UNESCAPE_AND_REDIRECT) at most twice."""
    host = f"{WHOAMI}:{port}"
    for _ in range(3):
        status, headers, body = raw_request(port, target, host=host)
        location = headers.get("location", [""])[0]
        if status not in (301, 307, 308) or not location:
            return status, headers, body
        parts = urlsplit(location)
        assert parts.netloc in ("", host), location  # Envoy's redirect, not the IdP's
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    raise AssertionError(f"redirect loop at {target}")


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/public/../secret", id="dot-dot"),
        pytest.param("/public/x/../../secret", id="dot-dot-twice"),
        pytest.param("/public/%2e%2e/secret", id="encoded-dots"),
        pytest.param("/public/%2E%2E/secret", id="encoded-dots-upper"),
        pytest.param("/public/.%2e/secret", id="half-encoded-dots"),
        pytest.param("/public/..%2fsecret", id="encoded-slash"),
        pytest.param("/public/..%2Fsecret", id="encoded-slash-upper"),
        pytest.param("/public/%2e%2e%2fsecret", id="all-encoded"),
        pytest.param("/public/..%5csecret", id="encoded-backslash"),
        pytest.param("/public/..;/secret", id="dot-dot-semicolon"),
        pytest.param("/public/..;x=1/secret", id="dot-dot-parameter"),
        pytest.param("/public/x;/../../secret", id="parameter-then-dot-dot"),
        pytest.param("/public/../secret?next=/public/", id="dot-dot-with-query"),
    ],
)
@pytest.mark.parametrize("envoy", ["shipped", "not-normalising"])
def test_a_path_outside_the_skip_path_needs_credentials(
    request: pytest.FixtureRequest, envoy: str, target: str
) -> None:
    if envoy == "shipped":
        port = request.getfixturevalue("stack").port
    else:
        port = request.getfixturevalue("raw_path_port")
    status, headers, body = get(port, target)
    # whoami has no OIDC: 401 from ext-authz, never the echo upstream's 200.
    assert status == 401, (status, body[:300])
    assert 'Basic realm="whoami"' in headers.get("www-authenticate", [])


@pytest.mark.parametrize(
    ("target", "upstream_path"),
    [
        pytest.param("/public/page", "/public/page", id="plain"),
        pytest.param("/public/a%2e", "/public/a.", id="encoded-dot-in-a-name"),
        pytest.param("/public/%7Euser", "/public/~user", id="encoded-tilde"),
        pytest.param("/public//x", "/public/x", id="double-slash"),
        pytest.param("/public/./x", "/public/x", id="dot"),
        pytest.param("/public/x/../y", "/public/y", id="dot-dot-inside"),
        pytest.param("/secret/../public/x", "/public/x", id="dot-dot-into-public"),
        pytest.param("/public/x;v=1", "/public/x;v=1", id="parameter"),
        pytest.param("/public/a%20b?q=1", "/public/a%20b?q=1", id="other-escapes-kept"),
    ],
)
def test_the_skip_path_passes_and_the_upstream_sees_the_judged_path(
    stack: Stack, target: str, upstream_path: str
) -> None:
    status, _, body = get(stack.port, target)
    assert status == 200, (status, body[:300])
    echoed = json.loads(body)
    # Envoy's normalisation (the path the upstream receives) and ours (the one the
    # skip regex was searched in) agree; a `;` parameter passes as sent.
    assert echoed["path"].lower() == upstream_path.lower()


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/public/a%2e", id="encoded-dot-in-a-name"),
        pytest.param("/public//x", id="double-slash"),
        pytest.param("/public/x/../y", id="dot-dot-inside"),
        pytest.param("/public/x;v=1", id="parameter"),
    ],
)
def test_legitimate_variants_pass_behind_an_envoy_that_does_not_normalise(
    raw_path_port: int, target: str
) -> None:
    status, _, body = get(raw_path_port, target)
    assert status == 200, (status, body[:300])
    assert json.loads(body)["path"] == target  # this Envoy passes the path as sent
