"""Rebuild a tile from its manifest row alone: the manifest's reproducibility contract.

`read_tile` re-opens ``uri`` at ``level``, reads ``bbox_level``, orients it as ``axis``, applies
the same area resampling to ``tile_size`` and the same uint8 window (``std_low``, ``std_high``)
as the pipeline did. Both paths run the same deterministic code, so the result equals the stored
PNG pixel for pixel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from em5m.curate.sample import read_tile_source
from em5m.curate.standardize import resample_area, to_uint8
from em5m.intensity import IntensityWindow


def read_tile(row: Mapping[str, Any]) -> np.ndarray:
    """The uint8 tile described by a manifest row (a dict, e.g. from ``to_pylist()``).

    Args:
        row: needs ``uri``, ``source_options``, ``channel``, ``level``, ``axis``,
            ``bbox_level``, ``tile_size``, ``std_low``, ``std_high``, ``std_percentiles``,
            ``source_dtype``.

    Returns:
        ``(tile_size, tile_size)`` uint8.
    """
    src = read_tile_source(
        row["uri"],
        level=int(row["level"]),
        axis=row["axis"],
        bbox=row["bbox_level"],
        options=json.loads(row["source_options"] or "{}"),
        channel=row["channel"],
    )
    t = int(row["tile_size"])
    values = src[None]
    if values.shape[1:] != (t, t):
        values = resample_area(values, (t, t))
    window = IntensityWindow(
        float(row["std_low"]),
        float(row["std_high"]),
        tuple(row["std_percentiles"]),
        str(row["source_dtype"]),
    )
    return to_uint8(values, window)[0]
