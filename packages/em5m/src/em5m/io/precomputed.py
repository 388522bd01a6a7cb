"""Neuroglancer precomputed volumes (``precomputed://file:///path`` or a directory with ``info``).

Read through tensorstore's ``neuroglancer_precomputed`` driver, one scale per level. The info
``resolution`` (nm, x/y/z) of the chosen scale is the voxel size; the stored axes x, y, z,
channel become c, z, y, x, and a single channel is dropped. A non-zero ``voxel_offset`` is
shifted to the origin (kept in ``metadata["levels"][i]["voxel_offset"]``).
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Sequence
from typing import Any

from em5m.errors import InvalidVolumeError
from em5m.io._build import build_volume
from em5m.io._checks import check_level
from em5m.io._lazy import file_state
from em5m.io._tensorstore import TensorStoreReader, open_store
from em5m.volume import Volume


def read_info(path: str) -> dict[str, Any] | None:
    """The parsed ``info`` file of a precomputed directory; None if absent or not one."""
    f = os.path.join(path, "info")
    if not os.path.isfile(f):
        return None
    try:
        with builtins.open(f, encoding="utf-8") as fh:
            info = json.load(fh)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("scales"), list):
        return None
    if info.get("@type", "neuroglancer_multiscale_volume") != "neuroglancer_multiscale_volume":
        return None
    return info if info.get("type") in ("image", "segmentation") else None


def can_open(path: str) -> bool:
    """True for a directory whose ``info`` describes an image or segmentation volume."""
    return os.path.isdir(path) and read_info(path) is not None


def open(  # noqa: A001 - the reader protocol is ``open(uri) -> Volume``
    path: str,
    *,
    level: int = 0,
    dataset: str | None = None,
    axes: str | Sequence[str] | None = None,
    check_finite: bool = True,
) -> Volume:
    """Open one scale of a precomputed volume lazily.

    Args:
        path: the directory holding ``info``.
        level: scale index in ``info["scales"]`` (0 = finest).
        dataset: not used (must be None).
        axes: override axes (stored order x, y, z, c).
        check_finite: NaN/inf checks for float data.

    Examples:
        >>> import tempfile, tensorstore as ts
        >>> p = tempfile.mkdtemp()
        >>> _ = ts.open({"driver": "neuroglancer_precomputed",
        ...              "kvstore": {"driver": "file", "path": p},
        ...              "multiscale_metadata": {"type": "image", "data_type": "uint8",
        ...                                      "num_channels": 1},
        ...              "scale_metadata": {"size": [8, 6, 4], "resolution": [4, 4, 40],
        ...                                 "encoding": "raw", "chunk_size": [8, 6, 4]}},
        ...             create=True).result()
        >>> v = open(p)
        >>> v.axes, v.shape, v.voxel_size
        (('z', 'y', 'x'), (4, 6, 8), (40.0, 4.0, 4.0))
    """
    if dataset is not None:
        raise InvalidVolumeError(path, "precomputed volumes have no inner datasets")
    info = read_info(path)
    if info is None:
        raise InvalidVolumeError(
            path,
            "not a neuroglancer precomputed volume: no 'info' file with "
            '"type": "image" or "segmentation" and a "scales" list',
        )
    scales = info["scales"]
    check_level(path, level, len(scales))
    channels = int(info.get("num_channels", 1))
    levels = []
    for s in scales:
        x, y, z = (float(v) for v in s["resolution"])
        sx, sy, sz = (int(v) for v in s["size"])
        levels.append(
            {
                "path": s.get("key"),
                "shape": (sx, sy, sz, channels),
                "voxel_size": {"x": x, "y": y, "z": z},
                "voxel_offset": tuple(s.get("voxel_offset", (0, 0, 0))),
                "encoding": s.get("encoding"),
            }
        )
    store = open_store(
        path,
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": path},
            "scale_index": level,
        },
    )
    store = store.translate_to[0]  # voxel_offset -> origin
    scale = scales[level]
    chunk = list(scale.get("chunk_sizes", [scale["size"]])[0])
    reader = TensorStoreReader(
        path, store, (*chunk, channels), state=file_state(os.path.join(path, "info"))
    )
    metadata = {
        "format": "precomputed",
        "precomputed_type": info.get("type"),
        "encoding": scale.get("encoding"),
        "sharded": bool(scale.get("sharding")),
        "voxel_size_source": "precomputed-info (nm)",
    }
    return build_volume(
        reader,
        stored_axes=["x", "y", "z", "c"],
        voxel_size=levels[level]["voxel_size"],
        metadata=metadata,
        axes=axes,
        check_finite=check_finite,
        squeeze=("c",),
        levels=levels,
        level=level,
    )
