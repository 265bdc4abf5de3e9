"""The dependency direction of STYLE.md, checked on the source (ast), not by importing.

- ext_authz/core/ imports nothing with I/O or side effects; `ext_authz.config` only
  under `if TYPE_CHECKING:` (the core reads settings, it never loads them).
- ext_authz/_proto (generated protobuf) is imported only by the Envoy adapter, the
  gRPC servicer and the server.
- adapters do not import each other, except through the pairs listed below.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ext_authz"

CORE_FORBIDDEN = (
    "ext_authz.adapters",
    "ext_authz.service",
    "ext_authz.app",
    "ext_authz.server",
    "ext_authz._proto",
    "grpc",
    "grpc_health",
    "httpx",
    "redis",
    "asyncio",
    "logging",
    "time",
    "random",
    "secrets",
    "socket",
    "os",
    "subprocess",
    "threading",
    "google.protobuf",
    "ext_authz.logs",
    "ext_authz.metrics",
    "ext_authz.sessions",
    "ext_authz.local_cache",
)
TYPE_CHECKING_ONLY = ("ext_authz.config",)

PROTO_IMPORTERS = {
    "ext_authz/adapters/envoy.py",
    "ext_authz/adapters/grpc_servicer.py",
    "ext_authz/server.py",
}

# (importer, imported) adapter module pairs that are part of the design.
ADAPTER_PAIRS_ALLOWED = {
    ("store_factory", "memory_store"),
    ("store_factory", "redis_store"),
    ("grpc_servicer", "envoy"),
    # The forward-auth dialects speak in the HTTP server's request and response values.
    ("forward_auth", "http_server"),
    # The OIDC client owns the JWKS cache of its issuer (it builds one by default).
    ("oidc", "jwks"),
}


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    line: int
    type_checking: bool  # inside `if TYPE_CHECKING:`


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[Import]:
    """Every import in the file (functions and conditionals included), made absolute."""
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package, filename=str(path))


def imports_in(source: str, package: str, filename: str = "<source>") -> list[Import]:
    """Imports of `source`, relative ones resolved against `package`."""
    found: list[Import] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, guarded) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(base, node.lineno, guarded))
            # `from ext_authz import service` imports ext_authz.service.
            found.extend(Import(f"{base}.{a.name}", node.lineno, guarded) for a in node.names)
        for inner in ast.iter_child_nodes(node):
            visit(inner, guarded)

    visit(ast.parse(source, filename=filename), False)
    return found


def _names(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


CORE_FILES = sorted((PACKAGE / "core").glob("*.py"))
ALL_FILES = sorted(p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts)
ADAPTER_FILES = sorted((PACKAGE / "adapters").glob("*.py"))


def test_the_tree_is_where_we_look() -> None:
    assert {p.name for p in CORE_FILES} >= {
        "credentials.py",
        "cookies.py",
        "upstream.py",
        "routing.py",
        "login.py",
        "decision.py",
        "steps.py",
        "model.py",
    }
    assert {p.name for p in ADAPTER_FILES} >= {"envoy.py", "grpc_servicer.py"}


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_core_imports_nothing_with_io(path: Path) -> None:
    bad = [
        f"{_rel(path)}:{i.line} imports {i.module}"
        for i in imports_of(path)
        if _names(i.module, CORE_FORBIDDEN)
        or (_names(i.module, TYPE_CHECKING_ONLY) and not i.type_checking)
    ]
    assert bad == []


# Words of one transport or one proxy dialect: the core speaks only requests,
# identities and HTTP answers (STYLE.md), so none of these names a thing in it.
TRANSPORT_WORDS = ("grpc", "protobuf", "proto", "envoy", "nginx", "caddy", "traefik", "istio")


def names_in(source: str) -> set[str]:
    """Every identifier the code defines or uses (not comments or strings)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.arg | ast.keyword) and node.arg:
            found.add(node.arg)
    return found


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_core_names_no_transport(path: Path) -> None:
    names = names_in(path.read_text(encoding="utf-8"))
    bad = sorted(n for n in names if any(w in n.lower() for w in TRANSPORT_WORDS))
    assert bad == [], f"{_rel(path)} names transport notions: {bad}"


def test_transport_words_are_caught() -> None:
    names = names_in("class GrpcCode: ...\nx = Deny(grpc_code=1)\n")
    assert sorted(n for n in names if "grpc" in n.lower()) == ["GrpcCode", "grpc_code"]


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_core_imports_only_the_core_from_the_package(path: Path) -> None:
    inside = {i.module for i in imports_of(path) if not i.type_checking}
    own = {m for m in inside if m == "ext_authz" or m.startswith("ext_authz.")}
    # ext_authz.errors holds plain exception classes: pure, so the core may raise them.
    assert {m for m in own if not _names(m, ("ext_authz.core", "ext_authz.errors"))} == set()


@pytest.mark.parametrize("path", ALL_FILES, ids=[_rel(p) for p in ALL_FILES])
def test_generated_protobuf_is_imported_only_at_the_edge(path: Path) -> None:
    if _rel(path) in PROTO_IMPORTERS:
        return
    bad = [i for i in imports_of(path) if _names(i.module, ("ext_authz._proto",))]
    assert bad == [], f"{_rel(path)} imports ext_authz._proto (line {bad[0].line})"


@pytest.mark.parametrize("path", ADAPTER_FILES, ids=[p.name for p in ADAPTER_FILES])
def test_adapters_do_not_import_each_other(path: Path) -> None:
    importer = path.stem
    bad = []
    for i in imports_of(path):
        if not i.module.startswith("ext_authz.adapters."):
            continue
        imported = i.module.split(".")[2]
        if imported != importer and (importer, imported) not in ADAPTER_PAIRS_ALLOWED:
            bad.append(f"{_rel(path)}:{i.line} imports {i.module}")
    assert bad == []


# --- the checker itself --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("import os\n", [("os", False)], id="import"),
        pytest.param("import os.path as p\n", [("os.path", False)], id="import-dotted"),
        pytest.param(
            "from time import monotonic\n", [("time", False), ("time.monotonic", False)], id="from"
        ),
        pytest.param("def f():\n    import socket\n", [("socket", False)], id="in-function"),
        pytest.param(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from ext_authz.config import Application\n",
            [
                ("typing", False),
                ("typing.TYPE_CHECKING", False),
                ("ext_authz.config", True),
                ("ext_authz.config.Application", True),
            ],
            id="type-checking",
        ),
        pytest.param(
            "import typing\nif typing.TYPE_CHECKING:\n    import redis\nelse:\n    import os\n",
            [("typing", False), ("redis", True), ("os", False)],
            id="type-checking-else",
        ),
        pytest.param(
            "from .. import service\n",
            [("ext_authz", False), ("ext_authz.service", False)],
            id="relative-up",
        ),
        pytest.param(
            "from .model import Identity\n",
            [("ext_authz.core.model", False), ("ext_authz.core.model.Identity", False)],
            id="relative",
        ),
    ],
)
def test_imports_in(source: str, expected: list[tuple[str, bool]]) -> None:
    found = imports_in(source, "ext_authz.core")
    assert [(i.module, i.type_checking) for i in found] == expected


def test_a_violation_is_caught() -> None:
    found = imports_in("import logging\nfrom ext_authz.config import Settings\n", "ext_authz.core")
    assert [i.module for i in found if _names(i.module, CORE_FORBIDDEN)] == ["logging"]
    assert [
        i.module for i in found if _names(i.module, TYPE_CHECKING_ONLY) and not i.type_checking
    ] == ["ext_authz.config", "ext_authz.config.Settings"]
