"""Calibrate the filter and dedup thresholds on real EM tiles vs planted bad tiles / copies.

Run ``python -m em5m.curate.calibrate [--out thresholds.json]`` with ``EMSSL_DATA`` set. It:

1. samples every real tile of the reference catalog (`REFERENCE_CATALOG`) at 8 nm exactly as a
   curation run does (unfiltered);
2. splits them by position (even/odd) into a calibration half and a held-out half;
3. plants blank, padded, saturated and out-of-sample tiles (`em5m.curate.planted`) from the
   calibration half, and sets each rule's threshold halfway between the 0.5 % quantile of the
   real tiles and the 99.5 % quantile of the planted ones (or the mirror for "max" rules);
4. plants near-duplicates (1-2 px shift, noise, JPEG) of real regions and picks one more than
   the smallest dHash threshold that finds 99.5 % of them as candidates, and a verification
   correlation three quarters of the way from the best match among distinct real tiles to the
   copies' 0.5 % quantile;
5. evaluates everything on the held-out half with fresh planted tiles, and writes the values,
   the rates and this description to JSON.

"Distinct" real tiles are tiles at least 50 nm apart along the slicing axis (closer FIB-SEM
slices are near-duplicates of each other, and removing them is intended).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from em5m.catalog import load_catalog
from em5m.curate import planted
from em5m.curate.dedup import (
    candidate_pairs,
    dhash,
    greedy_verified,
    hamming,
    max_shift_correlation,
)
from em5m.curate.filters import FilterThresholds, classify, tile_features
from em5m.curate.plan import plan_dataset
from em5m.curate.sample import PLANES, SampleOptions
from em5m.curate.unit import UnitConfig, make_tiles

#: Minimum distance along the slicing axis for two real tiles to count as distinct.
DISTINCT_SPACING_NM = 50.0


def reference_tiles(
    catalog: str | os.PathLike[str] | None = None,
    *,
    tile_size: int = 224,
    pixel_size_nm: float = 8.0,
    distinct: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Real standardized tiles of a catalog (default: the EMSSL_DATA reference catalog).

    Args:
        catalog: catalog YAML.
        tile_size: tile size (use 224 + 2 * shift for near-duplicate sources).
        pixel_size_nm: pixel size for every dataset.
        distinct: keep only tiles at least `DISTINCT_SPACING_NM` apart along the slice axis.

    Returns:
        ``(tiles uint8 [N, t, t], labels "dataset/axis/slice")``.
    """
    from em5m.curate import REFERENCE_CATALOG

    cat = load_catalog(catalog or str(REFERENCE_CATALOG))
    cfg = UnitConfig()
    tiles, labels = [], []
    for i, entry in enumerate(cat.datasets):
        sampling = cat.sampling_for(entry).model_copy(
            update={"tile_size": tile_size, "pixel_sizes_nm": [pixel_size_nm]}
        )
        for spec in plan_dataset(entry, sampling, dataset_index=i, options=SampleOptions()).units:
            t, _, _, ut = make_tiles(spec, cfg)
            keep = np.ones(len(t), bool)
            if distinct and not spec.is_2d:
                s_ax = PLANES[spec.axis][0]
                spacing = spec.level_voxel_size_nm["zyx".index(s_ax)] or 1.0
                step = max(1, math.ceil(DISTINCT_SPACING_NM / spacing - 1e-9))
                keep = ut.slice_index % step == 0
            tiles.append(t[keep])
            labels += [f"{entry.id}/{spec.axis}/{s}" for s in ut.slice_index[keep].tolist()]
    return np.concatenate(tiles), labels


def planted_bad(real: np.ndarray, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """``n`` planted tiles of each defect, built from random real tiles."""
    pick = rng.choice(len(real), n)
    size = real.shape[1]
    return {
        "blank": planted.blank(n, size, rng),
        "padded": planted.padded(real[pick], rng),
        "saturated": planted.saturated(real[pick], rng),
        "out_of_sample": planted.out_of_sample(real[pick], rng),
    }


def filter_rates(
    th: FilterThresholds, real: np.ndarray, bad: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Fraction of real tiles kept and of each planted kind removed."""
    out = {"real_kept": float((classify(tile_features(real), th) == "").mean())}
    for kind, tiles in bad.items():
        out[f"{kind}_removed"] = float((classify(tile_features(tiles), th) != "").mean())
    return out


def _between(real: np.ndarray, bad: np.ndarray, lower_is_bad: bool) -> float:
    if lower_is_bad:
        return float((np.quantile(real, 0.005) + np.quantile(bad, 0.995)) / 2)
    return float((np.quantile(real, 0.995) + np.quantile(bad, 0.005)) / 2)


def calibrate_filter(real: np.ndarray, bad: Mapping[str, np.ndarray]) -> FilterThresholds:
    """Thresholds halfway between real tiles and the planted tiles each rule targets."""
    fr = tile_features(real)
    fb = {k: tile_features(v) for k, v in bad.items()}
    return FilterThresholds(
        min_spread=_between(fr["spread"], fb["blank"]["spread"], True),
        min_coarse_std_blank=0.0,
        max_flat_frac=_between(fr["flat_frac"], fb["padded"]["flat_frac"], False),
        max_mode_frac=_between(fr["mode_frac"], fb["padded"]["mode_frac"], False),
        max_sat_frac=_between(fr["sat_frac"], fb["saturated"]["sat_frac"], False),
        min_coarse_std=_between(fr["coarse_std"], fb["out_of_sample"]["coarse_std"], True),
        min_texture=0.0,
        min_edge_density=0.0,
    )


def dedup_rates(
    originals: np.ndarray,
    copies: np.ndarray,
    *,
    threshold: int,
    min_correlation: float,
    max_shift: int = 2,
) -> dict[str, float]:
    """Run candidate search + verification + greedy on distinct real tiles, then their copies.

    Args:
        originals: distinct real tiles (no two of them near-duplicates).
        copies: a planted near-duplicate of each original.

    Returns:
        ``copies_removed`` (detection rate), ``distinct_removed`` (false removals among the
        originals) and the number of candidate pairs.
    """
    corpus = np.concatenate([originals, copies])
    i, j = candidate_pairs(dhash(corpus), threshold)

    def verify(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        corr = max_shift_correlation(corpus[a], corpus[b], max_shift=max_shift)
        return corr >= min_correlation

    keep, _, _ = greedy_verified(len(corpus), i, j, verify)
    n_real = len(originals)
    return {
        "copies_removed": float((~keep[n_real:]).mean()),
        "distinct_removed": float((~keep[:n_real]).mean()),
        "candidate_pairs": int(len(i)),
    }


def calibrate_dedup(
    distinct: np.ndarray, originals: np.ndarray, copies: np.ndarray, max_shift: int = 2
) -> tuple[int, float, dict[str, Any]]:
    """(hash threshold, verification correlation, the distributions they came from).

    Args:
        distinct: distinct real tiles.
        originals: tiles with a planted copy each (may repeat tiles of ``distinct``).
        copies: the planted copies.
        max_shift: verification shift range.
    """
    d = hamming(dhash(originals), dhash(copies))
    # One bit of margin over the distance that covers 99.5 % of the planted copies.
    k = next(k for k in range(0, 31) if (d <= k).mean() >= 0.995) + 1
    dc = max_shift_correlation(originals, copies, max_shift=max_shift)
    i, j = candidate_pairs(dhash(distinct), k)
    distinct_hi = 0.0
    if len(i):
        distinct_hi = float(
            max_shift_correlation(distinct[i], distinct[j], max_shift=max_shift).max()
        )
    # Three quarters of the way up from the best distinct match: distinct-but-similar pairs are
    # few (so their maximum is underestimated), planted copies are many.
    tau = float(0.75 * np.quantile(dc, 0.005) + 0.25 * distinct_hi)
    info = {
        "copy_hash_distance_q50_q995_max": [
            float(np.quantile(d, 0.5)),
            float(np.quantile(d, 0.995)),
            int(d.max()),
        ],
        "copy_correlation_min_q005": [float(dc.min()), float(np.quantile(dc, 0.005))],
        "distinct_candidate_pairs": int(len(i)),
        "distinct_candidate_correlation_max": distinct_hi,
    }
    return k, round(tau, 3), info


def calibrate(seed: int = 0, n_planted: int = 400) -> dict[str, Any]:
    """Full calibration (see the module docstring); returns the JSON-ready result."""
    rng = np.random.default_rng(seed)
    real, labels = reference_tiles()
    cal, held = real[0::2], real[1::2]
    th = calibrate_filter(cal, planted_bad(cal, rng, n_planted))
    sources, _ = reference_tiles(tile_size=228, distinct=True)
    orig, copies = planted.near_duplicates(sources, 224, rng)
    # Three independent copies of each calibration original: more shifts/noise/JPEG draws.
    cal_src = sources[0::2]
    rounds = [planted.near_duplicates(cal_src, 224, rng) for _ in range(3)]
    k, tau, dinfo = calibrate_dedup(
        orig[0::2], np.concatenate([r[0] for r in rounds]), np.concatenate([r[1] for r in rounds])
    )
    held_filter = filter_rates(
        th, held, planted_bad(held, np.random.default_rng(seed + 1), n_planted)
    )
    held_dedup = dedup_rates(orig[1::2], copies[1::2], threshold=k, min_correlation=tau)
    note = (
        f"Calibrated {datetime.date.today().isoformat()} by em5m.curate.calibrate (seed {seed}) "
        f"on {len(real)} real 224x224 tiles at 8 nm from every EMSSL_DATA dataset (even tiles "
        f"for calibration, odd tiles held out) vs {n_planted} planted tiles of each kind "
        "(blank, padded 25-90 %, saturated 50-95 % clipped, out-of-sample noise). Each "
        "threshold lies halfway between the 0.5 % quantile of the real tiles and the 99.5 % "
        "quantile of the planted tiles it targets. Dedup: one more than the smallest dHash "
        "distance covering 99.5 % of planted near-duplicates (3 copies per calibration tile; "
        "1-2 px shift, Gaussian noise sigma 2-6, JPEG q60-95); verification correlation (3x3 "
        "box-smoothed, best of +-2 px shifts) three quarters of the way from the best match "
        "among distinct real tiles (>= 50 nm apart) to the copies' 0.5 % quantile."
    )
    return {
        "version": 1,
        "thresholds": th.as_dict(),
        "dedup": {"threshold": k, "min_correlation": tau, "max_shift": 2, **dinfo},
        "held_out": {"filter": held_filter, "dedup": held_dedup},
        "n_real_tiles": len(real),
        "n_distinct_tiles": len(orig),
        "note": note,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="calibrate curation thresholds on EMSSL_DATA")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("thresholds.json"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = calibrate(args.seed)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["held_out"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
