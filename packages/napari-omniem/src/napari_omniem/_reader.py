"""napari reader: any volume em5m can open, shown lazily at its physical scale."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import em5m

LayerData = list[tuple[Any, dict[str, Any], str]]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], LayerData] | None:
    """Return a reader when em5m recognises the path, else None (napari tries other plugins)."""
    if isinstance(path, list):
        return None
    from em5m.io import can_open

    return read_volume if can_open(path) else None


def read_volume(path: str | list[str]) -> LayerData:
    volume = em5m.open_volume(str(path))
    meta: dict[str, Any] = {"name": Path(str(path)).name, "metadata": {"em5m": volume.metadata}}
    if volume.voxel_size is not None:
        meta["scale"] = volume.voxel_size
        meta["units"] = ("nm",) * len(volume.voxel_size)
    if "c" in volume.axes:
        meta["channel_axis"] = volume.axes.index("c")
    return [(volume.data, meta, "image")]
