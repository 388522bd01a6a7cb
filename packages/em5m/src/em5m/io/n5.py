"""N5 reader (through tensorstore's ``n5`` driver; zarr 3 has no N5 support).

N5 lists dimensions fastest-first (``x, y, z``); the store is reversed so the Volume is
``z, y, x``. Multiscale groups (``s0, s1, ...`` or COSEM ``multiscales``) become levels.
Voxel size, first match wins, per level:

1. the array's COSEM ``transform`` ``{axes, scale, units}`` (axes named, C order);
2. the group's COSEM ``multiscales[0].datasets[level].transform``;
3. the array's ``pixelResolution`` ``{dimensions, unit}`` (N5 order);
4. the array's ``resolution`` (N5 order, ``units`` or nm);
5. the group's ``pixelResolution`` or ``resolution`` times the level's ``scales`` entry or the
   array's ``downsamplingFactors`` (neuroglancer/n5-viewer conventions).
"""

from __future__ import annotations

import builtins
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from em5m.errors import InvalidVolumeError, VolumeNotFoundError
from em5m.io._build import build_volume
from em5m.io._checks import check_level
from em5m.io._lazy import file_state
from em5m.io._tensorstore import TensorStoreReader, open_store
from em5m.io._units import round_sig, to_nm
from em5m.volume import Volume

Attrs = dict[str, Any]


def can_open(path: str) -> bool:
    """True for a directory with an N5 ``attributes.json`` or named ``*.n5``."""
    return os.path.isdir(path) and (
        path.rstrip("/").lower().endswith(".n5")
        or os.path.isfile(os.path.join(path, "attributes.json"))
    )


def read_attrs(directory: str) -> Attrs:
    """The ``attributes.json`` of an N5 node ({} when absent)."""
    f = os.path.join(directory, "attributes.json")
    if not os.path.isfile(f):
        return {}
    try:
        with builtins.open(f, encoding="utf-8") as fh:
            out = json.load(fh)
    except ValueError as exc:
        raise InvalidVolumeError(f, f"attributes.json is not valid JSON ({exc})") from None
    return out if isinstance(out, dict) else {}


def is_array(attrs: Mapping[str, Any]) -> bool:
    return "dimensions" in attrs and "dataType" in attrs


def open(  # noqa: A001 - the reader protocol is ``open(uri) -> Volume``
    path: str,
    *,
    level: int = 0,
    dataset: str | None = None,
    axes: str | Sequence[str] | None = None,
    check_finite: bool = True,
) -> Volume:
    """Open an N5 array or multiscale group lazily.

    Args:
        path: the N5 root directory.
        dataset: path of an array or multiscale group inside it, e.g. ``"em/fibsem-uint16"``.
        level: multiscale level (0 = full resolution).
        axes: override axes (in Volume order after reversal, i.e. C order).
        check_finite: NaN/inf checks for float data.

    Examples:
        >>> import tempfile, numpy as np, tensorstore as ts
        >>> root = tempfile.mkdtemp() + "/a.n5"
        >>> s = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": root + "/s0"},
        ...              "metadata": {"dimensions": [8, 6, 4], "blockSize": [4, 4, 4],
        ...                           "dataType": "uint8", "compression": {"type": "raw"}}},
        ...             create=True).result()
        >>> open(root).shape  # N5 dimensions x, y, z -> Volume z, y, x
        (4, 6, 8)
    """
    node = os.path.join(path, dataset.strip("/")) if dataset else path
    if not os.path.isdir(node):
        raise VolumeNotFoundError(
            path, f"no N5 node {dataset!r}; nodes here: {', '.join(_list_nodes(path)) or 'none'}"
        )
    attrs = read_attrs(node)
    if is_array(attrs):
        check_level(path, level, 1)
        base, name = os.path.split(node.rstrip("/"))
        group_attrs = read_attrs(base)
        paths, levels_meta = [name], [attrs]
        # An array opened directly that is one level of a pyramid keeps its index for 'scales'.
        index = _level_index(name, group_attrs)
    else:
        paths = _level_paths(node, attrs)
        if not paths:
            raise InvalidVolumeError(
                node,
                "N5 group has no arrays, no s0..sN levels and no COSEM multiscales; "
                f"nodes: {', '.join(_list_nodes(node)) or 'none'}",
            )
        check_level(path, level, len(paths))
        group_attrs, base, index = attrs, node, None
        levels_meta = [read_attrs(os.path.join(node, p)) for p in paths]

    levels = []
    for i, (p, la) in enumerate(zip(paths, levels_meta, strict=True)):
        if not is_array(la):
            raise InvalidVolumeError(node, f"N5 level {p!r} is not an array")
        k = index if index is not None else i
        names_n5 = _names_n5(la, group_attrs)
        levels.append(
            {
                "path": p,
                "shape": tuple(int(d) for d in reversed(la["dimensions"])),
                "voxel_size": _voxel(la, group_attrs, k, p, names_n5),
                "names_n5": names_n5,
            }
        )
    chosen = levels[level]
    la = levels_meta[level]
    array_dir = os.path.join(base, paths[level])
    store = open_store(
        array_dir, {"driver": "n5", "kvstore": {"driver": "file", "path": array_dir}}
    )
    # Reverse the dimensions: N5 is fastest-first, numpy/Volume order is slowest-first.
    store = store.T
    reader = TensorStoreReader(
        path,
        store,
        tuple(reversed(la.get("blockSize", la["dimensions"]))),
        state=file_state(os.path.join(array_dir, "attributes.json")),
    )
    names = chosen["names_n5"]
    stored_axes = list(reversed(names)) if names else None
    rel = os.path.relpath(array_dir, path)
    metadata = {
        "format": "n5",
        "dataset": None if rel == "." else rel,
        "n5_axes": names,
        "compression": (la.get("compression") or {}).get("type"),
        "voxel_size_source": "n5-attributes" if chosen["voxel_size"] else "none",
    }
    for lv in levels:
        lv.pop("names_n5")
    return build_volume(
        reader,
        stored_axes=stored_axes,
        voxel_size=chosen["voxel_size"],
        metadata=metadata,
        axes=axes,
        check_finite=check_finite,
        levels=levels,
        level=level,
    )


def _list_nodes(directory: str) -> list[str]:
    out = []
    for root, dirs, _files in os.walk(directory):
        dirs.sort()
        rel = os.path.relpath(root, directory)
        if rel != "." and os.path.isfile(os.path.join(root, "attributes.json")):
            out.append(rel)
            if is_array(read_attrs(root)):
                dirs[:] = []  # do not walk into chunk directories
        if len(out) > 50:
            break
    return out


def _level_paths(node: str, attrs: Attrs) -> list[str]:
    ms = attrs.get("multiscales")
    if isinstance(ms, list) and ms and isinstance(ms[0], Mapping) and ms[0].get("datasets"):
        return [str(d["path"]) for d in ms[0]["datasets"]]
    children = [
        n
        for n in os.listdir(node)
        if os.path.isdir(os.path.join(node, n)) and is_array(read_attrs(os.path.join(node, n)))
    ]
    scales = sorted((n for n in children if re.fullmatch(r"s\d+", n)), key=lambda n: int(n[1:]))
    if scales:
        return scales
    return children if len(children) == 1 else []


def _level_index(name: str, parent: Attrs) -> int | None:
    m = re.fullmatch(r"s(\d+)", name)
    return int(m.group(1)) if m and "scales" in parent else None


def _names_n5(la: Attrs, ga: Attrs) -> list[str] | None:
    """Axis names in N5 (fastest-first) order."""
    ndim = len(la["dimensions"])
    for axes in (la.get("axes"), ga.get("axes")):
        if isinstance(axes, list) and len(axes) == ndim:
            return [str(a).lower() for a in axes]
    t = la.get("transform")
    if isinstance(t, Mapping) and isinstance(t.get("axes"), list) and len(t["axes"]) == ndim:
        return [str(a).lower() for a in reversed(t["axes"])]  # COSEM lists C order
    return {2: ["x", "y"], 3: ["x", "y", "z"]}.get(ndim)


def _from_transform(t: Any) -> dict[str, float | None] | None:
    if not isinstance(t, Mapping) or "axes" not in t or "scale" not in t:
        return None
    units = t.get("units") or ["nm"] * len(t["axes"])
    return {
        str(a).lower(): to_nm(s, u) for a, s, u in zip(t["axes"], t["scale"], units, strict=False)
    }


def _from_list(
    values: Any, unit: Any, names: list[str] | None, factors: Any = None
) -> dict[str, float | None] | None:
    if not isinstance(values, list) or names is None or len(values) != len(names):
        return None
    factors = factors if isinstance(factors, list) and len(factors) == len(values) else None
    units = unit if isinstance(unit, list) else [unit or "nm"] * len(values)
    out = {}
    for i, (name, v, u) in enumerate(zip(names, values, units, strict=False)):
        nm = to_nm(float(v), u)
        out[name] = round_sig(nm * float(factors[i])) if nm is not None and factors else nm
    return out


def _voxel(
    la: Attrs, ga: Attrs, k: int, path: str, names: list[str] | None
) -> dict[str, float | None] | None:
    found = _from_transform(la.get("transform"))
    if found:
        return found
    ms = ga.get("multiscales")
    if isinstance(ms, list) and ms and isinstance(ms[0], Mapping):
        for d in ms[0].get("datasets", []):
            if str(d.get("path")) == path and (found := _from_transform(d.get("transform"))):
                return found
    pr = la.get("pixelResolution")
    if isinstance(pr, Mapping) and (
        found := _from_list(pr.get("dimensions"), pr.get("unit"), names)
    ):
        return found
    if found := _from_list(la.get("resolution"), la.get("units"), names):
        return found
    scales = ga.get("scales")
    factors = scales[k] if isinstance(scales, list) and k < len(scales) else None
    factors = la.get("downsamplingFactors", factors)
    pr = ga.get("pixelResolution")
    if isinstance(pr, Mapping) and (
        found := _from_list(pr.get("dimensions"), pr.get("unit"), names, factors)
    ):
        return found
    return _from_list(ga.get("resolution"), ga.get("units"), names, factors)
