"""Assemble a `Volume` from a reader: axes to canonical order, voxel size, checks, metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from em5m.io._checks import (
    AXIS_ALIASES,
    check_not_empty,
    check_sample_finite,
    resolve_axes,
    with_finite_check,
)
from em5m.io._lazy import BlockReader, to_dask
from em5m.volume import SPATIAL_AXES, Volume


def build_volume(
    reader: BlockReader,
    *,
    stored_axes: Sequence[str] | None,
    voxel_size: Mapping[str, float | None] | None,
    metadata: dict[str, Any],
    axes: str | Sequence[str] | None = None,
    check_finite: bool = True,
    squeeze: Sequence[str] = (),
    levels: Sequence[Mapping[str, Any]] | None = None,
    level: int = 0,
    chunks: Sequence[int] | None = None,
) -> Volume:
    """Turn a stored array into a canonical, lazy `Volume`.

    Args:
        reader: the stored array at the chosen level.
        stored_axes: axis names in stored order (None when the file does not say).
        voxel_size: nm per stored axis name (``{"z": 40, "y": 4, "x": 4}``); None or missing
            axes mean unknown. A partial voxel size gives ``Volume.voxel_size = None`` (nothing
            is guessed) and is kept in ``metadata["voxel_size_partial"]``.
        metadata: reader facts; must hold ``"format"``.
        axes: axes the user passed to `open_volume` (override ``stored_axes``).
        check_finite: NaN/inf checks for float data (see `em5m.io._checks`).
        squeeze: canonical axis names dropped when of length 1 (e.g. ``("c",)``).
        levels: per level ``{"path", "shape" (stored order), "voxel_size" (dict or None),
            ...}``; default one level, this array.
        level: index of the opened level in ``levels``.
        chunks: dask block shape in stored order; default `choose_chunks`.
    """
    source = reader.source
    check_not_empty(source, reader.shape)
    names, drop, order = resolve_axes(source, reader.shape, stored_axes, axes, squeeze)
    final_axes = tuple(names[i] for i in order)

    is_float = np.issubdtype(reader.dtype, np.floating) or np.issubdtype(
        reader.dtype, np.complexfloating
    )
    if check_finite and is_float:
        check_sample_finite(reader)

    data = to_dask(reader, chunks)
    if drop:
        data = data[tuple(0 if i in drop else slice(None) for i in range(reader.ndim))]
    kept = [i for i in range(reader.ndim) if i not in drop]
    data = data.transpose([kept.index(i) for i in order])
    if check_finite and is_float:
        data = with_finite_check(data, source, final_axes)

    def canonical_voxel(vs: Mapping[str, float | None] | None) -> tuple[float, ...] | None:
        if not vs:
            return None
        by_axis = {AXIS_ALIASES.get(str(k).lower(), str(k).lower()): v for k, v in vs.items()}
        spatial = [a for a in final_axes if a in SPATIAL_AXES]
        values = [by_axis.get(a) for a in spatial]
        if any(v is None for v in values):
            return None
        return tuple(float(v) for v in values)  # type: ignore[arg-type]

    def canonical_shape(shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(shape[i]) for i in order)

    vs = canonical_voxel(voxel_size)
    meta = dict(metadata)
    if vs is None and voxel_size and any(v is not None for v in voxel_size.values()):
        meta["voxel_size_partial"] = {k: v for k, v in voxel_size.items() if v is not None}
    if levels is None:
        levels = [
            {"path": meta.get("dataset") or "", "shape": reader.shape, "voxel_size": voxel_size}
        ]
    meta["levels"] = [
        {
            **{k: v for k, v in lv.items() if k not in ("shape", "voxel_size")},
            "shape": canonical_shape(lv["shape"]),
            "voxel_size": canonical_voxel(lv.get("voxel_size")),
        }
        for lv in levels
    ]
    meta["level"] = level
    meta.setdefault("original_dtype", str(reader.stored_dtype))
    meta["stored_axes"] = "".join(names) if all(len(n) == 1 for n in names) else list(names)
    meta["stored_shape"] = reader.shape
    meta["storage_chunks"] = reader.storage_chunks
    meta["check_finite"] = bool(check_finite and is_float)
    return Volume(data, final_axes, vs, source, meta)
