"""HDF5 reader. The dataset is named in the URI (``file.h5::/group/data``) or by ``dataset=``.

A file with exactly one dataset needs no name. Blocks are read through h5py with one lock per
reader: HDF5 itself is not thread-safe, and h5py's global lock only covers single calls, so the
lock keeps a block's select-and-read atomic when dask runs tasks on several threads. The file is
opened on the first read and reopened after unpickling (for process-based schedulers).

Voxel size from dataset attributes, first match wins:
``element_size_um`` (z, y, x in um; Fiji/ilastik), ``resolution`` (z, y, x in nm, CREMI;
``resolution_unit``/``unit`` may change the unit), ``voxel_size`` (same rules).
Axes from an ``axes`` attribute (``"zyx"``), h5py dimension labels or ilastik ``axistags``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from em5m.errors import InvalidVolumeError, VolumeNotFoundError
from em5m.io._build import build_volume
from em5m.io._checks import check_level
from em5m.io._lazy import BlockReader, Region, file_state
from em5m.io._sniff import require_kind, sniff
from em5m.io._units import to_nm
from em5m.volume import Volume

EXTENSIONS: tuple[str, ...] = (".h5", ".hdf5", ".hdf", ".he5", ".nxs")

#: (attribute, default unit) checked for the voxel size, in order.
_VOXEL_ATTRS = (("element_size_um", "um"), ("resolution", "nm"), ("voxel_size", "nm"))


def can_open(path: str) -> bool:
    """True for a file with an HDF5 extension or HDF5 magic bytes."""
    return os.path.isfile(path) and (path.lower().endswith(EXTENSIONS) or sniff(path) == "hdf5")


class H5Reader(BlockReader):
    """Reads one HDF5 dataset region by region, thread-safely.

    Args:
        path: the HDF5 file.
        name: dataset path inside the file.
        shape, dtype, storage_chunks, state: as for `BlockReader`.
    """

    def __init__(
        self,
        path: str,
        name: str,
        shape: Sequence[int],
        dtype: Any,
        storage_chunks: Sequence[int],
        state: Any,
    ) -> None:
        super().__init__(path, shape, dtype, storage_chunks, state)
        self.name = name
        self._lock = threading.Lock()
        self._file: h5py.File | None = None

    def _read(self, region: Region) -> np.ndarray:
        with self._lock:
            if self._file is None:
                self._file = h5py.File(self.source, "r")
            return self._file[self.name][region]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_file"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def list_datasets(f: h5py.File) -> list[tuple[str, tuple[int, ...], str]]:
    """(path, shape, dtype) of every dataset in an open file."""
    found: list[tuple[str, tuple[int, ...], str]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(("/" + name, tuple(obj.shape), str(obj.dtype)))

    f.visititems(visit)
    return found


def open(  # noqa: A001 - the reader protocol is ``open(uri) -> Volume``
    path: str,
    *,
    level: int = 0,
    dataset: str | None = None,
    axes: str | Sequence[str] | None = None,
    check_finite: bool = True,
) -> Volume:
    """Open one HDF5 dataset lazily.

    Args:
        path: the HDF5 file.
        level: must be 0.
        dataset: dataset path (``"/stack"`` or ``"stack"``); optional when the file has one.
        axes: override axes.
        check_finite: NaN/inf checks for float data.

    Examples:
        >>> import tempfile, numpy as np, h5py
        >>> p = tempfile.mkdtemp() + "/a.h5"
        >>> with h5py.File(p, "w") as f:
        ...     f["raw"] = np.zeros((2, 3, 4), np.uint8)
        ...     f["raw"].attrs["resolution"] = [40, 4, 4]
        >>> v = open(p)
        >>> v.shape, v.voxel_size, v.metadata["dataset"]
        ((2, 3, 4), (40.0, 4.0, 4.0), '/raw')
    """
    check_level(path, level, 1)
    require_kind(path, {"hdf5"}, "HDF5")
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise InvalidVolumeError(
            path, f"not a readable HDF5 file ({type(exc).__name__}: {exc})"
        ) from None
    with f:
        datasets = list_datasets(f)
        name = _choose(path, f, dataset, datasets)
        ds = f[name]
        shape, dtype = tuple(ds.shape), ds.dtype
        chunks = tuple(ds.chunks) if ds.chunks else _contiguous_chunks(shape)
        attrs = {k: _plain(v) for k, v in ds.attrs.items()}
        stored_axes = _axes_from_attrs(ds, attrs)
        compression = ds.compression
    if dtype.kind not in "biuf":
        raise InvalidVolumeError(path, f"dataset {name} has non-numeric dtype {dtype}")
    voxel, source = _voxel_from_attrs(attrs, stored_axes, len(shape))
    reader = H5Reader(path, name, shape, dtype, chunks, (file_state(path), name))
    metadata = {
        "format": "hdf5",
        "dataset": name,
        "compression": compression,
        "voxel_size_source": source,
        "attrs": {k: v for k, v in attrs.items() if _small(v)},
    }
    return build_volume(
        reader,
        stored_axes=stored_axes,
        voxel_size=voxel,
        metadata=metadata,
        axes=axes,
        check_finite=check_finite,
    )


def _choose(
    path: str, f: h5py.File, dataset: str | None, found: list[tuple[str, tuple[int, ...], str]]
) -> str:
    listing = ", ".join(f"{p} {s} {d}" for p, s, d in found) or "none"
    if dataset is not None:
        name = "/" + dataset.strip("/")
        obj = f.get(name)
        if not isinstance(obj, h5py.Dataset):
            what = "is a group, not a dataset" if isinstance(obj, h5py.Group) else "does not exist"
            raise VolumeNotFoundError(
                path, f"HDF5 path {name} {what}; datasets in this file: {listing}"
            )
        return name
    if len(found) == 1:
        return found[0][0]
    if not found:
        raise InvalidVolumeError(path, "HDF5 file contains no datasets")
    raise InvalidVolumeError(
        path,
        f"HDF5 file has {len(found)} datasets; name one as '{os.path.basename(path)}::"
        f"/name' or dataset='/name'. Datasets: {listing}",
    )


def _contiguous_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Unchunked datasets are stored C-contiguous: a leading-axis slab reads sequentially."""
    return (1, *shape[1:]) if len(shape) >= 3 else shape


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _small(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) or (
        isinstance(value, list) and len(value) <= 16
    )


def _axes_from_attrs(ds: h5py.Dataset, attrs: dict[str, Any]) -> list[str] | None:
    axes = attrs.get("axes")
    if isinstance(axes, str) and len(axes) == ds.ndim:
        return list(axes.lower())
    if isinstance(axes, list) and len(axes) == ds.ndim:
        return [str(a).lower() for a in axes]
    labels = [d.label for d in ds.dims]
    if all(labels):
        return [str(a).lower() for a in labels]
    tags = attrs.get("axistags")
    if isinstance(tags, str):
        try:
            keys = [a["key"] for a in json.loads(tags)["axes"]]
        except (ValueError, KeyError, TypeError):
            return None
        if len(keys) == ds.ndim:
            return [str(k).lower() for k in keys]
    return None


def _voxel_from_attrs(
    attrs: dict[str, Any], stored_axes: list[str] | None, ndim: int
) -> tuple[dict[str, float | None] | None, str]:
    """Voxel size per spatial axis name from the first known attribute."""
    spatial = [a for a in (stored_axes or []) if a in ("z", "y", "x")]
    for key, default_unit in _VOXEL_ATTRS:
        value = attrs.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        unit = attrs.get(f"{key}_unit", attrs.get("unit", default_unit))
        names = spatial or (["z", "y", "x"][-len(values) :] if len(values) <= 3 else [])
        if len(values) != len(names) or (stored_axes is None and ndim != len(values)):
            continue
        try:
            return {n: to_nm(float(v), unit) for n, v in zip(names, values, strict=True)}, (
                f"attrs:{key}"
            )
        except (TypeError, ValueError):
            continue
    return None, "none"
