"""The repository's documentation stands alone: its links resolve, and it points to no
file outside the repository.

- Every relative link in a markdown file of the repository (README.md, docs/*.md, the
  READMEs of deploy/, envoy/, bench/ and tests/idp/) names an existing file, and a
  `#anchor` into a markdown file names one of its headings (GitHub's anchor rules).
- No file outside ext_authz/ and tests/ mentions the workspace's `../shared/` (the
  SPEC.md and notes a user who clones the repository cannot read), and the user-facing
  documents and shipped configs cite `docs/reference.md` sections, never "SPEC §N".
- The example config of reference §3 is a valid config whose values are the defaults.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher

from ext_authz.config import parse_settings
from ext_authz.crypto import hash_token

ROOT = Path(__file__).resolve().parents[2]

# Where the developers' notes may cite the workspace's SPEC.md (code comments and
# docstrings), and what is not the project's own text.
DEVELOPER_DIRS = frozenset({"ext_authz", "tests"})
NOT_OURS = frozenset(
    {".git", ".venv", "node_modules", "__pycache__", "ext_authz.egg-info"}
    | {".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"}
)

# The user's documents and the configs they copy: these cite docs/reference.md.
USER_FACING = ("README.md", "docs", "deploy", "examples", "envoy", "bench/README.md")

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _project_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if any(part in NOT_OURS for part in rel.parts) or not path.is_file():
            continue
        yield path


def _markdown_files() -> list[Path]:
    return [p for p in _project_files() if p.suffix == ".md"]


def _without_code(text: str) -> str:
    """The prose of a markdown file: fenced blocks and code spans emptied (a `# comment`
    in a shell block is no heading, a `[x](y)` in code no link)."""
    text = _FENCE.sub("", text)
    return _CODE_SPAN.sub("``", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation gone (but `-`
    and `_`), spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives a markdown file's headings (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for match in _HEADING.finditer(_FENCE.sub("", path.read_text())):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[str]:
    return _LINK.findall(_without_code(path.read_text()))


def broken_links(path: Path) -> list[str]:
    """The relative links of one markdown file that do not resolve, with the reason."""
    problems: list[str] = []
    for target in links(path):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # an external URL: not ours to check offline
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if ROOT not in dest.parents and dest != ROOT:
            problems.append(f"{target}: outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def test_the_checker_sees_links_headings_and_code() -> None:
    """The helpers above find what they must, so the tests below cannot pass vacuously."""
    assert slug("4. The decision, request by request") == "4-the-decision-request-by-request"
    assert slug("Forward auth (nginx, Caddy, Traefik, Envoy `http_service`)") == (
        "forward-auth-nginx-caddy-traefik-envoy-http_service"
    )
    assert slug("Envoy 1.40 facts the configs rely on") == "envoy-140-facts-the-configs-rely-on"
    sample = "See [a](x.md#y) and `[b](not-a-link)`.\n```sh\n# no heading\n[c](nor-this)\n```\n"
    assert _LINK.findall(_without_code(sample)) == ["x.md#y"]
    readme_links = links(ROOT / "README.md")
    assert "docs/reference.md" in readme_links
    assert "4-the-decision-request-by-request" in anchors(ROOT / "docs" / "reference.md")


def test_the_markdown_files_are_the_ones_users_read() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _markdown_files()}
    assert {"README.md", "docs/reference.md", "docs/deploy.md", "bench/README.md"} <= names


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_reference_has_one_heading_per_section() -> None:
    """Other documents link `docs/reference.md#N-...`: the numbered sections stay."""
    found = anchors(ROOT / "docs" / "reference.md")
    numbered = sorted(int(a.split("-", 1)[0]) for a in found if a.split("-", 1)[0].isdigit())
    assert numbered == list(range(1, 13)), numbered


def test_nothing_outside_the_code_points_to_the_workspace() -> None:
    offenders = []
    for path in _project_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] in DEVELOPER_DIRS:
            continue
        data = path.read_bytes()
        for needle in (b"../shared/", b"/work/shared"):
            if needle in data:
                offenders.append(f"{rel.as_posix()} mentions {needle.decode()}")
    assert not offenders, offenders


def test_user_documents_cite_the_reference_not_the_spec() -> None:
    offenders = []
    for entry in USER_FACING:
        base = ROOT / entry
        paths = [base] if base.is_file() else [p for p in _project_files() if base in p.parents]
        for path in paths:
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if "SPEC §" in line or "SPEC.md" in line:
                    offenders.append(f"{path.relative_to(ROOT).as_posix()}:{number}")
    assert not offenders, "cite docs/reference.md §N instead: " + ", ".join(offenders)


def _reference_config() -> dict[str, Any]:
    """The YAML block of reference §3, its placeholder hashes replaced by real ones."""
    text = (ROOT / "docs" / "reference.md").read_text()
    section = text.split("## 3. Configuration", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None, "reference §3 lost its example config"
    data: dict[str, Any] = yaml.safe_load(block.group(1))
    fast = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    user = data["directory"]["users"][0]
    assert user["app_passwords"] == ["$argon2id$v=19$..."], "the placeholders moved"
    user["app_passwords"] = [fast.hash("app-password")]
    user["tokens"] = [hash_token(_SECRET.encode(), "static-token", fast)]
    return data


_SECRET = "reference-secret-0123456789abcdef-0123"


def test_the_reference_example_config_is_valid_and_shows_the_defaults() -> None:
    """Reference §3 says its example's values are the defaults: a config that keeps only
    the required keys must come out the same, key for key."""
    environ = {"EXT_AUTHZ_SECRET": _SECRET, "WHOAMI_CLIENT_SECRET": "client-secret"}
    shown = parse_settings(_reference_config(), environ)
    app = shown.applications[0]
    minimal = parse_settings(
        {
            "secret": _SECRET,
            "applications": [
                {
                    "name": app.name,
                    "external_host": app.external_host,
                    "oidc": {
                        "issuer": app.oidc.issuer if app.oidc else "",
                        "client_id": app.oidc.client_id if app.oidc else "",
                        "client_secret": "client-secret",
                    },
                }
            ],
        },
        {},
    )
    assert shown.server == minimal.server
    assert shown.store == minimal.store
    default = minimal.applications[0]
    for key in ("mode", "unauthenticated", "session_lifetime", "intercept_header_auth"):
        assert getattr(app, key) == getattr(default, key), key
    assert app.receive == default.receive
    assert app.send == default.send
    assert app.oidc is not None and default.oidc is not None
    for key in ("client_auth", "scopes", "attributes_claim", "timeout"):
        assert getattr(app.oidc, key) == getattr(default.oidc, key), key
