"""Plan a dataset: choose levels and axes, lay out the tile grid, split it into work units.

`plan_dataset` turns one catalog entry into small, independent work units (`UnitSpec`): one
dataset, one pixel size, one slicing axis, a slab of slices and a band of tile rows/columns.

- **Level and resampling.** For each target pixel size the coarsest pyramid level that is not
  coarser than the target is read and area-averaged down to it. A level within ``snap`` (5 %) of
  the target is used as is (the real pixel size is recorded). Up-sampling is allowed only up to
  ``max_upsample`` (1.25x); a source coarser than that is skipped for that pixel size (a note in
  the report, not an error).
- **Axes.** xy slices always; xz and yz only when the z spacing is within 25 % of the in-plane
  pixel size (``Sampling.xy_only`` turns them off). A stack of independent 2D images (catalog
  voxel size with only y, x) is sliced in xy only.
- **Tiles** of a plane are the cells of a non-overlapping grid of ``tile_size`` output pixels,
  centred in the plane (or the ROI); tiles never straddle the plane border.
- **Units** hold at most ``unit_tiles`` tiles; slabs never straddle a storage (dask) block along
  the slice axis, and units of one block share it through the block cache.
- **Bounded sampling.** When a (dataset, pixel size) has more tiles than ``max_tiles`` or reading
  them all costs more than its share of ``max_bytes`` (bytes of the storage blocks touched, each
  block once), a seeded random subset of regions is taken: the groups of units that start in one
  storage block, each read whole, never scattered single tiles.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from em5m.catalog import DatasetEntry, Sampling
from em5m.curate.blocks import block_ranges
from em5m.curate.sample import (
    PLANES,
    Level,
    SampleOptions,
    UnitSpec,
    _zyx_shape,
    cached_volume,
    pixel_tag,
    resolve_levels,
)
from em5m.errors import InvalidVolumeError
from em5m.volume import Volume


@dataclass
class DatasetPlan:
    """The units of one dataset, with notes on what was skipped and why."""

    dataset_id: str
    units: list[UnitSpec]
    notes: list[str]
    available_tiles: int = 0


def choose_level(levels: Sequence[Level], target: float, opts: SampleOptions) -> Level | None:
    """The coarsest level not coarser than ``target`` (within ``snap``), else the finest usable.

    Examples:
        >>> lv = [Level(0, (1, 64, 64), (None, 4.0, 4.0), (1, 1, 1)),
        ...       Level(1, (1, 32, 32), (None, 8.0, 8.0), (1, 2, 2))]
        >>> opts = SampleOptions()
        >>> choose_level(lv, 10.0, opts).index, choose_level(lv, 7.9, opts).index
        (1, 1)
        >>> choose_level(lv, 3.0, SampleOptions()) is None
        True
    """

    def factor(lv: Level) -> float:  # output pixel / level pixel (>1: down-sampling)
        return target / math.sqrt(lv.voxel[1] * lv.voxel[2])

    usable = [lv for lv in levels if factor(lv) >= 1.0 / opts.max_upsample - 1e-9]
    if not usable:
        return None
    down = [lv for lv in usable if factor(lv) >= 1.0 - opts.snap]
    if down:
        return min(down, key=factor)
    return max(usable, key=factor)


def tile_source_size(tile: int, target: float, voxel: float, snap: float) -> int:
    """Level voxels covered by one tile along an axis (``tile`` when within ``snap``).

    Examples:
        >>> tile_source_size(224, 8.0, 4.0, 0.05), tile_source_size(224, 8.0, 7.8, 0.05)
        (448, 224)
    """
    f = target / voxel
    if abs(f - 1.0) <= snap:
        return tile
    return max(1, int(round(tile * f)))


def _touched_bytes(
    chunks: Sequence[Sequence[int]], region: Sequence[tuple[int, int]], itemsize: int
) -> int:
    """Bytes of the dask blocks that a region overlaps (what reading it really costs)."""
    total = itemsize
    for sizes, (a, b) in zip(chunks, region, strict=True):
        edges = np.concatenate([[0], np.cumsum(sizes)])
        first = int(np.searchsorted(edges, a, side="right") - 1)
        last = int(np.searchsorted(edges, b, side="left"))
        total *= int(edges[last] - edges[first])
    return total


def _stable_int(text: str) -> int:
    return zlib.crc32(text.encode())


# ----------------------------------------------------------------------------------------------
# Planning


def plan_dataset(
    entry: DatasetEntry,
    sampling: Sampling,
    *,
    dataset_index: int,
    options: SampleOptions | None = None,
) -> DatasetPlan:
    """Split one catalog entry into work units.

    Args:
        entry: the catalog entry.
        sampling: its merged sampling options (`Catalog.sampling_for`).
        dataset_index: position in the catalog (first key of the global order).
        options: pipeline-wide rules.

    Raises:
        EMDataError: the source cannot be opened or its voxel metadata is wrong.
    """
    opts = options or SampleOptions()
    opt_items = tuple(sorted(entry.options.items()))
    vol0 = cached_volume(entry.uri, 0, opt_items)
    levels, origin, stack_2d = resolve_levels(entry, vol0)
    tile = int(sampling.tile_size or 224)
    notes: list[str] = []
    units: list[UnitSpec] = []
    available = 0
    pixel_sizes = list(sampling.pixel_sizes_nm or [])
    byte_budget = (sampling.max_bytes or 2**62) / max(1, len(pixel_sizes))
    meta = (
        ("modality", entry.modality),
        ("species", entry.species),
        ("organ", entry.organ),
        ("tissue", entry.tissue),
        ("licence", entry.licence),
        ("citation", entry.citation),
        ("doi", entry.doi),
    )
    channel = int(entry.options.get("channel", 0)) if "c" in vol0.axes else None
    for pi, px in enumerate(pixel_sizes):
        level = choose_level(levels, float(px), opts)
        if level is None:
            notes.append(
                f"{px:g} nm: skipped, the finest level ({levels[0].voxel[2]:g} nm) would need "
                f"more than {opts.max_upsample}x up-sampling"
            )
            continue
        vol = vol0 if level.index == 0 else cached_volume(entry.uri, level.index, opt_items)
        if (
            _zyx_shape(
                vol.shape if "c" not in vol.axes else vol.shape[1:],
                [a for a in vol.axes if a != "c"],
            )
            != level.shape
        ):
            raise InvalidVolumeError(vol.source, f"level {level.index} shape changed on reopen")
        px_units: list[UnitSpec] = []
        for ai, axis in enumerate(_axes_for(level, sampling, opts, stack_2d, tile, px)):
            made, note = _plan_axis(
                entry,
                vol,
                level,
                axis,
                float(px),
                tile,
                sampling,
                opts,
                order=(dataset_index, pi, ai),
                origin=origin,
                voxel0=levels[0].voxel,
                channel=channel,
                meta=meta,
                opt_items=opt_items,
                stack_2d=stack_2d,
            )
            if note:
                notes.append(note)
            px_units.extend(made)
        n_all = sum(u.n_tiles for u in px_units)
        available += n_all
        px_units = _apply_budget(
            px_units,
            max_tiles=int(sampling.max_tiles or 2**62),
            max_bytes=byte_budget,
            seed=np.random.SeedSequence([int(sampling.seed or 0), _stable_int(entry.id), pi]),
        )
        kept = sum(u.n_tiles for u in px_units)
        if kept < n_all:
            notes.append(
                f"{px:g} nm: random subset of {len(px_units)} regions, {kept} of {n_all} tiles "
                f"(max_tiles {sampling.max_tiles}, max_bytes {sampling.max_bytes})"
            )
        units.extend(px_units)
    return DatasetPlan(entry.id, units, notes, available)


def _axes_for(
    level: Level, sampling: Sampling, opts: SampleOptions, stack_2d: bool, tile: int, px: float
) -> list[str]:
    axes = ["xy"]
    z, y, x = level.voxel
    if sampling.xy_only or stack_2d or z is None:
        return axes
    xy = math.sqrt(y * x)
    if abs(z - xy) / xy <= opts.isotropy_tolerance:
        axes += ["xz", "yz"]
    return axes


def _plan_axis(
    entry: DatasetEntry,
    vol: Volume,
    level: Level,
    axis: str,
    px: float,
    tile: int,
    sampling: Sampling,
    opts: SampleOptions,
    *,
    order: tuple[int, int, int],
    origin: str,
    voxel0: tuple[float | None, float, float],
    channel: int | None,
    meta: tuple[tuple[str, Any], ...],
    opt_items: tuple[tuple[str, Any], ...],
    stack_2d: bool,
) -> tuple[list[UnitSpec], str | None]:
    s_ax, r_ax, c_ax = PLANES[axis]
    idx = {"z": 0, "y": 1, "x": 2}
    shape = level.shape
    lo = [0, 0, 0]
    hi = list(shape)
    if sampling.roi is not None:  # level-0 voxels -> this level
        roi = list(sampling.roi)
        if len(roi) == 4:
            roi = [0, shape[0] * int(level.scale[0]), *roi]
        for i in range(3):
            lo[i] = max(0, int(math.floor(roi[2 * i] / level.scale[i])))
            hi[i] = min(shape[i], int(math.ceil(roi[2 * i + 1] / level.scale[i])))
    vr = level.voxel[idx[r_ax]] or level.voxel[1]
    vc = level.voxel[idx[c_ax]]
    s_r = tile_source_size(tile, px, vr, opts.snap)
    s_c = tile_source_size(tile, px, vc, opts.snap)
    H = hi[idx[r_ax]] - lo[idx[r_ax]]
    W = hi[idx[c_ax]] - lo[idx[c_ax]]
    ny, nx = H // s_r, W // s_c
    tag = f"{entry.id} {px:g} nm {axis}"
    if ny == 0 or nx == 0:
        return (
            [],
            f"{tag}: plane {H}x{W} at level {level.index} is smaller than one tile "
            f"({s_r}x{s_c} voxels)",
        )
    y0 = lo[idx[r_ax]] + (H - ny * s_r) // 2
    x0 = lo[idx[c_ax]] + (W - nx * s_c) // 2
    step = int(sampling.slice_step or 1)
    slices = list(range(lo[idx[s_ax]], hi[idx[s_ax]], step))
    itemsize = np.dtype(vol.dtype).itemsize
    chunks = vol.data.chunks if "c" not in vol.axes else vol.data.chunks[1:]
    spatial_chunks = list(chunks) if len(chunks) == 3 else [(1,), *chunks]
    eff = (vr * s_r / tile, vc * s_c / tile)
    tile_bytes = s_r * s_c * itemsize
    cols_per = max(1, min(nx, opts.unit_tiles, opts.unit_bytes // tile_bytes))
    rows_per = max(
        1, min(ny, opts.unit_tiles // cols_per, opts.unit_bytes // (tile_bytes * cols_per))
    )
    per_slab = max(
        1,
        min(
            opts.unit_tiles // (rows_per * cols_per),
            opts.unit_bytes // (tile_bytes * cols_per * rows_per),
        ),
    )
    slabs = _slabs(slices, spatial_chunks[idx[s_ax]], per_slab)
    units = []
    ui = 0
    for slab in slabs:
        for r0, c0 in itertools.product(range(0, ny, rows_per), range(0, nx, cols_per)):
            r1, c1 = min(ny, r0 + rows_per), min(nx, c0 + cols_per)
            region = [(0, 0)] * 3
            region[idx[s_ax]] = (slab[0], slab[-1] + 1)
            region[idx[r_ax]] = (y0 + r0 * s_r, y0 + r1 * s_r)
            region[idx[c_ax]] = (x0 + c0 * s_c, x0 + c1 * s_c)
            blocks = tuple(block_ranges(spatial_chunks, region))
            nbytes = _touched_bytes(spatial_chunks, region, itemsize)
            units.append(
                UnitSpec(
                    key=f"{entry.id}/{pixel_tag(px)}/{axis}/{ui:05d}",
                    order=(*order, ui),
                    dataset_id=entry.id,
                    uri=entry.uri,
                    options=opt_items,
                    level=level.index,
                    channel=channel,
                    axis=axis,
                    target_pixel_size_nm=px,
                    tile_size=tile,
                    src_tile=(s_r, s_c),
                    pixel_size_nm=eff,
                    level_voxel_size_nm=level.voxel,
                    voxel_size_nm=voxel0,
                    level_scale=level.scale,
                    voxel_size_origin=origin,
                    slices=slab,
                    rows=(r0, r1),
                    cols=(c0, c1),
                    plane_origin=(y0, x0),
                    source_dtype=str(np.dtype(vol.dtype)),
                    source_format=vol.metadata.get("format"),
                    bytes_read=nbytes,
                    blocks=blocks,
                    is_2d=stack_2d,
                    meta=meta,
                )
            )
            ui += 1
    return units, None


def _slabs(slices: list[int], chunks: Sequence[int], per_slab: int) -> list[tuple[int, ...]]:
    """Group slices into slabs of at most ``per_slab`` slices that never straddle a block.

    Blocks (dask chunks along the slice axis) that fit are kept whole and packed together
    (one slice per file: several files per slab); a block with more selected slices than
    ``per_slab`` is cut into several slabs (whose units then share it via the block cache).

    Examples:
        >>> _slabs(list(range(6)), (1,) * 6, 2)
        [(0, 1), (2, 3), (4, 5)]
        >>> _slabs(list(range(10)), (5, 5), 2)
        [(0, 1), (2, 3), (4,), (5, 6), (7, 8), (9,)]
        >>> _slabs(list(range(0, 12, 2)), (4, 4, 4), 4)
        [(0, 2, 4, 6), (8, 10)]
    """
    edges = np.concatenate([[0], np.cumsum(chunks)])
    block_of = (np.searchsorted(edges, slices, side="right") - 1).tolist()
    members: dict[int, list[int]] = {}
    for sl, blk in zip(slices, block_of, strict=True):
        members.setdefault(blk, []).append(sl)
    out: list[tuple[int, ...]] = []
    current: list[int] = []
    for group in members.values():
        if len(group) > per_slab:
            if current:
                out.append(tuple(current))
                current = []
            out += [tuple(group[i : i + per_slab]) for i in range(0, len(group), per_slab)]
            continue
        if current and len(current) + len(group) > per_slab:
            out.append(tuple(current))
            current = []
        current += group
    if current:
        out.append(tuple(current))
    return out


def _apply_budget(
    units: list[UnitSpec], *, max_tiles: int, max_bytes: float, seed: np.random.SeedSequence
) -> list[UnitSpec]:
    """All units if within budget, else a seeded random subset of regions.

    Regions are the groups of units that start in the same storage block; bytes are those of
    the distinct blocks read (a block shared by several chosen units is read once).
    """

    def block_ids(u: UnitSpec) -> set[tuple[int, ...]]:  # (z, y, x) blocks: any plane
        return set(itertools.product(*[range(a, z) for a, z in u.blocks]))

    block_bytes = {}
    for u in units:
        per_block = u.bytes_read / max(1, len(block_ids(u)))
        for b in block_ids(u):
            block_bytes[b] = per_block
    if sum(u.n_tiles for u in units) <= max_tiles and sum(block_bytes.values()) <= max_bytes:
        return units
    groups: dict[tuple, list[UnitSpec]] = {}
    for u in units:
        groups.setdefault((u.axis, *(a for a, _ in u.blocks)), []).append(u)
    keys = list(groups)
    perm = np.random.default_rng(seed).permutation(len(keys))
    tiles = 0
    nbytes = 0.0
    read: set = set()
    chosen = []
    for gi in perm:
        for u in groups[keys[int(gi)]]:
            new = block_ids(u) - read
            extra = sum(block_bytes[b] for b in new)
            if tiles + u.n_tiles <= max_tiles and nbytes + extra <= max_bytes:
                chosen.append(u)
                tiles += u.n_tiles
                nbytes += extra
                read |= new
    return sorted(chosen, key=lambda u: u.order)
