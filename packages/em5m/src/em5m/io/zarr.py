"""Zarr v2/v3 arrays and OME-Zarr images (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3).

An OME-Zarr group's ``multiscales`` gives the levels (``level=`` picks one), the axes (names and
types; ``t`` of length 1 is dropped, unknown names raise) and the voxel size: the ``scale``
transforms of the level (times any multiscale-wide scale), converted to nm with the axis
``unit``. A spatial axis without a unit gives ``voxel_size=None``: a bare scale has no physical
meaning. Plain Zarr arrays take axes from ``dimension_names`` (v3) or ``_ARRAY_DIMENSIONS``
(xarray, v2), and a voxel size from a COSEM-style ``transform`` attribute when present.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import zarr

from em5m.errors import InvalidVolumeError, VolumeNotFoundError
from em5m.io._build import build_volume
from em5m.io._checks import check_level
from em5m.io._lazy import SliceableReader
from em5m.io._units import to_nm
from em5m.volume import Volume

#: Files that mark a Zarr node (v3: zarr.json; v2: .zarray/.zgroup/.zattrs).
MARKERS: tuple[str, ...] = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


def can_open(path: str) -> bool:
    """True for a directory with Zarr metadata, or named ``*.zarr``."""
    if not os.path.isdir(path):
        return False
    return path.rstrip("/").lower().endswith(".zarr") or any(
        os.path.exists(os.path.join(path, m)) for m in MARKERS
    )


def open(  # noqa: A001 - the reader protocol is ``open(uri) -> Volume``
    path: str,
    *,
    level: int = 0,
    dataset: str | None = None,
    axes: str | Sequence[str] | None = None,
    check_finite: bool = True,
) -> Volume:
    """Open a Zarr array or OME-Zarr image lazily.

    Args:
        path: the Zarr directory (group or array).
        level: multiscale level (0 = full resolution).
        dataset: path of an array or image group inside the directory.
        axes: override axes.
        check_finite: NaN/inf checks for float data.

    Examples:
        >>> import tempfile, numpy as np, zarr
        >>> p = tempfile.mkdtemp() + "/a.zarr"
        >>> z = zarr.create_array(p, shape=(4, 8, 8), chunks=(1, 8, 8), dtype="uint8",
        ...                       dimension_names=["z", "y", "x"])
        >>> open(p).axes
        ('z', 'y', 'x')
    """
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:
        raise InvalidVolumeError(
            path, f"not a Zarr array or group ({type(exc).__name__}: {exc})"
        ) from None
    if dataset:
        node = _child(path, node, dataset)
    if isinstance(node, zarr.Group):
        return _open_group(path, node, dataset, level, axes, check_finite)
    check_level(path, level, 1)
    return _open_array(path, node, dataset, axes, check_finite)


def _child(path: str, group: Any, inner: str) -> Any:
    inner = inner.strip("/")
    if not isinstance(group, zarr.Group):
        raise VolumeNotFoundError(path, f"{inner!r} not found: the Zarr node is an array")
    try:
        return group[inner]
    except KeyError:
        members = sorted(k for k, _ in group.members(max_depth=None))
        raise VolumeNotFoundError(
            path, f"no Zarr node {inner!r}; nodes here: {', '.join(members) or 'none'}"
        ) from None


def _ome_attrs(group: Any) -> tuple[dict[str, Any], str | None]:
    """The OME metadata of a group and its NGFF version (0.5 nests it under ``ome``)."""
    attrs = dict(group.attrs)
    if isinstance(attrs.get("ome"), Mapping):
        ome = dict(attrs["ome"])
        return ome, ome.get("version")
    ms = attrs.get("multiscales")
    version = ms[0].get("version") if isinstance(ms, list) and ms else None
    return attrs, version


def _open_group(
    path: str,
    group: Any,
    dataset: str | None,
    level: int,
    axes: str | Sequence[str] | None,
    check_finite: bool,
) -> Volume:
    ome, version = _ome_attrs(group)
    multiscales = ome.get("multiscales")
    if isinstance(multiscales, list) and multiscales:
        return _open_multiscale(
            path, group, dataset, multiscales[0], version, level, axes, check_finite
        )
    if "bioformats2raw.layout" in ome and "0" in group:
        inner = f"{dataset.strip('/')}/0" if dataset else "0"
        return _open_group(path, group["0"], inner, level, axes, check_finite)
    arrays = sorted(k for k, v in group.members() if isinstance(v, zarr.Array))
    if len(arrays) == 1 and level == 0:
        inner = f"{dataset.strip('/')}/{arrays[0]}" if dataset else arrays[0]
        return _open_array(path, group[arrays[0]], inner, axes, check_finite)
    members = sorted(k for k, _ in group.members(max_depth=None))
    raise InvalidVolumeError(
        path,
        f"Zarr group{f' {dataset!r}' if dataset else ''} has no OME-Zarr multiscales and "
        f"{len(arrays)} arrays; name one as 'path.zarr::name' or dataset='name'. "
        f"Nodes: {', '.join(members) or 'none'}",
    )


def _ngff_axes(ms: Mapping[str, Any], ndim: int) -> tuple[list[str], dict[str, str | None]]:
    """Axis names (types folded in: any channel axis is ``c``) and units per name."""
    raw = ms.get("axes")
    if raw is None:  # NGFF <= 0.2: always 5D t, c, z, y, x
        return list("tczyx")[-ndim:], {}
    names, units = [], {}
    for ax in raw:
        if isinstance(ax, str):  # NGFF 0.3: list of names
            name, kind, unit = ax.lower(), None, None
        else:
            name, kind, unit = str(ax.get("name", "")).lower(), ax.get("type"), ax.get("unit")
        if kind == "channel":
            name = "c"
        elif kind == "time":
            name = "t"
        names.append(name)
        units[name] = unit
    return names, units


def _transforms(items: Any) -> tuple[list[float] | None, list[float] | None]:
    scale = translation = None
    for t in items or []:
        if t.get("type") == "scale" and "scale" in t:
            scale = [float(v) for v in t["scale"]]
        elif t.get("type") == "translation" and "translation" in t:
            translation = [float(v) for v in t["translation"]]
    return scale, translation


def ngff_level_transform(
    dataset: dict[str, Any],
    names: Sequence[str],
    units: dict[str, str | None],
    global_scale: Sequence[float] | None,
) -> tuple[list[float] | None, list[float] | None, dict[str, float] | None]:
    """One NGFF multiscales ``datasets`` entry -> (scale, translation, voxel size in nm by axis).

    The multiscales-wide scale multiplies the level's own; voxel size is None unless the scale
    covers every axis. Shared by this reader and the remote connectors (em5m.sources).
    """
    scale, translation = _transforms(dataset.get("coordinateTransformations"))
    if scale is not None and global_scale is not None:
        scale = [a * b for a, b in zip(scale, global_scale, strict=True)]
    voxel = None
    if scale is not None and len(scale) == len(names):
        voxel = {
            n: to_nm(s, units.get(n))
            for n, s in zip(names, scale, strict=True)
            if n in ("z", "y", "x")
        }
    return scale, translation, voxel


def _open_multiscale(
    path: str,
    group: Any,
    dataset: str | None,
    ms: Mapping[str, Any],
    version: str | None,
    level: int,
    axes: str | Sequence[str] | None,
    check_finite: bool,
) -> Volume:
    datasets = ms.get("datasets") or []
    check_level(path, level, len(datasets))
    arrays = []
    for d in datasets:
        try:
            arrays.append(group[d["path"]])
        except KeyError:
            raise InvalidVolumeError(
                path, f"OME-Zarr multiscales lists level {d['path']!r} but it is missing"
            ) from None
    names, units = _ngff_axes(ms, arrays[0].ndim)
    global_scale, _ = _transforms(ms.get("coordinateTransformations"))
    levels = []
    for d, arr in zip(datasets, arrays, strict=True):
        scale, translation, voxel = ngff_level_transform(d, names, units, global_scale)
        levels.append(
            {
                "path": d["path"],
                "shape": tuple(arr.shape),
                "voxel_size": voxel,
                "scale": scale,
                "translation": translation,
            }
        )
    arr = arrays[level]
    if len(names) != arr.ndim:
        raise InvalidVolumeError(
            path,
            f"OME-Zarr axes {names} do not match array {datasets[level]['path']} with "
            f"shape {tuple(arr.shape)}",
        )
    metadata = {
        "format": "ome-zarr",
        "ngff_version": version,
        "zarr_format": arr.metadata.zarr_format,
        "dataset": "/".join(p for p in ((dataset or "").strip("/"), datasets[level]["path"]) if p),
        "name": ms.get("name"),
        "units": {n: u for n, u in units.items() if u},
        "downsampling": ms.get("type"),
        "voxel_size_source": "ngff-scale",
        "compressors": _codecs(arr),
    }
    return build_volume(
        _reader(path, arr),
        stored_axes=names,
        voxel_size=levels[level]["voxel_size"],
        metadata=metadata,
        axes=axes,
        check_finite=check_finite,
        levels=levels,
        level=level,
    )


def _open_array(
    path: str,
    arr: Any,
    dataset: str | None,
    axes: str | Sequence[str] | None,
    check_finite: bool,
) -> Volume:
    attrs = dict(arr.attrs)
    names = None
    dim_names = getattr(arr.metadata, "dimension_names", None)
    if dim_names and all(dim_names):
        names = [str(n).lower() for n in dim_names]
    elif isinstance(attrs.get("_ARRAY_DIMENSIONS"), list):
        names = [str(n).lower() for n in attrs["_ARRAY_DIMENSIONS"]]
    voxel, source = _cosem_transform(attrs)
    metadata = {
        "format": "zarr",
        "zarr_format": arr.metadata.zarr_format,
        "dataset": (dataset or "").strip("/") or None,
        "voxel_size_source": source,
        "compressors": _codecs(arr),
    }
    return build_volume(
        _reader(path, arr),
        stored_axes=names,
        voxel_size=voxel,
        metadata=metadata,
        axes=axes,
        check_finite=check_finite,
    )


def _cosem_transform(attrs: Mapping[str, Any]) -> tuple[dict[str, float | None] | None, str]:
    """COSEM ``transform: {axes, scale, units}`` (axes named, so order does not matter)."""
    t = attrs.get("transform")
    if not isinstance(t, Mapping) or "axes" not in t or "scale" not in t:
        return None, "none"
    units = t.get("units") or [None] * len(t["axes"])
    return {
        str(a).lower(): to_nm(s, u) for a, s, u in zip(t["axes"], t["scale"], units, strict=False)
    }, "cosem-transform"


def _reader(path: str, arr: Any) -> SliceableReader:
    # Shards (when present) are the unit that one file read serves best.
    storage = getattr(arr, "shards", None) or arr.chunks
    # The array's metadata file mtime tells a rewritten array from the old one.
    stamps = []
    for name in ("zarr.json", ".zarray"):
        try:
            stamps.append(os.stat(os.path.join(path, arr.path, name)).st_mtime_ns)
        except OSError:
            stamps.append(None)
    return SliceableReader(path, arr, storage, state=(arr.path, tuple(stamps)))


def _codecs(arr: Any) -> list[str]:
    try:
        return [type(c).__name__ for c in arr.compressors]
    except Exception:  # metadata variants without compressors
        return []
