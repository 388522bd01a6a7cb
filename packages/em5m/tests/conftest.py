"""Shared fixtures for the em5m tests."""

from __future__ import annotations

import importlib.util
import os
import sys
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


def _load_sources_fixtures():
    """Load fixtures_sources.py once as a module the test files can import by name.

    The tests folder is not a package (pytest's importlib mode), so the helper module is
    registered in sys.modules here, before any test module imports it.
    """
    name = "em5m_tests_fixtures_sources"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("fixtures_sources.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_sources_fx = _load_sources_fixtures()
# Loopback servers shared by the test_sources_* files.
http_server = _sources_fx.http_server
_server_session = _sources_fx._server_session
closed_port = _sources_fx.closed_port
