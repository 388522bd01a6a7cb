"""CI retests every layer above a changed package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "affected_packages", Path(__file__).resolve().parents[1] / "tools/ci/affected_packages.py"
)
affected_packages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(affected_packages)
affected = affected_packages.affected


def test_lower_layer_change_retests_layers_above():
    assert affected(["packages/em5m/src/em5m/io/tiff.py"]) == [
        "em5m", "emdino", "omniem", "napari-omniem",
    ]  # fmt: skip
    assert affected(["packages/omniem/src/omniem/cli.py"]) == ["omniem", "napari-omniem"]
    assert affected(["packages/napari-omniem/tests/test_reader.py"]) == ["napari-omniem"]


def test_lowest_changed_layer_wins_and_root_changes_test_everything():
    assert affected(["packages/omniem/x.py", "packages/emdino/y.py"])[0] == "emdino"
    assert affected(["pyproject.toml"]) == affected_packages.LAYERS
    assert affected(["docs/index.md"]) == []
