"""Assemble the corpus from finished units: global dedup, shards, manifest.

Runs in the driver after every unit has finished, over the unit parts **in corpus order** (the
plan's order: catalog dataset, pixel size, axis, unit, tile), never in completion order. So the
result is a pure function of the unit outputs, which are themselves pure functions of their
specs: a killed-and-resumed run, a threaded run and a cluster run give identical manifests.

Near-duplicate removal is two-stage:

1. candidates: every pair of filter-kept tiles whose dHashes are within ``dedup_threshold``
   bits (`HammingIndex`: multi-index hashing, no all-pairs);
2. verification: a candidate pair is a duplicate when the best correlation of the two tiles over
   shifts of up to ``dedup_max_shift`` px reaches ``dedup_min_correlation`` (decoded from the
   unit blobs, in batches). This is what keeps distinct-but-similar EM tiles (neighbouring
   sections) while catching shifted, re-noised, re-compressed copies.

Then greedy selection in corpus order keeps the first exemplar; optionally an embedding pass
(cosine similarity) follows on the survivors.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from em5m.curate.dedup import (
    EmbedFn,
    candidate_pairs,
    embedding_duplicates,
    greedy_verified,
    max_shift_correlation,
)
from em5m.curate.filters import load_calibration
from em5m.curate.manifest import MANIFEST_SCHEMA, REMOVED_SCHEMA, TILE_FIELDS
from em5m.curate.progress import NullProgress, Progress
from em5m.curate.shards import SHARD_PATTERN, ShardWriter, decode_png
from em5m.curate.unit import unit_paths

#: Fields copied into each tile's ``<key>.json`` in the shards.
JSON_FIELDS = (
    "key",
    "dataset_id",
    "uri",
    "level",
    "axis",
    "slice",
    "bbox_level",
    "bbox_level0",
    "pixel_size_nm",
    "target_pixel_size_nm",
    "tile_size",
    "std_low",
    "std_high",
    "source_dtype",
    "modality",
    "species",
    "organ",
    "tissue",
    "licence",
    "citation",
    "doi",
)


@dataclass(frozen=True)
class DedupConfig:
    """Near-duplicate settings (see the module docstring); defaults from ``thresholds.json``.

    Args:
        enabled: run dedup at all.
        threshold: dHash Hamming distance for candidates.
        min_correlation: verification threshold; None: hash match alone decides.
        max_shift: shifts tried by the verification, px.
        embed_threshold: cosine similarity for the optional embedding pass.
    """

    enabled: bool = True
    threshold: int = field(default_factory=lambda: int(_calibrated("threshold", 8)))
    min_correlation: float | None = field(
        default_factory=lambda: float(_calibrated("min_correlation", 0.8))
    )
    max_shift: int = field(default_factory=lambda: int(_calibrated("max_shift", 2)))
    embed_threshold: float = 0.95


def _calibrated(name: str, fallback: float) -> float:
    """A dedup value from the calibrated ``thresholds.json`` (see `em5m.curate.calibrate`)."""
    return float(load_calibration().get("dedup", {}).get(name, fallback))


class TileLoader:
    """Decode kept tiles of the corpus by row, from the unit blobs, with small LRU caches."""

    def __init__(
        self,
        out: Path,
        units: Sequence[str],
        offsets: np.ndarray,
        lengths: np.ndarray,
        unit_of: np.ndarray,
        cache_tiles: int = 4096,
    ) -> None:
        self.out = out
        self.units = units
        self.offsets = offsets
        self.lengths = lengths
        self.unit_of = unit_of
        self._blobs: OrderedDict[int, bytes] = OrderedDict()
        self._tiles: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_tiles = cache_tiles

    def _blob(self, u: int) -> bytes:
        if u not in self._blobs:
            self._blobs[u] = unit_paths(self.out, self.units[u])["bin"].read_bytes()
            while len(self._blobs) > 8:
                self._blobs.popitem(last=False)
        self._blobs.move_to_end(u)
        return self._blobs[u]

    def png(self, row: int) -> bytes:
        blob = self._blob(int(self.unit_of[row]))
        o, n = int(self.offsets[row]), int(self.lengths[row])
        return blob[o : o + n]

    def tiles(self, rows: np.ndarray) -> np.ndarray:
        out = []
        for r in rows.tolist():
            t = self._tiles.get(r)
            if t is None:
                t = decode_png(self.png(r))
                self._tiles[r] = t
                while len(self._tiles) > self._cache_tiles:
                    self._tiles.popitem(last=False)
            out.append(t)
        return np.stack(out)


def load_parts(out: Path, keys: Sequence[str]) -> tuple[pa.Table, np.ndarray]:
    """Concatenate unit parts in the given order; also return each row's unit position."""
    parts = [pq.read_table(unit_paths(out, k)["parquet"]) for k in keys]
    if not parts:
        from em5m.curate.manifest import UNIT_SCHEMA

        return UNIT_SCHEMA.empty_table(), np.zeros(0, np.int64)
    unit_of = np.repeat(np.arange(len(parts)), [p.num_rows for p in parts])
    return pa.concat_tables(parts), unit_of


def dedup_rows(
    table: pa.Table,
    loader: TileLoader,
    cfg: DedupConfig,
    embed: EmbedFn | None,
    out: Path,
    keys: Sequence[str],
    progress: Progress,
) -> np.ndarray:
    """Row index of the exemplar each removed duplicate matched (-1: not a duplicate)."""
    n = table.num_rows
    dup_of = np.full(n, -1, np.int64)
    cand = np.flatnonzero(np.asarray(table.column("reason").to_pylist(), dtype=object) == "")
    keep = np.ones(len(cand), bool)
    if cfg.enabled and len(cand) >= 2:
        keep, dup = _hash_pass(table, cand, loader, cfg, progress)
        dup_of[cand[~keep]] = cand[dup[~keep]]
    if embed is not None and len(cand) >= 2:
        dup_of = _embedding_pass(table, cand, keep, dup_of, cfg, out, keys)
    return dup_of


def _hash_pass(
    table: pa.Table, cand: np.ndarray, loader: TileLoader, cfg: DedupConfig, progress: Progress
) -> tuple[np.ndarray, np.ndarray]:
    """dHash candidates + verification + greedy over the rows ``cand``.

    Returns:
        ``(keep, duplicate_of)`` indexed like ``cand`` (positions in ``cand``).
    """
    hashes = table.column("dhash").to_numpy()[cand]
    i, j = candidate_pairs(hashes, cfg.threshold)
    state = {"checked": 0, "found": 0}

    def verify(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if cfg.min_correlation is None:
            return np.ones(len(a), bool)
        corr = max_shift_correlation(
            loader.tiles(cand[a]), loader.tiles(cand[b]), max_shift=cfg.max_shift
        )
        ok = corr >= cfg.min_correlation
        state["checked"] += len(a)
        state["found"] += int(ok.any())
        if state["checked"] % 512 < len(a):
            progress(
                "dedup",
                int(b[0]) + 1,
                len(cand),
                {"checked": state["checked"], "duplicates": state["found"]},
            )
        return ok

    progress("dedup", 0, len(cand), {"candidates": len(i)})
    keep, dup, _ = greedy_verified(len(cand), i, j, verify)
    progress(
        "dedup",
        len(cand),
        len(cand),
        {"checked": state["checked"], "duplicates": int((~keep).sum())},
    )
    return keep, dup


def _embedding_pass(
    table: pa.Table,
    cand: np.ndarray,
    keep: np.ndarray,
    dup_of: np.ndarray,
    cfg: DedupConfig,
    out: Path,
    keys: Sequence[str],
) -> np.ndarray:
    embs = [np.load(unit_paths(out, k)["emb"]) for k in keys]
    emb = np.concatenate(embs) if embs else np.zeros((0, 1), np.float32)
    if len(emb) != len(cand):
        raise RuntimeError("embeddings do not match the filter-kept tiles; rerun the units")
    ekeep, edup = embedding_duplicates(emb, cfg.embed_threshold, candidates=keep)
    removed = keep & ~ekeep
    dup_of = dup_of.copy()
    dup_of[cand[removed]] = cand[edup[removed]]
    return dup_of


def _tile_meta(rows: list[dict[str, Any]], dhash: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for r, h in zip(rows, dhash.tolist(), strict=True):
        meta = {k: r[k] for k in JSON_FIELDS}
        meta["dhash"] = f"{h:016x}"
        out.append(meta)
    return out


def write_corpus(
    out: Path,
    table: pa.Table,
    loader: TileLoader,
    reason: np.ndarray,
    dup_of: np.ndarray,
    *,
    maxcount: int,
    maxsize: int,
    progress: Progress,
) -> list[str]:
    """Shards, ``manifest.parquet`` and ``removed.parquet``; returns the shard names."""
    kept = np.flatnonzero(reason == "")
    shard_dir = out / "shards"
    shard_of: list[str] = []
    meta_rows = table.select(list(JSON_FIELDS)).take(pa.array(kept)).to_pylist()
    metas = _tile_meta(meta_rows, table.column("dhash").to_numpy()[kept])
    progress("shards", 0, len(kept), {"tiles": 0})
    with ShardWriter(shard_dir, maxcount=maxcount, maxsize=maxsize) as writer:
        for count, (row, meta) in enumerate(zip(kept.tolist(), metas, strict=True), 1):
            shard_of.append(writer.add(meta["key"], loader.png(row), meta))
            if count % 2048 == 0 or count == len(kept):
                progress("shards", count, len(kept), {"tiles": count})
    shards = writer.shards
    for stale in shard_dir.glob("shard-*.tar"):  # from an earlier, larger configuration
        if stale.name not in shards:
            stale.unlink()
    base = table.select([f.name for f in TILE_FIELDS])
    manifest = base.take(pa.array(kept))
    manifest = manifest.add_column(0, "index", pa.array(np.arange(len(kept)), pa.int64()))
    manifest = manifest.add_column(2, "shard", pa.array(shard_of, pa.string()))
    manifest = manifest.cast(MANIFEST_SCHEMA)
    removed_rows = np.flatnonzero(reason != "")
    keys = np.asarray(table.column("key").to_pylist(), dtype=object)
    removed = base.take(pa.array(removed_rows))
    removed = removed.append_column("reason", pa.array(reason[removed_rows].tolist(), pa.string()))
    dup_keys = [keys[d] if d >= 0 else None for d in dup_of[removed_rows].tolist()]
    removed = removed.append_column("duplicate_of", pa.array(dup_keys, pa.string()))
    removed = removed.cast(REMOVED_SCHEMA)
    _write_parquet(manifest, out / "manifest.parquet")
    _write_parquet(removed, out / "removed.parquet")
    return shards


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def assemble(
    out: Path,
    keys: Sequence[str],
    *,
    dedup: DedupConfig,
    embed: EmbedFn | None,
    maxcount: int,
    maxsize: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build the corpus from the finished units ``keys`` (in corpus order).

    Returns:
        ``{"shards": [...], "per_dataset": {id: {"sampled", "kept", "filtered", "deduplicated"}},
        "dedup": {...}}``.
    """
    progress = progress or NullProgress()
    table, unit_of = load_parts(out, keys)
    offsets = table.column("blob_offset").to_numpy()
    lengths = table.column("blob_length").to_numpy()
    loader = TileLoader(out, keys, offsets, lengths, unit_of)
    dup_of = dedup_rows(table, loader, dedup, embed, out, keys, progress)
    reason = np.asarray(table.column("reason").to_pylist(), dtype=object)
    reason[dup_of >= 0] = "duplicate"
    shards = write_corpus(
        out, table, loader, reason, dup_of, maxcount=maxcount, maxsize=maxsize, progress=progress
    )
    datasets = np.asarray(table.column("dataset_id").to_pylist(), dtype=object)
    per: dict[str, dict[str, Any]] = {}
    for ds in dict.fromkeys(datasets.tolist()):
        m = datasets == ds
        r = reason[m]
        per[ds] = {
            "sampled": int(m.sum()),
            "kept": int((r == "").sum()),
            "filtered": {
                k: int((r == k).sum())
                for k in sorted(set(r.tolist()))
                if k not in ("", "duplicate")
            },
            "deduplicated": int((r == "duplicate").sum()),
        }
    return {"shards": shards, "per_dataset": per, "dedup": {"duplicates": int((dup_of >= 0).sum())}}


def shard_names(out: Path) -> list[str]:
    """Shard files present in ``out/shards`` (sorted)."""
    return sorted(p.name for p in (out / "shards").glob(SHARD_PATTERN.replace("{:06d}", "*")))


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def dump_json(path: Path, data: Any, default: Callable[[Any], Any] = json_default) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, default=default))
    os.replace(tmp, path)
