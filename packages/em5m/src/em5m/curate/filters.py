"""Informativeness filter: cheap per-tile features, calibrated thresholds, optional learned score.

Features are computed for a whole batch of uint8 tiles at once (one ``(N, H, W)`` array; no
per-tile Python), in one pass over a per-tile grey-level histogram and one over 8x8 blocks:

==================  =================================================================
feature             what it measures
==================  =================================================================
``spread``          robust intensity range: 99th minus 1st percentile (grey levels)
``std``             intensity standard deviation
``entropy``         Shannon entropy of the grey-level histogram (bits)
``mode_frac``       fraction of pixels at the most common grey level
``sat_frac``        fraction of pixels at 0 or 255 (clipped)
``flat_frac``       fraction of 8x8 blocks whose values span at most 2 grey levels
``coarse_std``      std of the 8x8 block means: structure larger than noise
``edge_density``    fraction of 4x4-block-mean gradients above 4 grey levels per pixel
``texture``         coarse_std / std: how much of the variance is structure, not noise
==================  =================================================================

Rules (first match names the reason): ``blank`` (no spread or no coarse structure), ``padded``
(large constant regions), ``saturated`` (many clipped pixels), ``out_of_sample`` (noise without
structure: low coarse std, texture or edge density), ``learned`` (optional score below its
threshold). Thresholds are data (`thresholds.json`, produced by `em5m.curate.calibrate`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

#: Feature names, in the order of the manifest columns.
FEATURES: tuple[str, ...] = (
    "spread",
    "std",
    "entropy",
    "mode_frac",
    "sat_frac",
    "flat_frac",
    "coarse_std",
    "edge_density",
    "texture",
)
#: Reasons a tile is removed, in the order rules are checked.
REASONS: tuple[str, ...] = ("blank", "padded", "saturated", "out_of_sample", "learned")

#: A learned informativeness model: ``score(tiles uint8 [N, H, W]) -> float [N]`` (higher keeps).
ScoreFn = Callable[[np.ndarray], np.ndarray]

_BLOCK = 8


def _histograms(tiles: np.ndarray) -> np.ndarray:
    """Grey-level histograms from every 2nd pixel in y and x (statistics need no more)."""
    sub = tiles[:, ::2, ::2]
    out = np.empty((len(tiles), 256), np.int64)
    for i in range(len(tiles)):  # one C call per tile; a joint bincount needs a 4x larger index
        out[i] = np.bincount(sub[i].ravel(), minlength=256)
    return out


def _percentile_from_hist(cdf: np.ndarray, q: float) -> np.ndarray:
    total = cdf[:, -1:]
    return np.argmax(cdf >= q * total, axis=1).astype(np.float32)


def _strided_reduce(x: np.ndarray, k: int, op: Callable) -> np.ndarray:
    """Reduce non-overlapping k x k blocks of (N, H, W) with a binary ufunc, via k strided views
    per axis (much faster than reshaping and reducing over short axes)."""
    h, w = (x.shape[1] // k) * k, (x.shape[2] // k) * k
    x = x[:, :h, :w]
    cols = x[:, :, 0::k].copy()
    for j in range(1, k):
        op(cols, x[:, :, j::k], out=cols)
    out = cols[:, 0::k].copy()
    for j in range(1, k):
        op(out, cols[:, j::k], out=out)
    return out


def tile_features(tiles: np.ndarray) -> dict[str, np.ndarray]:
    """Informativeness features of a batch of uint8 tiles.

    Args:
        tiles: ``(N, H, W)`` uint8; H and W of at least 16.

    Returns:
        ``{name: float32 array [N]}`` for every name in `FEATURES`.

    Examples:
        >>> import numpy as np
        >>> f = tile_features(np.full((2, 32, 32), 7, np.uint8))
        >>> float(f["spread"][0]), float(f["mode_frac"][0]), float(f["flat_frac"][0])
        (0.0, 1.0, 1.0)
    """
    t = np.asarray(tiles)
    if t.dtype != np.uint8 or t.ndim != 3:
        raise ValueError(f"tile_features needs uint8 (N, H, W), got {t.dtype} {t.shape}")
    n = len(t)
    hist = _histograms(t)
    npix = hist.sum(axis=1, keepdims=True).astype(np.float64)
    cdf = np.cumsum(hist, axis=1)
    levels = np.arange(256, dtype=np.float64)
    p = hist / npix
    mean = p @ levels
    std = np.sqrt(np.maximum(p @ levels**2 - mean**2, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    spread = _percentile_from_hist(cdf, 0.99) - _percentile_from_hist(cdf, 0.01)

    # 4x4 block sums (uint16 holds 16 * 255), then 8x8 sums from them.
    s4 = _strided_reduce(t.astype(np.uint16), 4, np.add)
    s8 = _strided_reduce(s4, 2, np.add)
    coarse_std = (s8.reshape(n, -1).astype(np.float32) / (_BLOCK * _BLOCK)).std(axis=1)
    bmax = _strided_reduce(t, _BLOCK, np.maximum)
    bmin = _strided_reduce(t, _BLOCK, np.minimum)
    flat_frac = ((bmax - bmin) <= 2).mean(axis=(1, 2))
    # Gradients of 4x4 block means: noise shrinks 4x, membranes and organelles stay.
    small = s4.astype(np.float32) / 16.0
    gy = np.abs(np.diff(small, axis=1))[:, :, :-1]
    gx = np.abs(np.diff(small, axis=2))[:, :-1, :]
    edge_density = ((gy + gx) > 8.0).mean(axis=(1, 2))
    texture = coarse_std / np.maximum(std, 1e-6)
    feats = {
        "spread": spread,
        "std": std,
        "entropy": entropy,
        "mode_frac": hist.max(axis=1) / npix[:, 0],
        "sat_frac": (hist[:, 0] + hist[:, 255]) / npix[:, 0],
        "flat_frac": flat_frac,
        "coarse_std": coarse_std,
        "edge_density": edge_density,
        "texture": texture,
    }
    return {k: np.asarray(v, dtype=np.float32) for k, v in feats.items()}


@dataclass(frozen=True)
class FilterThresholds:
    """Thresholds of the rule-based filter (see the module docstring for the rules).

    Args:
        min_spread: blank if ``spread`` is below.
        min_coarse_std_blank: blank if ``coarse_std`` is below (nothing but a flat field).
        max_flat_frac: padded if ``flat_frac`` is above.
        max_mode_frac: padded if ``mode_frac`` is above (one grey level dominates).
        max_sat_frac: saturated if ``sat_frac`` is above.
        min_coarse_std: out of sample if ``coarse_std`` is below.
        min_texture: out of sample if ``texture`` is below.
        min_edge_density: out of sample if ``edge_density`` is below.
        note: how the values were calibrated.
    """

    min_spread: float = 12.0
    min_coarse_std_blank: float = 1.5
    max_flat_frac: float = 0.12
    max_mode_frac: float = 0.2
    max_sat_frac: float = 0.25
    min_coarse_std: float = 4.0
    min_texture: float = 0.2
    min_edge_density: float = 0.0
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_spread": self.min_spread,
            "min_coarse_std_blank": self.min_coarse_std_blank,
            "max_flat_frac": self.max_flat_frac,
            "max_mode_frac": self.max_mode_frac,
            "max_sat_frac": self.max_sat_frac,
            "min_coarse_std": self.min_coarse_std,
            "min_texture": self.min_texture,
            "min_edge_density": self.min_edge_density,
        }


def load_calibration(path: str | Path | None = None) -> dict[str, Any]:
    """The calibration JSON (default: ``thresholds.json`` shipped with em5m.curate)."""
    if path is None:
        text = resources.files("em5m.curate").joinpath("thresholds.json").read_text()
    else:
        text = Path(path).read_text()
    return json.loads(text)


def load_thresholds(path: str | Path | None = None) -> FilterThresholds:
    """Thresholds from a JSON file; default: the calibrated ``thresholds.json`` shipped here.

    Examples:
        >>> load_thresholds().max_sat_frac > 0
        True
    """
    raw = load_calibration(path)
    values = raw.get("thresholds", raw)
    known = set(FilterThresholds.__dataclass_fields__) - {"note", "extra"}
    return FilterThresholds(
        **{k: float(v) for k, v in values.items() if k in known},
        note=str(raw.get("note", "")),
        extra={k: v for k, v in raw.items() if k not in ("thresholds", "note")},
    )


def classify(
    features: Mapping[str, np.ndarray],
    th: FilterThresholds,
    learned: np.ndarray | None = None,
    min_learned: float = 0.5,
) -> np.ndarray:
    """Reason each tile is removed (``""`` when kept), as an object array of str.

    Args:
        features: output of `tile_features`.
        th: thresholds.
        learned: optional learned scores (higher = more informative).
        min_learned: tiles with a learned score below this are removed as ``"learned"``.

    Examples:
        >>> import numpy as np
        >>> tiles = np.stack([np.full((32, 32), 9, np.uint8),
        ...                   np.random.default_rng(0).integers(0, 256, (32, 32), np.uint8)])
        >>> classify(tile_features(tiles), FilterThresholds()).tolist()
        ['blank', 'out_of_sample']
    """
    f = features
    n = len(f["spread"])
    reason = np.full(n, "", dtype=object)
    rules = [
        ("blank", (f["spread"] < th.min_spread) | (f["coarse_std"] < th.min_coarse_std_blank)),
        ("padded", (f["flat_frac"] > th.max_flat_frac) | (f["mode_frac"] > th.max_mode_frac)),
        ("saturated", f["sat_frac"] > th.max_sat_frac),
        (
            "out_of_sample",
            (f["coarse_std"] < th.min_coarse_std)
            | (f["texture"] < th.min_texture)
            | (f["edge_density"] < th.min_edge_density),
        ),
    ]
    if learned is not None:
        rules.append(("learned", np.asarray(learned) < min_learned))
    for name, hit in rules:  # first rule that fires names the reason
        reason[(reason == "") & hit] = name
    return reason
