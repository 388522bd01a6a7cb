"""Benchmark the em5m curation: end-to-end tiles/s and near-duplicate lookup time per tile.

Usage::

    EMSSL_DATA=/path/to/data python tools/bench/curate.py [--slices 64] [--size 2240]
        [--workers 2] [--hashes 1000000] [--keep DIR]

1. **End to end.** Writes a local OME-Zarr (uint8, 40 x 8 x 8 nm, ``slices`` x ``size`` x
   ``size``) whose slices are mosaics of randomly flipped crops of the real EM data in
   ``EMSSL_DATA`` plus noise (so tiles are real-looking and not duplicates of each other), then
   runs ``em5m.curate.curate`` with local threads. Reports tiles/s for the whole run and for the
   work-unit stage. Baseline measured in the same run: reading the same units without any
   processing (``read_only``), i.e. what the storage alone allows.
2. **Dedup lookup.** ``hashes`` random 64-bit hashes plus 1 % planted near-duplicates (1-8 bit
   flips): builds the multi-index `HammingIndex` at the calibrated threshold, times a self-join
   (every hash queried) and queries of 10,000 new hashes; reports microseconds per tile.
   Baseline: brute-force popcount of all pairs on a 20,000-hash subset, against the index on the
   same subset.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np


def _pool(data: Path) -> list[np.ndarray]:
    """Real EM slices to cut crops from."""
    from em5m import open_volume

    pool = []
    for rel, step in [
        ("lucchi_pp/train/images", 20),
        ("drosophila_vnc_sstem/stack1/raw", 3),
        ("isbi2012/train/image", 4),
        ("isbi2012/test", 4),
    ]:
        vol = open_volume(data / rel)
        pool += [np.asarray(vol.data[z].compute()) for z in range(0, vol.shape[0], step)]
    return pool


def make_volume(path: Path, data: Path, slices: int, size: int) -> Path:
    """OME-Zarr of real-EM mosaics (deterministic per slice)."""
    from em5m import save_volume

    pool = _pool(data)
    crop = 320

    def render(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        z0 = block_info[None]["array-location"][0][0] if block_info else 0
        out = np.empty(block.shape, np.uint8)
        for k in range(block.shape[0]):
            rng = np.random.default_rng(z0 + k)
            canvas = np.empty((size, size), np.float32)
            for y in range(0, size, crop):
                for x in range(0, size, crop):
                    src = pool[int(rng.integers(len(pool)))]
                    oy = int(rng.integers(src.shape[0] - crop))
                    ox = int(rng.integers(src.shape[1] - crop))
                    c = src[oy : oy + crop, ox : ox + crop]
                    if rng.random() < 0.5:
                        c = c[::-1]
                    if rng.random() < 0.5:
                        c = c.T
                    h, w = min(crop, size - y), min(crop, size - x)
                    canvas[y : y + h, x : x + w] = c[:h, :w]
            canvas += rng.normal(0, 3, canvas.shape).astype(np.float32)
            out[k] = np.clip(np.rint(canvas), 0, 255)
        return out

    template = da.zeros((slices, size, size), dtype=np.uint8, chunks=(8, size, size))
    volume = template.map_blocks(render, dtype=np.uint8)
    save_volume(volume, path, axes="zyx", voxel_size=(40.0, 8.0, 8.0), levels=1, overwrite=True)
    return path


def _cpu_s() -> float:
    """User + system CPU seconds of this process (all threads)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_pipeline(tmp: Path, data: Path, slices: int, size: int, workers: int) -> dict:
    from em5m.curate import curate
    from em5m.curate.blocks import CACHE
    from em5m.curate.sample import cached_volume, clear_volume_cache, read_unit_tiles

    t0 = time.perf_counter()
    vol = make_volume(tmp / "bench.ome.zarr", data, slices, size)
    build_s = time.perf_counter() - t0
    catalog = tmp / "catalog.yaml"
    catalog.write_text(
        "defaults: {tile_size: 224, pixel_sizes_nm: [8.0]}\ndatasets:\n"
        f"  - {{id: bench, uri: '{vol}', modality: FIB-SEM, species: mouse,"
        " licence: research (EMSSL_DATA mosaics), citation: see EMSSL_DATA README}\n"
    )
    stamps: dict[str, float] = {}

    def progress(stage: str, done: int, total: int, info: object) -> None:
        stamps.setdefault(f"{stage}_start", time.perf_counter())
        if done >= total:
            stamps[f"{stage}_end"] = time.perf_counter()

    shutil.rmtree(tmp / "out", ignore_errors=True)  # a fresh run, never a resumed one
    clear_volume_cache()
    load_before = os.getloadavg()[0]
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    report = curate(catalog, tmp / "out", workers=workers, progress=progress)
    total_s = time.perf_counter() - t0
    cpu_s = _cpu_s() - cpu0
    sampled = report["totals"]["sampled"]
    units_s = stamps["units_end"] - stamps["units_start"]

    # Baseline: read the same units, nothing else, with the same number of threads.
    plan = json.loads((tmp / "out" / "plan.json").read_text())["units"]
    from concurrent.futures import ThreadPoolExecutor

    from em5m.curate.sample import UnitSpec

    specs = [
        UnitSpec(
            **{
                **u,
                **{
                    k: tuple(v) if isinstance(v, list) else v
                    for k, v in u.items()
                    if k not in ("options", "meta")
                },
                "options": tuple(tuple(x) for x in u["options"]),
                "meta": tuple(tuple(x) for x in u["meta"]),
            }
        )
        for u in plan
    ]
    clear_volume_cache()
    CACHE.clear()
    cached_volume(specs[0].uri, specs[0].level, specs[0].options)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        n_read = sum(len(t.tiles) for t in pool.map(read_unit_tiles, specs))
    read_s = time.perf_counter() - t0
    return {
        "volume": {
            "shape": [slices, size, size],
            "dtype": "uint8",
            "voxel_nm": [40, 8, 8],
            "format": "OME-Zarr (em5m.save_volume defaults)",
            "build_s": round(build_s, 1),
        },
        "workers": workers,
        "tiles_sampled": sampled,
        "tiles_kept": report["totals"]["kept"],
        "filtered": report["totals"]["filtered"],
        "deduplicated": report["totals"]["deduplicated"],
        "units": report["totals"]["units"],
        "end_to_end_s": round(total_s, 2),
        "cpu_s": round(cpu_s, 2),
        "cpu_ms_per_tile": round(cpu_s / sampled * 1e3, 3),
        "cpu_bound_tiles_per_s_on_2_free_cores": round(2 * sampled / cpu_s, 1),
        "load_average_before": round(load_before, 2),
        "end_to_end_tiles_per_s": round(sampled / total_s, 1),
        "units_stage_tiles_per_s": round(sampled / units_s, 1),
        "assemble_s": round(stamps.get("shards_end", t0) - stamps["units_end"], 2),
        "baseline_read_only_tiles_per_s": round(n_read / read_s, 1),
        "ratio_vs_read_only": round((sampled / total_s) / (n_read / read_s), 3),
    }


def bench_dedup(n: int, seed: int = 0) -> dict:
    from em5m.curate import DedupConfig, HammingIndex
    from em5m.curate.dedup import greedy_keep, hamming

    k = DedupConfig().threshold
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    h ^= rng.integers(0, 2, n).astype(np.uint64) << np.uint64(63)
    n_dup = n // 100
    src = rng.choice(n, n_dup, replace=False)
    flips = np.zeros(n_dup, np.uint64)
    for i in range(n_dup):
        for b in rng.choice(64, int(rng.integers(1, 9)), replace=False):
            flips[i] |= np.uint64(1) << np.uint64(int(b))
    h = np.concatenate([h, h[src] ^ flips])
    t0 = time.perf_counter()
    index = HammingIndex(h, k)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    qi, ids, _ = index.query(h)
    self_s = time.perf_counter() - t0
    pairs = int((ids < qi).sum())
    new = rng.integers(0, 2**63, 10_000, dtype=np.int64).astype(np.uint64)
    new[:100] = h[:100] ^ np.uint64(0b101)  # some hits
    t0 = time.perf_counter()
    index.query(new)
    query_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    keep, _ = greedy_keep(h, k)
    greedy_s = time.perf_counter() - t0
    # Baseline: brute force on a 20k subset vs the index on the same subset.
    sub = h[:20_000]
    t0 = time.perf_counter()
    for a in range(0, len(sub), 1000):
        (hamming(sub[a : a + 1000, None], sub[None, :]) <= k).sum()
    brute_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    HammingIndex(sub, k).query(sub)
    sub_index_s = time.perf_counter() - t0
    return {
        "hashes": len(h),
        "planted_near_duplicates": n_dup,
        "threshold_bits": k,
        "blocks": index.n_blocks,
        "build_s": round(build_s, 2),
        "self_join_s": round(self_s, 2),
        "self_join_us_per_tile": round(self_s / len(h) * 1e6, 2),
        "pairs_found": pairs,
        "planted_found_fraction": round(
            float(np.isin(np.arange(n, n + n_dup), qi[ids < qi]).mean()), 4
        ),
        "query_10k_new_us_per_tile": round(query_s / len(new) * 1e6, 2),
        "greedy_keep_total_s": round(greedy_s, 2),
        "removed_by_greedy": int((~keep).sum()),
        "baseline_brute_force_20k_s": round(brute_s, 3),
        "index_20k_s": round(sub_index_s, 3),
        "speedup_vs_brute_force_at_20k": round(brute_s / sub_index_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=2240)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="keep the volume and corpus in this folder")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args(argv)
    data = Path(os.environ.get("EMSSL_DATA", Path(__file__).resolve().parents[3] / "shared/data"))
    if not data.is_dir():
        print(f"EMSSL_DATA not found at {data}", file=sys.stderr)
        return 2
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="em5m-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "em5m curate",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    try:
        if not args.skip_pipeline:
            result["pipeline"] = bench_pipeline(tmp, data, args.slices, args.size, args.workers)
        result["dedup"] = bench_dedup(args.hashes)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
