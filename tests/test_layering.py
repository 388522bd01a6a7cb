"""The layering contract (em5m <- emdino <- omniem <- napari-omniem) is enforced, not hoped for.

The first test runs import-linter on the real packages. The others run the same contracts from the
root pyproject.toml over small throwaway package trees that break them, proving the contracts would
catch an upward import.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

PACKAGES = ("em5m", "emdino", "omniem", "napari_omniem")


def _lint(config_dir: Path, venv_bin: Path, pythonpath: Path | None = None):
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(venv_bin / "lint-imports"), "--config", str(config_dir / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=pythonpath or config_dir,
        timeout=300,
    )


def _fake_tree(tmp_path: Path, imports: dict[str, str]) -> Path:
    """Packages named like ours whose __init__ holds the given import lines."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(imports.get(pkg, ""))
    return tmp_path


def test_real_packages_keep_the_contracts(repo_root, venv_bin):
    result = _lint(repo_root, venv_bin)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_fake_tree_that_respects_layers_passes(tmp_path, repo_root, venv_bin):
    tree = _fake_tree(
        tmp_path, {"omniem": "import emdino\nimport em5m\n", "emdino": "import em5m\n"}
    )
    result = _lint(repo_root, venv_bin, pythonpath=tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("importer", "line"),
    [
        ("em5m", "import emdino\n"),
        ("emdino", "from omniem import something\n"),
        ("omniem", "import napari_omniem\n"),
    ],
)
def test_upward_import_breaks_the_contract(tmp_path, repo_root, venv_bin, importer, line):
    tree = _fake_tree(tmp_path, {importer: line})
    result = _lint(repo_root, venv_bin, pythonpath=tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert importer in result.stdout


def test_em5m_importing_torch_breaks_the_contract(tmp_path, repo_root, venv_bin):
    tree = _fake_tree(tmp_path, {"em5m": "import torch\n"})
    result = _lint(repo_root, venv_bin, pythonpath=tree)
    assert result.returncode != 0
    assert "em5m stays light" in result.stdout and "BROKEN" in result.stdout
