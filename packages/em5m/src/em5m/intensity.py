"""Intensity standardization of EM data: robust percentiles to uint8, lazily.

EM comes as uint8, uint16, signed MRC or float, with outliers (saturated pixels, padding) that a
min/max stretch would let dominate. A percentile window estimated from a bounded sample keeps the
cost independent of the volume size and is recorded so the mapping can be reproduced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import dask.array as da
import numpy as np

from em5m.volume import Volume


@dataclass(frozen=True)
class IntensityWindow:
    """The linear map ``(v - low) / (high - low)`` to [0, 1], as measured on a volume."""

    low: float
    high: float
    percentiles: tuple[float, float]
    source_dtype: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def estimate_window(
    volume: Volume,
    *,
    percentiles: tuple[float, float] = (0.5, 99.5),
    max_samples: int = 2_000_000,
    seed: int = 0,
) -> IntensityWindow:
    """Robust intensity window of a volume from at most ``max_samples`` voxels.

    Whole chunks are sampled (random choice of chunks, seeded) rather than scattered voxels, so a
    remote or compressed volume is read a few chunks at a time.

    Args:
        volume: the volume to measure.
        percentiles: low and high percentile, in 0..100.
        max_samples: upper bound on voxels read.
        seed: chunk sampling seed (the result is deterministic).

    Examples:
        >>> import numpy as np
        >>> v = Volume.from_array(np.arange(100, dtype=np.uint16).reshape(10, 10))
        >>> w = estimate_window(v, percentiles=(0, 100))
        >>> (w.low, w.high)
        (0.0, 99.0)
    """
    lo_p, hi_p = percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    data = volume.data
    blocks = list(np.ndindex(*data.numblocks))
    rng = np.random.default_rng(seed)
    rng.shuffle(blocks)
    chunk_voxels = max(1, int(np.prod([c[0] for c in data.chunks])))
    n_blocks = max(1, min(len(blocks), max_samples // chunk_voxels))
    picked = [np.asarray(data.blocks[b]).ravel() for b in blocks[:n_blocks]]
    values = np.concatenate(picked)
    if values.size > max_samples:
        values = rng.choice(values, max_samples, replace=False)
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    low, high = (float(v) for v in np.percentile(values, [lo_p, hi_p]))
    if high <= low:  # a flat image: keep the map defined
        high = low + 1.0
    return IntensityWindow(low, high, (float(lo_p), float(hi_p)), str(volume.dtype))


def to_uint8(volume: Volume, window: IntensityWindow | None = None) -> Volume:
    """Map a volume to uint8 through a robust window (estimated when not given). Lazy."""
    window = window or estimate_window(volume)
    scale = 255.0 / (window.high - window.low)

    def _map(block: np.ndarray) -> np.ndarray:
        out = (block.astype(np.float32) - window.low) * scale
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    data = da.map_blocks(_map, volume.data, dtype=np.uint8)
    meta = dict(volume.metadata, intensity_window=window.as_dict())
    return volume.replace(data=data, metadata=meta)
