"""Shared fixtures for the em5m tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The project root (packages/em5m/tests -> repo root).
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def emssl_data() -> Path:
    """The real EM data folder: ``$EMSSL_DATA``, else ``<repo>/../shared/data``.

    Real-data tests never skip in CI (``CI`` set): a missing folder fails them there. On a
    contributor's machine without the data they are skipped, with the path in the reason.
    """
    path = Path(os.environ.get("EMSSL_DATA") or REPO_ROOT.parent / "shared" / "data").resolve()
    if not path.is_dir():
        message = f"real EM data not found at {path} (set EMSSL_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
