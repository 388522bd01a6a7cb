"""napari sample data: procedural EM phantoms from em5m.synth (offline, deterministic)."""

from __future__ import annotations

from typing import Any

from em5m import synth

LayerData = list[tuple[Any, dict[str, Any], str]]


def _layers(p: Any) -> LayerData:
    scale = tuple(p.voxel_size)
    return [
        (p.image, {"name": "phantom", "scale": scale}, "image"),
        (
            p.mitochondria.astype("uint8"),
            {"name": "mitochondria (truth)", "scale": scale},
            "labels",
        ),
        (p.cells, {"name": "cells (truth)", "scale": scale, "visible": False}, "labels"),
    ]


def phantom_2d() -> LayerData:
    return _layers(synth.phantom((512, 512), voxel_size=(5.0, 5.0), modality="sem", seed=0))


def phantom_3d() -> LayerData:
    return _layers(
        synth.phantom((24, 256, 256), voxel_size=(30.0, 6.0, 6.0), modality="tem", seed=0)
    )
