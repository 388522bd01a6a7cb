"""Open sources and read tiles: the pieces a work unit and `read_tile` run on.

- `open_source_volume`: the one place catalog URIs are opened (`em5m.sources.open_source`), with
  a small per-process cache (`cached_volume`);
- `resolve_levels`: pyramid levels with checked voxel sizes (`VoxelMetadataError`);
- `UnitSpec`: a work unit, plain data (picklable, JSON-able, fingerprinted for resume);
- `read_unit_tiles`, `read_tile_source`: the source pixels of a unit or of one manifest row,
  through the per-process block cache (`em5m.curate.blocks`).

Planning (which units exist) is `em5m.curate.plan`.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from em5m.catalog import DatasetEntry
from em5m.curate.blocks import read_region
from em5m.errors import InvalidVolumeError
from em5m.volume import Volume

#: Plane of each slicing axis: (slice axis, row axis, column axis).
PLANES: dict[str, tuple[str, str, str]] = {
    "xy": ("z", "y", "x"),
    "xz": ("y", "z", "x"),
    "yz": ("x", "z", "y"),
}
#: Plausible EM voxel sizes in nm; outside them the metadata is taken to be wrong (a unit error).
XY_RANGE_NM = (0.05, 2000.0)
Z_RANGE_NM = (0.05, 10000.0)


class VoxelMetadataError(InvalidVolumeError):
    """The voxel size is missing, implausible or inconsistent with the data."""


@dataclass(frozen=True)
class SampleOptions:
    """Pipeline-wide sampling rules (the catalog's `Sampling` gives the per-dataset ones).

    Args:
        snap: relative distance to the target within which a level is used without resampling.
        max_upsample: largest allowed up-sampling factor.
        isotropy_tolerance: xz/yz only when ``|z - xy| / xy`` is at most this.
        unit_tiles: at most this many tiles per work unit.
        unit_bytes: at most about this many source bytes read per work unit.
        rescale_uint8: also stretch uint8 sources with the percentile window (default: keep).
        percentiles: window percentiles for non-uint8 sources.
    """

    snap: float = 0.05
    max_upsample: float = 1.25
    isotropy_tolerance: float = 0.25
    unit_tiles: int = 256
    unit_bytes: int = 64 * 2**20
    rescale_uint8: bool = False
    percentiles: tuple[float, float] = (0.5, 99.5)


@dataclass(frozen=True)
class UnitSpec:
    """One work unit: everything needed to read its tiles, and nothing that needs a live object.

    Coordinates are in voxels of the read ``level``, in ``(z, y, x)`` order unless named
    ``plane``: the plane of an axis has rows and columns given by `PLANES`.
    """

    key: str
    order: tuple[int, ...]
    dataset_id: str
    uri: str
    options: tuple[tuple[str, Any], ...]
    level: int
    channel: int | None
    axis: str
    target_pixel_size_nm: float
    tile_size: int
    src_tile: tuple[int, int]
    pixel_size_nm: tuple[float, float]
    level_voxel_size_nm: tuple[float | None, float, float]
    voxel_size_nm: tuple[float | None, float, float]
    level_scale: tuple[float, float, float]
    voxel_size_origin: str
    slices: tuple[int, ...]
    rows: tuple[int, int]
    cols: tuple[int, int]
    plane_origin: tuple[int, int]
    source_dtype: str
    source_format: str | None
    bytes_read: int
    blocks: tuple[tuple[int, int], ...]
    is_2d: bool
    meta: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def n_tiles(self) -> int:
        return len(self.slices) * (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self, extra: Mapping[str, Any] | None = None) -> str:
        """Hash of the spec and of the settings that change its output (resume key)."""
        text = json.dumps([self.as_dict(), dict(extra or {})], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------------------------
# Opening sources


#: Catalog ``options`` used by the curation itself (not passed to the source connector).
CURATE_OPTIONS = frozenset({"channel"})


def open_source_volume(
    uri: str, *, level: int = 0, options: Mapping[str, Any] | None = None
) -> Volume:
    """Open a catalog URI at a pyramid level: the one place the curation opens data.

    Goes through `em5m.sources.open_source` (local paths, ``file://``, OpenOrganelle,
    WebKnossos, BossDB, EMPIAR), passing the entry's ``options`` (minus `CURATE_OPTIONS`) and
    the level. Its `SourceError` subclasses name what failed.

    Args:
        uri: catalog URI.
        level: pyramid level.
        options: catalog entry options.

    Examples:
        >>> import numpy as np, tempfile, tifffile
        >>> p = tempfile.mkdtemp() + "/a.tif"
        >>> tifffile.imwrite(p, np.zeros((2, 8, 8), np.uint8))
        >>> open_source_volume(p).shape
        (2, 8, 8)
    """
    from em5m.sources import open_source

    opts = {k: v for k, v in dict(options or {}).items() if k not in CURATE_OPTIONS}
    opts["level"] = level
    return open_source(uri, options=opts)


_CACHE: OrderedDict[tuple, Volume] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16


def cached_volume(uri: str, level: int, options: tuple[tuple[str, Any], ...]) -> Volume:
    """`open_source_volume` with a small per-process cache (units of one dataset share it)."""
    key = (uri, level, options)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    vol = open_source_volume(uri, level=level, options=dict(options))
    with _CACHE_LOCK:
        _CACHE[key] = vol
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return vol


def clear_volume_cache() -> None:
    """Forget opened volumes (after files changed on disk)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ----------------------------------------------------------------------------------------------
# Geometry


def pixel_tag(px: float) -> str:
    """Pixel size for keys: no dots (WebDataset splits keys at dots).

    Examples:
        >>> pixel_tag(8.0), pixel_tag(5.5)
        ('8nm', '5p5nm')
    """
    return f"{px:g}".replace(".", "p") + "nm"


@dataclass(frozen=True)
class Level:
    """One pyramid level in canonical (z, y, x) terms; ``z`` is 1 for a 2D image."""

    index: int
    shape: tuple[int, int, int]
    voxel: tuple[float | None, float, float]
    scale: tuple[float, float, float]


def _zyx_shape(shape: Sequence[int], axes: Sequence[str]) -> tuple[int, int, int]:
    by = dict(zip(axes, shape, strict=True))
    return (int(by.get("z", 1)), int(by["y"]), int(by["x"]))


def _check_voxel(source: str, voxel: tuple[float | None, float, float], what: str) -> None:
    z, y, x = voxel
    for name, v, (lo, hi) in (("y", y, XY_RANGE_NM), ("x", x, XY_RANGE_NM), ("z", z, Z_RANGE_NM)):
        if v is None:
            continue
        if not (math.isfinite(v) and lo <= v <= hi):
            raise VoxelMetadataError(
                source,
                f"{what} voxel size {name}={v!r} nm is outside the plausible EM range "
                f"{lo}..{hi} nm (unit mix-up?); fix the metadata or set voxel_size_nm in the "
                "catalog entry",
            )
    if max(y, x) / min(y, x) > 1.5:
        raise VoxelMetadataError(
            source,
            f"{what} voxel size has y={y} nm but x={x} nm; in-plane pixels of EM "
            "images are square to within 50 %: the metadata is probably wrong",
        )


def resolve_levels(entry: DatasetEntry, volume: Volume) -> tuple[list[Level], str, bool]:
    """Pyramid levels with voxel sizes, checked; the catalog's ``voxel_size_nm`` wins.

    Returns:
        (levels, origin of the voxel size ("catalog" or "source"), whether the z axis is a
        stack of independent 2D images or a single image).

    Raises:
        VoxelMetadataError: no voxel size anywhere, wrong number of values, implausible values.
    """
    src = volume.source
    has_z = "z" in volume.axes
    levels_meta = volume.metadata.get("levels") or [
        {"shape": volume.shape, "voxel_size": volume.voxel_size}
    ]
    shapes = [_zyx_shape(lv["shape"], volume.axes) for lv in levels_meta]
    override = entry.voxel_size_nm
    if override is not None:
        if len(override) == 3 and not has_z:
            raise VoxelMetadataError(
                src,
                f"catalog voxel_size_nm {override} has 3 values (z,y,x) but the source is "
                f"a 2D image with axes {''.join(volume.axes)}",
            )
        z0 = float(override[0]) if len(override) == 3 else None
        v0: tuple[float | None, float, float] = (z0, float(override[-2]), float(override[-1]))
        origin = "catalog"
    elif volume.voxel_size is not None and volume.metadata.get("level", 0) == 0:
        by = volume.voxel_size_by_axis or {}
        v0 = (by.get("z"), float(by["y"]), float(by["x"]))
        origin = "source"
    else:
        raise VoxelMetadataError(
            src,
            "no voxel size: the source metadata does not give one and the catalog entry "
            "has no voxel_size_nm",
        )
    _check_voxel(src, v0, origin)
    stack_2d = (not has_z) or v0[0] is None
    levels = []
    for i, (shape, lv) in enumerate(zip(shapes, levels_meta, strict=True)):
        src_vox = lv.get("voxel_size")
        base_vox = levels_meta[0].get("voxel_size")
        if i == 0:
            scale = (1.0, 1.0, 1.0)
        elif origin == "source" and src_vox is not None and base_vox is not None:
            sv = dict(zip(volume.spatial_axes, src_vox, strict=True))
            bv = dict(zip(volume.spatial_axes, base_vox, strict=True))
            scale = tuple(float(sv[a] / bv[a]) if a in sv else 1.0 for a in "zyx")
        else:  # the level's shape ratio, snapped to the usual integer factors
            raw = [s0 / s for s0, s in zip(shapes[0], shape, strict=True)]
            scale = tuple(float(round(r)) if abs(r - round(r)) < 0.05 else r for r in raw)
        voxel = (
            None if v0[0] is None else v0[0] * scale[0],
            v0[1] * scale[1],
            v0[2] * scale[2],
        )
        if i > 0 and min(scale) < 0.99:
            raise VoxelMetadataError(
                src, f"pyramid level {i} has a finer voxel size than level 0 (scale {scale})"
            )
        levels.append(Level(i, shape, voxel, scale))  # type: ignore[arg-type]
    return levels, origin, stack_2d


# ----------------------------------------------------------------------------------------------
# Reading


@dataclass
class UnitTiles:
    """Tiles of a unit in source dtype, ``(N, rows, cols)``, with their positions."""

    tiles: np.ndarray
    slice_index: np.ndarray
    row0: np.ndarray
    col0: np.ndarray


def _plane_index(
    axis: str, slab: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int], step: int = 1
) -> tuple[slice, slice, slice]:
    s_ax, r_ax, c_ax = PLANES[axis]
    by = {s_ax: slice(slab[0], slab[1], step), r_ax: slice(*rows), c_ax: slice(*cols)}
    return by["z"], by["y"], by["x"]


def _to_plane(block: np.ndarray, axis: str) -> np.ndarray:
    """(z, y, x) block -> (slice, row, col)."""
    perm = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}[axis]
    return block.transpose(perm)


def read_block(vol: Volume, index: tuple[slice, slice, slice], channel: int | None) -> np.ndarray:
    """Read a (z, y, x) region of ``vol`` (a 2D image reads as z of length 1).

    Goes through the per-process block cache (`em5m.curate.blocks`): units sharing a storage
    block decode it once.
    """
    data = vol.data
    if "c" in vol.axes:
        data = data[channel or 0]
    if "z" not in vol.axes:
        data = data[None]
    return read_region(data, index)


def read_unit_tiles(spec: UnitSpec) -> UnitTiles:
    """Read the source pixels of every tile of a unit (one read of its bounding region).

    Examples:
        >>> import numpy as np, tempfile, tifffile
        >>> from em5m.catalog import DatasetEntry, Sampling
        >>> from em5m.curate.plan import plan_dataset
        >>> p = tempfile.mkdtemp() + "/a.tif"
        >>> tifffile.imwrite(p, np.zeros((2, 40, 40), np.uint8))
        >>> e = DatasetEntry(id="a", uri=p, modality="TEM", species="s", licence="l",
        ...                  citation="c", voxel_size_nm=[50, 4, 4])
        >>> plan = plan_dataset(e, Sampling(tile_size=16, pixel_sizes_nm=[8.0]), dataset_index=0)
        >>> read_unit_tiles(plan.units[0]).tiles.shape
        (2, 32, 32)
    """
    vol = cached_volume(spec.uri, spec.level, spec.options)
    s_r, s_c = spec.src_tile
    y0, x0 = spec.plane_origin
    rows = (y0 + spec.rows[0] * s_r, y0 + spec.rows[1] * s_r)
    cols = (x0 + spec.cols[0] * s_c, x0 + spec.cols[1] * s_c)
    sl = spec.slices
    step = sl[1] - sl[0] if len(sl) > 1 else 1
    block = read_block(
        vol, _plane_index(spec.axis, (sl[0], sl[-1] + 1), rows, cols, step), spec.channel
    )
    plane = _to_plane(block, spec.axis)
    n, nr, nc = plane.shape[0], spec.rows[1] - spec.rows[0], spec.cols[1] - spec.cols[0]
    tiles = (
        plane.reshape(n, nr, s_r, nc, s_c).transpose(0, 1, 3, 2, 4).reshape(n * nr * nc, s_r, s_c)
    )
    grid_r = rows[0] + np.arange(nr) * s_r
    grid_c = cols[0] + np.arange(nc) * s_c
    s_idx, r_idx, c_idx = np.meshgrid(np.asarray(sl), grid_r, grid_c, indexing="ij")
    return UnitTiles(np.ascontiguousarray(tiles), s_idx.ravel(), r_idx.ravel(), c_idx.ravel())


def bbox_level(
    axis: str, slice_index: int, row0: int, col0: int, src_tile: tuple[int, int]
) -> tuple[int, int, int, int, int, int]:
    """Tile box ``(z0, z1, y0, y1, x0, x1)`` in level voxels (the sliced axis has length 1)."""
    s_ax, r_ax, c_ax = PLANES[axis]
    by = {
        s_ax: (slice_index, slice_index + 1),
        r_ax: (row0, row0 + src_tile[0]),
        c_ax: (col0, col0 + src_tile[1]),
    }
    return (*by["z"], *by["y"], *by["x"])


def to_level0(box: Sequence[int], scale: Sequence[float]) -> tuple[int, ...]:
    """A level box in level-0 voxels (start floored, stop ceiled when the scale is fractional)."""
    out = []
    for i, s in enumerate(scale):
        out.append(int(math.floor(box[2 * i] * s + 1e-9)))
        out.append(int(math.ceil(box[2 * i + 1] * s - 1e-9)))
    return tuple(out)


def read_tile_source(
    uri: str,
    *,
    level: int,
    axis: str,
    bbox: Sequence[int],
    options: Mapping[str, Any] | None = None,
    channel: int | None = None,
) -> np.ndarray:
    """The source pixels of one tile as a 2D (rows, cols) array, from manifest fields only."""
    vol = open_source_volume(uri, level=level, options=options)
    index = (slice(bbox[0], bbox[1]), slice(bbox[2], bbox[3]), slice(bbox[4], bbox[5]))
    block = read_block(vol, index, channel)
    return _to_plane(block, axis)[0]
