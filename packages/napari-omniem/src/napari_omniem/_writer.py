"""napari writers: image and labels layers to OME-Zarr (NGFF 0.5) through em5m."""

from __future__ import annotations

from typing import Any

import numpy as np

import em5m


def _write(path: str, data: Any, meta: dict[str, Any], *, label: bool) -> list[str]:
    scale = meta.get("scale")
    voxel_size = tuple(float(s) for s in scale) if scale is not None else None
    if voxel_size is not None and all(s == 1.0 for s in voxel_size):
        voxel_size = None  # napari's default scale carries no physical meaning
    volume = em5m.Volume.from_array(np.asarray(data), voxel_size=voxel_size)
    return [str(em5m.save_volume(volume, path, overwrite=True, label=label))]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write an image layer; its scale becomes the voxel size in nm."""
    return _write(path, data, meta, label=False)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a labels layer (pyramid levels by nearest sampling, never averaged ids)."""
    return _write(path, data, meta, label=True)
