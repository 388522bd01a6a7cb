"""Shared fixtures for the workspace-level tests (layering, packaging, README commands)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The bin/ folder of the interpreter running the tests (the workspace .venv in CI)."""
    return Path(sys.executable).parent
