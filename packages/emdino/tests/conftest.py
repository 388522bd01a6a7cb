"""Shared fixtures for the emdino tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# OpenMP threads spin while waiting; on a shared, oversubscribed machine (CI, other test runs)
# that made a ViT-S forward 20x slower (2.3 s instead of 0.1 s, measured). Passive waiting must be
# chosen before torch loads its OpenMP runtime, i.e. before any test module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: The project root (packages/emdino/tests -> repo root).
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def emssl_data() -> Path:
    """The real EM data folder: ``$EMSSL_DATA``, else ``<repo>/../shared/data``.

    Missing data fails the test in CI (``CI`` set) and skips it elsewhere, naming the path.
    """
    path = Path(os.environ.get("EMSSL_DATA") or REPO_ROOT.parent / "shared" / "data").resolve()
    if not path.is_dir():
        message = f"real EM data not found at {path} (set EMSSL_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def emdino_home(tmp_path, monkeypatch) -> Path:
    """An empty, private weights cache (``EMDINO_HOME``) with downloads allowed."""
    home = tmp_path / "emdino-home"
    monkeypatch.setenv("EMDINO_HOME", str(home))
    monkeypatch.delenv("EMDINO_OFFLINE", raising=False)
    return home
