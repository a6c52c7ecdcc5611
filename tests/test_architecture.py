"""The layers hold: the import-linter contracts in pyproject.toml pass, and they do catch a violation.

Layers, lowest first: ``runtime.core`` (ground floor) < ``protocols`` < ``actors`` | ``runtime.engine``
< ``runtime.site`` < service, router, demo, scenarios < benchmarks < ``runtime.cli``; inside
``protocols``, the simulators stand on the protocol families, which stand on ``protocols.base``;
actors reach devices only through ``protocols.base``; the router never imports actors or the site.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "actors", "protocols")
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_layer_contracts_pass():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout, result.stdout


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The three packages and pyproject.toml, copied so that a test can add a bad import to them."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module, bad_import, contract", [
    ("runtime/core/clock.py", "import runtime.site", "Layers: ground floor"),
    ("protocols/modbus/codec.py", "import actors.dispatcher", "Layers: ground floor"),
    ("protocols/modbus/codec.py", "import protocols.ocpp.profiles", "Protocols: simulators above"),
    ("actors/asset.py", "import protocols.ocpp.link", "Actors reach devices only"),
    ("runtime/router/__init__.py", "import runtime.site", "The cloud router never imports"),
])
def test_a_forbidden_import_breaks_its_contract(tree_copy: Path, module: str, bad_import: str, contract: str):
    path = tree_copy / module
    path.write_text(path.read_text() + f"\n{bad_import}  # the violation under test\n")
    result = lint(tree_copy)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
