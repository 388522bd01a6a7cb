"""Resample tiles to the target pixel size and standardize them to uint8, reproducibly.

Two steps, both bit-exact functions of their inputs so a tile can be rebuilt from its manifest row:

1. `resample_area`: area (box) resampling of a stack of same-size tiles. Each output pixel is the
   overlap-weighted mean of the input pixels it covers (like OpenCV's ``INTER_AREA``). It is
   written as a short, fixed-order sum of element-wise products instead of a matrix product, so
   the result does not depend on how many tiles are in the batch or on the BLAS library.
2. `to_uint8`: the linear window map of `em5m.intensity.to_uint8`
   (``clip(rint((v - low) * 255 / (high - low)))``). uint8 sources keep their values (window
   0..255, the identity); other dtypes get a robust percentile window measured per work unit
   (`unit_window`) and recorded with every tile.
"""

from __future__ import annotations

import numpy as np

from em5m.intensity import IntensityWindow

#: Window used for uint8 sources: the identity map.
IDENTITY_WINDOW_BOUNDS = (0.0, 255.0)


def area_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer terms of 1D area resampling from ``n_in`` to ``n_out`` samples.

    Output sample ``j`` covers ``[j * f, (j + 1) * f)`` with ``f = n_in / n_out``; input sample
    ``i`` enters with its overlap times ``n_out`` (an integer, since every edge is a multiple of
    ``1 / n_out``). The true weights are these divided by ``n_in``.

    Returns:
        ``(idx, w)``, both ``(n_out, K)``: input index and integer weight (as float64) of each
        term; unused terms have weight 0.

    Examples:
        >>> idx, w = area_weights(3, 2)
        >>> idx.tolist(), w.tolist()
        ([[0, 1], [1, 2]], [[2.0, 1.0], [1.0, 2.0]])
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"lengths must be positive, got {n_in} -> {n_out}")
    k = -(-n_in // n_out) + 1
    idx = np.zeros((n_out, k), np.int64)
    w = np.zeros((n_out, k), np.float64)
    for j in range(n_out):
        lo, hi = j * n_in, (j + 1) * n_in  # cell edges, scaled by n_out
        first = lo // n_out
        for t in range(k):
            i = first + t
            if i >= n_in:
                break
            overlap = min(hi, (i + 1) * n_out) - max(lo, i * n_out)
            if overlap > 0:
                idx[j, t], w[j, t] = i, overlap
    used = w.any(axis=0)
    return idx[:, used], w[:, used]


def _area_axis(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """``n_in`` times the area means along ``axis`` (1 or 2) of a float64 (N, H, W) stack.

    For integer-valued input every product and sum is an exact integer below 2**53.
    """
    n_in = x.shape[axis]
    if n_in == n_out:
        return x * float(n_in)
    if n_in % n_out == 0:  # integer factor: block sums
        k = n_in // n_out
        shape = list(x.shape)
        shape[axis : axis + 1] = [n_out, k]
        return x.reshape(shape).sum(axis=axis + 1) * float(n_out)
    idx, w = area_weights(n_in, n_out)
    bshape = [1, 1, 1]
    bshape[axis] = n_out
    out = np.take(x, idx[:, 0], axis=axis)
    out *= w[:, 0].reshape(bshape)
    for t in range(1, idx.shape[1]):  # fixed order of terms
        term = np.take(x, idx[:, t], axis=axis)
        term *= w[:, t].reshape(bshape)
        out += term
    return out


def resample_area(stack: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Area-resample a stack of 2D tiles ``(N, H, W)`` to ``(N, *out_shape)`` in float32.

    Each output pixel is the overlap-weighted mean of the input pixels it covers (OpenCV's
    ``INTER_AREA``; for an integer factor, the block mean). Computed from integer overlap weights
    (`area_weights`): for integer inputs every intermediate is an exact integer in float64 and
    the final division rounds once, so the result is the same for any batch size, BLAS or machine
    (which makes a tile reproducible from its manifest row). Up-sampling (output larger than
    input) uses the same rule: each output pixel takes the input pixels it overlaps.

    Args:
        stack: tiles of any real dtype.
        out_shape: ``(rows, cols)`` of the result.

    Returns:
        float32 array; the input converted unchanged when the shapes already match.

    Examples:
        >>> import numpy as np
        >>> resample_area(np.arange(16, dtype=np.uint8).reshape(1, 4, 4), (2, 2))[0].tolist()
        [[2.5, 4.5], [10.5, 12.5]]
        >>> resample_area(np.array([[[0, 3, 6]]], np.uint8), (1, 2))[0].tolist()
        [[1.0, 5.0]]
    """
    x = np.asarray(stack)
    if x.ndim != 3:
        raise ValueError(f"resample_area needs (N, H, W), got shape {x.shape}")
    h, w = x.shape[1:]
    oh, ow = int(out_shape[0]), int(out_shape[1])
    if (h, w) == (oh, ow):
        return x.astype(np.float32, copy=False)
    y = _area_axis(x.astype(np.float64), 1, oh)
    y = _area_axis(y, 2, ow)
    return (y / float(h * w)).astype(np.float32)


def identity_window(source_dtype: str) -> IntensityWindow:
    """The window of a uint8 source: values kept as they are."""
    return IntensityWindow(*IDENTITY_WINDOW_BOUNDS, (0.0, 100.0), source_dtype)


def unit_window(
    values: np.ndarray,
    source_dtype: str,
    *,
    percentiles: tuple[float, float] = (0.5, 99.5),
    max_samples: int = 1_000_000,
) -> IntensityWindow:
    """Robust window of the pixels of one work unit (a deterministic strided subsample).

    Args:
        values: the unit's pixels (resampled tiles), any shape.
        source_dtype: dtype of the source, recorded in the window.
        percentiles: low and high percentile in 0..100.
        max_samples: at most this many pixels enter the percentile computation.

    Examples:
        >>> import numpy as np
        >>> w = unit_window(np.arange(1001, dtype=np.float32), "uint16", percentiles=(1, 99))
        >>> (w.low, w.high)
        (10.0, 990.0)
    """
    flat = np.asarray(values).ravel()
    step = max(1, flat.size // max_samples)
    sample = flat[::step]
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return IntensityWindow(0.0, 1.0, tuple(map(float, percentiles)), source_dtype)
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    if high <= low:  # a flat unit: keep the map defined
        high = low + 1.0
    return IntensityWindow(low, high, (float(percentiles[0]), float(percentiles[1])), source_dtype)


def choose_window(
    values: np.ndarray,
    source_dtype: str,
    *,
    rescale_uint8: bool = False,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> IntensityWindow:
    """The window for one unit: identity for uint8 (unless ``rescale_uint8``), else percentiles.

    Examples:
        >>> import numpy as np
        >>> choose_window(np.zeros(4), "uint8").low, choose_window(np.zeros(4), "uint8").high
        (0.0, 255.0)
    """
    if source_dtype == "uint8" and not rescale_uint8:
        return identity_window(source_dtype)
    return unit_window(values, source_dtype, percentiles=percentiles)


def to_uint8(values: np.ndarray, window: IntensityWindow) -> np.ndarray:
    """Apply ``window`` exactly as `em5m.intensity.to_uint8` does, to a numpy array.

    Examples:
        >>> import numpy as np
        >>> w = IntensityWindow(10.0, 20.0, (0.0, 100.0), "uint16")
        >>> to_uint8(np.array([5, 10, 15, 20, 30], np.uint16), w).tolist()
        [0, 0, 128, 255, 255]
    """
    arr = np.asarray(values)
    if arr.dtype == np.uint8 and (window.low, window.high) == IDENTITY_WINDOW_BOUNDS:
        return arr  # identity on uint8: skip the float round trip
    scale = 255.0 / (window.high - window.low)
    out = (arr.astype(np.float32, copy=False) - window.low) * scale
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
