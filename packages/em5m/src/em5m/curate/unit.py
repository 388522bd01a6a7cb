"""Process one work unit: read, resample, standardize, filter, hash, encode, record atomically.

A unit writes, all through temporary names and renames:

1. ``units/<name>.bin``: the PNGs of its kept tiles, back to back;
2. ``units/<name>.emb.npy``: embeddings of the kept tiles (only with an ``embed`` function);
3. ``units/<name>.parquet``: one row per sampled tile (`UNIT_SCHEMA`), kept or not;
4. ``units/<name>.done``: JSON with the unit's fingerprint and counts, written last.

A unit counts as finished only when its ``.done`` marker exists with the fingerprint of the
current spec and settings, so a run killed at any point resumes by redoing exactly the units
without a valid marker. Everything a unit computes is a deterministic function of its spec.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from em5m.curate.dedup import EmbedFn, dhash
from em5m.curate.filters import FEATURES, FilterThresholds, ScoreFn, classify, tile_features
from em5m.curate.manifest import UNIT_SCHEMA
from em5m.curate.report import failure
from em5m.curate.sample import PLANES, UnitSpec, pixel_tag, read_unit_tiles, to_level0
from em5m.curate.shards import atomic_write_bytes, encode_pngs, write_blob
from em5m.curate.standardize import choose_window, resample_area, to_uint8

#: Bump when a change alters unit outputs: old ``.done`` markers then no longer match.
UNIT_VERSION = 2


@dataclass(frozen=True)
class UnitConfig:
    """Settings that shape a unit's output (all of them enter its fingerprint).

    Args:
        thresholds: rule-based filter thresholds.
        rescale_uint8: stretch uint8 sources too (default: keep them as they are).
        percentiles: window percentiles for other dtypes.
        png_level: None for fast Huffman-only PNGs, else a zlib level.
        score: optional learned informativeness score.
        min_score: tiles scoring below are removed (reason ``learned``).
        embed: optional embedding function for embedding-based dedup.
    """

    thresholds: FilterThresholds = field(default_factory=FilterThresholds)
    rescale_uint8: bool = False
    percentiles: tuple[float, float] = (0.5, 99.5)
    png_level: int | None = None
    score: ScoreFn | None = None
    min_score: float = 0.5
    embed: EmbedFn | None = None

    def fingerprint_extra(self) -> dict[str, Any]:
        def name(fn: Any) -> str | None:
            if fn is None:
                return None
            return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"

        return {
            "version": UNIT_VERSION,
            "thresholds": self.thresholds.as_dict(),
            "rescale_uint8": self.rescale_uint8,
            "percentiles": list(self.percentiles),
            "png_level": self.png_level,
            "score": name(self.score),
            "min_score": self.min_score,
            "embed": name(self.embed),
        }


def unit_name(key: str) -> str:
    """File-system name of a unit key.

    Examples:
        >>> unit_name("lucchi_pp/8nm/xy/00003")
        'lucchi_pp__8nm__xy__00003'
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key.replace("/", "__"))


def unit_paths(out: str | os.PathLike[str], key: str) -> dict[str, Path]:
    base = Path(out) / "units" / unit_name(key)
    return {
        "bin": base.with_name(base.name + ".bin"),
        "emb": base.with_name(base.name + ".emb.npy"),
        "parquet": base.with_name(base.name + ".parquet"),
        "done": base.with_name(base.name + ".done"),
    }


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tile_keys(spec: UnitSpec, slices: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> list[str]:
    """WebDataset keys (no dots): dataset, pixel size, axis, slice, row, column."""
    ds = spec.dataset_id.replace(".", "-")
    prefix = f"{ds}_{pixel_tag(spec.target_pixel_size_nm)}_{spec.axis}"
    return [
        f"{prefix}_s{s:06d}_r{r:06d}_c{c:06d}"
        for s, r, c in zip(slices.tolist(), rows.tolist(), cols.tolist(), strict=True)
    ]


def _boxes(
    spec: UnitSpec, slices: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s_ax, r_ax, c_ax = PLANES[spec.axis]
    start = {s_ax: slices, r_ax: rows, c_ax: cols}
    size = {s_ax: 1, r_ax: spec.src_tile[0], c_ax: spec.src_tile[1]}
    box = np.stack([v for a in "zyx" for v in (start[a], start[a] + size[a])], axis=1).astype(
        np.int64
    )
    box0 = np.asarray([to_level0(b, spec.level_scale) for b in box.tolist()], np.int64)
    return box, box0


def _fixed(values: np.ndarray, width: int, typ: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), typ), width)


def _repeat(value: Any, n: int, typ: pa.DataType) -> pa.Array:
    return pa.array([value] * n, typ)


def build_table(
    spec: UnitSpec,
    *,
    keys: list[str],
    slices: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    window: Any,
    resampled: bool,
    hashes: np.ndarray,
    features: dict[str, np.ndarray],
    learned: np.ndarray | None,
    reason: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
) -> pa.Table:
    """The unit's parquet part (`UNIT_SCHEMA`), built column-wise (no per-tile Python rows)."""
    n = len(keys)
    meta = dict(spec.meta)
    box, box0 = _boxes(spec, slices, rows, cols)
    voxel = [None if v is None else float(v) for v in spec.voxel_size_nm]
    level_voxel = [None if v is None else float(v) for v in spec.level_voxel_size_nm]
    options = json.dumps(dict(spec.options), sort_keys=True)
    cols_out: dict[str, pa.Array] = {
        "key": pa.array(keys, pa.string()),
        "dataset_id": _repeat(spec.dataset_id, n, pa.string()),
        "uri": _repeat(spec.uri, n, pa.string()),
        "source_format": _repeat(spec.source_format, n, pa.string()),
        "source_options": _repeat(options, n, pa.string()),
        "channel": _repeat(spec.channel, n, pa.int32()),
        "level": _repeat(spec.level, n, pa.int32()),
        "axis": _repeat(spec.axis, n, pa.string()),
        "slice": pa.array(slices.astype(np.int64)),
        "bbox_level": _fixed(box, 6, pa.int64()),
        "bbox_level0": _fixed(box0, 6, pa.int64()),
        "voxel_size_nm": _repeat(voxel, n, pa.list_(pa.float64(), 3)),
        "level_voxel_size_nm": _repeat(level_voxel, n, pa.list_(pa.float64(), 3)),
        "voxel_size_origin": _repeat(spec.voxel_size_origin, n, pa.string()),
        "target_pixel_size_nm": _repeat(float(spec.target_pixel_size_nm), n, pa.float64()),
        "pixel_size_nm": _fixed(np.tile(spec.pixel_size_nm, n), 2, pa.float64()),
        "tile_size": _repeat(spec.tile_size, n, pa.int32()),
        "src_tile": _fixed(np.tile(spec.src_tile, n), 2, pa.int32()),
        "resample": _repeat("area" if resampled else "none", n, pa.string()),
        "source_dtype": _repeat(spec.source_dtype, n, pa.string()),
        "std_low": _repeat(float(window.low), n, pa.float64()),
        "std_high": _repeat(float(window.high), n, pa.float64()),
        "std_percentiles": _fixed(np.tile(window.percentiles, n), 2, pa.float64()),
        "std_method": _repeat(
            "identity"
            if (window.low, window.high) == (0.0, 255.0) and spec.source_dtype == "uint8"
            else "percentile-unit",
            n,
            pa.string(),
        ),
        "dhash": pa.array(hashes.astype(np.uint64)),
        **{f"f_{k}": pa.array(features[k].astype(np.float32)) for k in FEATURES},
        "learned_score": pa.array(
            learned.astype(np.float32) if learned is not None else [None] * n, pa.float32()
        ),
        **{
            k: _repeat(meta.get(k), n, pa.string())
            for k in ("modality", "species", "organ", "tissue", "licence", "citation", "doi")
        },
        "unit": _repeat(spec.key, n, pa.string()),
        "reason": pa.array(reason.astype(str).tolist(), pa.string()),
        "blob_offset": pa.array(offsets.astype(np.int64)),
        "blob_length": pa.array(lengths.astype(np.int64)),
    }
    return pa.Table.from_arrays([cols_out[f.name] for f in UNIT_SCHEMA], schema=UNIT_SCHEMA)


#: Tiles processed together inside a unit (bounds the float64 resampling buffers).
BATCH = 64


def standardize_batch(tiles: np.ndarray, spec: UnitSpec, window: Any) -> np.ndarray:
    """Source tiles of one batch -> uint8 tiles of ``spec.tile_size`` (resample, window)."""
    t = spec.tile_size
    values = resample_area(tiles, (t, t)) if tiles.shape[1:] != (t, t) else tiles
    return to_uint8(values, window)


def make_tiles(spec: UnitSpec, cfg: UnitConfig) -> tuple[np.ndarray, Any, bool, Any]:
    """Read a unit and return (all its uint8 tiles, window, resampled?, positions)."""
    ut = read_unit_tiles(spec)
    window = choose_window(
        ut.tiles, spec.source_dtype, rescale_uint8=cfg.rescale_uint8, percentiles=cfg.percentiles
    )
    parts = [
        standardize_batch(ut.tiles[a : a + BATCH], spec, window)
        for a in range(0, len(ut.tiles), BATCH)
    ]
    t = spec.tile_size
    tiles = np.concatenate(parts) if parts else np.zeros((0, t, t), np.uint8)
    return tiles, window, ut.tiles.shape[1:] != (t, t), ut


def _process(spec: UnitSpec, cfg: UnitConfig, paths: dict[str, Path]) -> dict[str, Any]:
    ut = read_unit_tiles(spec)
    # One window per unit, from its source pixels (a strided subsample; recorded per tile).
    window = choose_window(
        ut.tiles, spec.source_dtype, rescale_uint8=cfg.rescale_uint8, percentiles=cfg.percentiles
    )
    n = len(ut.tiles)
    feats: dict[str, list[np.ndarray]] = {k: [] for k in FEATURES}
    learned_parts, reasons, hashes, pngs, embs = [], [], [], [], []
    for a in range(0, n, BATCH):
        tiles = standardize_batch(ut.tiles[a : a + BATCH], spec, window)
        f = tile_features(tiles)
        learned = None
        if cfg.score is not None:
            learned = np.asarray(cfg.score(tiles), np.float32).reshape(len(tiles))
            learned_parts.append(learned)
        reason = classify(f, cfg.thresholds, learned, cfg.min_score)
        kept = reason == ""
        for k in FEATURES:
            feats[k].append(f[k])
        reasons.append(reason)
        hashes.append(dhash(tiles))
        pngs += encode_pngs(tiles[kept], level=cfg.png_level)
        if cfg.embed is not None and kept.any():
            embs.append(np.asarray(cfg.embed(tiles[kept]), np.float32))
    reason = np.concatenate(reasons) if reasons else np.zeros(0, object)
    kept = reason == ""
    offsets = np.full(n, -1, np.int64)
    lengths = np.zeros(n, np.int64)
    o, ln = write_blob(paths["bin"], pngs)
    offsets[kept], lengths[kept] = o, ln
    if cfg.embed is not None:
        emb = np.concatenate(embs) if embs else np.zeros((0, 1), np.float32)
        tmp = paths["emb"].with_name(f".tmp-{os.getpid()}-{paths['emb'].name}")
        with open(tmp, "wb") as fh:
            np.save(fh, emb)
        os.replace(tmp, paths["emb"])
    t = spec.tile_size
    table = build_table(
        spec,
        keys=tile_keys(spec, ut.slice_index, ut.row0, ut.col0),
        slices=ut.slice_index,
        rows=ut.row0,
        cols=ut.col0,
        window=window,
        resampled=ut.tiles.shape[1:] != (t, t),
        hashes=np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
        features={k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in feats.items()},
        learned=np.concatenate(learned_parts) if learned_parts else None,
        reason=reason,
        offsets=offsets,
        lengths=lengths,
    )
    tmp = paths["parquet"].with_name(f".tmp-{os.getpid()}-{paths['parquet'].name}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, paths["parquet"])
    return {
        "key": spec.key,
        "dataset": spec.dataset_id,
        "sampled": n,
        "kept": int(kept.sum()),
        "filtered": {r: int((reason == r).sum()) for r in sorted(set(reason.tolist())) if r},
        "failure": None,
    }


def run_unit(spec: UnitSpec, cfg: UnitConfig, out: str | os.PathLike[str]) -> dict[str, Any]:
    """Process a unit (or return its recorded result when already done); never raises.

    Returns:
        ``{"key", "dataset", "status": "done"|"cached"|"failed", "sampled", "kept",
        "filtered": {reason: n}, "failure": record or None}``.
    """
    paths = unit_paths(out, spec.key)
    fp = spec.fingerprint(cfg.fingerprint_extra())
    marker = read_marker(paths["done"])
    if marker and marker.get("fingerprint") == fp:
        return {**marker["summary"], "status": "cached"}
    try:
        summary = _process(spec, cfg, paths)
        atomic_write_bytes(
            paths["done"],
            json.dumps({"fingerprint": fp, "summary": summary}, sort_keys=True).encode(),
        )
        return {**summary, "status": "done"}
    except Exception as err:  # recorded as a named failure; the run goes on
        return {
            "key": spec.key,
            "dataset": spec.dataset_id,
            "status": "failed",
            "sampled": 0,
            "kept": 0,
            "filtered": {},
            "failure": failure("unit", err, dataset=spec.dataset_id, unit=spec.key),
        }


def expected_tiles(spec: UnitSpec) -> int:
    """Tiles a unit will sample (for progress totals)."""
    return int(
        math.prod((len(spec.slices), spec.rows[1] - spec.rows[0], spec.cols[1] - spec.cols[0]))
    )
