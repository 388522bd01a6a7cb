"""Each package builds a wheel and an sdist; em5m installs and imports without torch."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

PACKAGES = {
    "em5m": "em5m",
    "emdino": "emdino",
    "omniem": "omniem",
    "napari-omniem": "napari_omniem",
}


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory, repo_root) -> Path:
    out = tmp_path_factory.mktemp("dist")
    for dist in PACKAGES:
        subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
             str(repo_root / "packages" / dist)],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
    return out


@pytest.mark.parametrize(("dist", "module"), PACKAGES.items())
def test_wheel_and_sdist_are_built_with_code_and_type_marker(dist_dir, dist, module):
    stem = dist.replace("-", "_")
    wheels = list(dist_dir.glob(f"{stem}-0.1.0-py3-none-any.whl"))
    sdists = list(dist_dir.glob(f"{stem}-0.1.0.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist_dir.iterdir())
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert f"{module}/__init__.py" in names
    assert f"{module}/py.typed" in names
    with tarfile.open(sdists[0]) as sdist:
        members = sdist.getnames()
    assert any(m.endswith(f"src/{module}/__init__.py") for m in members)
    assert any(m.endswith("pyproject.toml") for m in members)


def test_napari_manifest_ships_in_the_wheel(dist_dir):
    wheel = next(dist_dir.glob("napari_omniem-*.whl"))
    zf = zipfile.ZipFile(wheel)
    assert "napari_omniem/napari.yaml" in zf.namelist()
    entry_points = zf.read("napari_omniem-0.1.0.dist-info/entry_points.txt").decode()
    assert "napari.manifest" in entry_points


def test_em5m_wheel_installs_in_a_clean_venv_without_torch(dist_dir, tmp_path, repo_root):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    wheel = next(dist_dir.glob("em5m-*.whl"))
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-c", str(repo_root / "tools" / "constraints.txt"), str(wheel)],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    probe = (
        "import importlib.util, sys, em5m, em5m.io, em5m.write, em5m.datasets, em5m.synth;"
        "assert importlib.util.find_spec('torch') is None, 'torch got installed';"
        "assert 'torch' not in sys.modules;"
        "print(em5m.__version__)"
    )
    out = subprocess.run([str(py), "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "0.1.0"
    # The console script is installed and answers.
    cli = subprocess.run(
        [str(venv / "bin" / "em5m"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 0 and "0.1.0" in cli.stdout
