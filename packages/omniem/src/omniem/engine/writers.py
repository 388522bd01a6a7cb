"""Where block outputs go: an in-memory array, or an OME-Zarr image with one shard per block."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from omniem.engine.setup import CHUNK_SIDE, ENGINE_FORMAT, Block, Setup
from omniem.errors import OmniEMError

# --------------------------------------------------------------------------- writers


def _index(setup: Setup, block: Block) -> tuple[slice, ...]:
    k = setup.scale
    sl = [slice(k * block.y[0], k * block.y[1]), slice(k * block.x[0], k * block.x[1])]
    if not setup.is_2d:
        sl.insert(0, slice(*block.z))
    if setup.output == "probabilities":
        sl.insert(0, slice(None))
    return tuple(sl)


def _squeeze(setup: Setup, data: np.ndarray) -> np.ndarray:
    """Drop the z axis of a 2D source's block."""
    if not setup.is_2d:
        return data
    return data[:, 0] if setup.output == "probabilities" else data[0]


class _MemoryWriter:
    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.out = np.zeros(setup.out_shape, setup.out_dtype)

    def write(self, block: Block, data: np.ndarray) -> None:
        self.out[_index(self.setup, block)] = _squeeze(self.setup, data)

    def finish(self) -> np.ndarray:
        return self.out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _ZarrWriter:
    """Level ``s0`` of an OME-Zarr group; one shard per block."""

    ARRAY = "s0"

    def __init__(self, setup: Setup, root: Path, group: Any, arr: Any) -> None:
        self.setup, self.root, self.group, self.arr = setup, root, group, arr

    @classmethod
    def create(cls, setup: Setup, root: Path) -> _ZarrWriter:
        import zarr
        from zarr.codecs import BloscCodec

        shape, axes = setup.out_shape, setup.out_axes
        bz, bhw = setup.block
        outer, inner = [], []
        for a, n in zip(axes, shape, strict=True):
            if a == "c":
                outer.append(1)
                inner.append(1)
            elif a == "z":
                outer.append(min(bz, n))
                inner.append(1)
            else:
                o = min(bhw * setup.scale, n)
                i = min(CHUNK_SIDE, o)
                outer.append(o)
                inner.append(i if o % i == 0 else o)
        itemsize = setup.out_dtype.itemsize
        codec = BloscCodec(
            cname="zstd", clevel=5, shuffle="shuffle" if itemsize > 1 else "noshuffle"
        )
        group = zarr.open_group(str(root), mode="w-", zarr_format=3)
        arr = group.create_array(
            cls.ARRAY,
            shape=shape,
            dtype=setup.out_dtype,
            chunks=tuple(inner),
            shards=tuple(outer),
            compressors=[codec],
            fill_value=0,
            dimension_names=list(axes),
        )
        out_vs = setup.out_voxel_size
        vs = dict(zip(("y", "x"), out_vs[-2:], strict=True)) if out_vs else {}
        if out_vs and len(out_vs) == 3:
            vs["z"] = out_vs[0]
        known = bool(vs) and all(a in vs for a in axes if a != "c")
        ngff_axes, scale = [], []
        for a in axes:
            if a == "c":
                ngff_axes.append({"name": "c", "type": "channel"})
                scale.append(1.0)
            else:
                ax: dict[str, Any] = {"name": a, "type": "space"}
                if known:
                    ax["unit"] = "nanometer"
                ngff_axes.append(ax)
                scale.append(float(vs[a]) if known else 1.0)
        group.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [
                {
                    "name": root.name.removesuffix(".zarr").removesuffix(".ome"),
                    "axes": ngff_axes,
                    "datasets": [
                        {
                            "path": cls.ARRAY,
                            "coordinateTransformations": [{"type": "scale", "scale": scale}],
                        }
                    ],
                    "metadata": {"writer": "omniem.engine.predict"},
                }
            ],
        }
        group.attrs["omniem"] = cls._attrs(setup, complete=False)
        return cls(setup, root, group, arr)

    @classmethod
    def open(cls, setup: Setup, root: Path) -> _ZarrWriter:
        import zarr

        group = zarr.open_group(str(root), mode="r+")
        arr = group[cls.ARRAY]
        if tuple(arr.shape) != setup.out_shape or np.dtype(arr.dtype) != setup.out_dtype:
            raise OmniEMError(
                f"{root}: existing array {cls.ARRAY} is {tuple(arr.shape)} {arr.dtype}, this run "
                f"writes {setup.out_shape} {setup.out_dtype}; pass overwrite=True"
            )
        return cls(setup, root, group, arr)

    @staticmethod
    def _attrs(setup: Setup, *, complete: bool) -> dict[str, Any]:
        from omniem.engine.ledger import params_hash

        out: dict[str, Any] = {
            "format": ENGINE_FORMAT,
            "complete": complete,
            "params_hash": params_hash(setup.params),
            "output": setup.output,
            "model": setup.runner.name,
            "task": setup.runner.task,
            "source": setup.source_name,
        }
        classes = setup.runner.card.get("classes")
        if classes:
            out["classes"] = list(classes)
        return out

    def write(self, block: Block, data: np.ndarray) -> None:
        self.arr[_index(self.setup, block)] = _squeeze(self.setup, data)
        # fsync the shard files of this block (and their folders) before it is recorded.
        iz, iy, ix = block.index
        coords = [iy, ix] if self.setup.is_2d else [iz, iy, ix]
        channels = self.setup.out_shape[0] if self.setup.output == "probabilities" else None
        keys = [(c, *coords) for c in range(channels)] if channels is not None else [tuple(coords)]
        for key in keys:
            path = self.root / self.ARRAY / self.arr.metadata.encode_chunk_key(key)
            if path.exists():  # an all-zero shard is not stored
                _fsync(path)
                _fsync(path.parent)

    def finish(self) -> Path:
        self.group.attrs["omniem"] = self._attrs(self.setup, complete=True)
        return self.root
