"""The package's layers (the import-linter contract in pyproject.toml): kept by the package as it
is, and broken by an upward import, so that the check in the test command can fail."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")

pytestmark = pytest.mark.skipif(not Path(LINT).exists(),
                                reason="import-linter is not installed (it is in the test extra)")


def _lint(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy under test, not the installed (editable) package
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root), "HOME": str(root)}
    return subprocess.run([LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "tree"
    shutil.copytree(ROOT / "fastasd", dst / "fastasd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "_build_info.json"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_layers_contract_is_kept(tmp_path):
    r = _lint(_copy(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("module, line", [
    ("scoring/run.py", "import fastasd.api"),            # below api, importing it
    ("backend.py", "from fastasd.cli import main"),       # the command layer from a library module
    ("data/layout.py", "import fastasd.model"),           # data above the network
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, line):
    root = _copy(tmp_path)
    f = root / "fastasd" / module
    f.write_text(f.read_text() + f"\n{line}  # planted by the test\n")
    r = _lint(root)
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout, r.stdout
