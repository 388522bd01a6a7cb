"""Shared fixtures: the real EM data folder (EMSSL_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def emssl_data() -> Path:
    """The real data folder; CI sets EMSSL_DATA, and a missing folder is a failure, not a skip."""
    root = os.environ.get("EMSSL_DATA")
    if not root or not Path(root, "lucchi_pp").is_dir():
        pytest.fail("EMSSL_DATA must point at the shared EM data folder (see README)")
    return Path(root)
