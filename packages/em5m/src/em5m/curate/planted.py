"""Planted bad tiles and near-duplicates: the ground truth for calibrating and testing curation.

Every generator is deterministic given its ``rng`` and, except `blank`, starts from real EM tiles
so that what it plants differs from real data only in the defect it names:

- `blank`: a constant grey level, optionally a faint illumination ramp, plus weak noise;
- `padded`: a real tile with 25-90 % of its area replaced by a constant (0, 255 or another grey)
  along one or two borders (what stitching and alignment leave);
- `saturated`: a real tile pushed so that 50-95 % of its pixels clip at 0 and/or 255;
- `out_of_sample`: structure-less noise (resin or empty beam): the fine-scale noise of a real
  tile, shuffled, smoothed a little, around a random grey;
- `near_duplicates`: real tiles cut 1-2 px shifted from their source region, re-noised and
  re-encoded as JPEG.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage


def blank(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` blank tiles ``(n, size, size)`` uint8.

    Examples:
        >>> import numpy as np
        >>> blank(2, 16, np.random.default_rng(0)).shape
        (2, 16, 16)
    """
    out = np.empty((n, size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        level = rng.uniform(0, 255)
        ramp = rng.uniform(-6, 6) * yy + rng.uniform(-6, 6) * xx
        noise = rng.normal(0, rng.uniform(0, 2.0), (size, size))
        out[i] = np.clip(np.rint(level + ramp + noise), 0, 255)
    return out


def padded(
    tiles: np.ndarray, rng: np.random.Generator, *, min_frac: float = 0.25, max_frac: float = 0.9
) -> np.ndarray:
    """Real tiles with a constant region covering ``min_frac``-``max_frac`` of the area.

    Examples:
        >>> import numpy as np
        >>> t = np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8)
        >>> p = padded(t, np.random.default_rng(1))
        >>> bool(((p == 0) | (p == 255)).any() or True)
        True
    """
    out = np.array(tiles, copy=True)
    n, h, w = out.shape
    for i in range(n):
        frac = rng.uniform(min_frac, max_frac)
        value = rng.choice([0, 255, int(rng.integers(1, 255))])
        if rng.random() < 0.5:  # one border
            side = int(rng.integers(4))
            k = int(round(frac * (h if side < 2 else w)))
            region = [np.s_[:k, :], np.s_[h - k :, :], np.s_[:, :k], np.s_[:, w - k :]][side]
            out[i][region] = value
        else:  # two borders (a corner): area 1 - (1 - a)(1 - b) = frac
            a = 1 - np.sqrt(1 - frac)
            ky, kx = int(round(a * h)), int(round(a * w))
            if rng.random() < 0.5:
                out[i, :ky, :] = value
                out[i, :, :kx] = value
            else:
                out[i, h - ky :, :] = value
                out[i, :, w - kx :] = value
    return out


def saturated(
    tiles: np.ndarray, rng: np.random.Generator, *, min_frac: float = 0.5, max_frac: float = 0.95
) -> np.ndarray:
    """Real tiles with ``min_frac``-``max_frac`` of the pixels clipped at 0 and/or 255."""
    out = np.empty_like(tiles)
    for i, t in enumerate(tiles.astype(np.float32)):
        frac = rng.uniform(min_frac, max_frac)
        mode = int(rng.integers(3))  # 0: bright, 1: dark, 2: both
        lo_q = {0: 0.0, 1: frac, 2: frac / 2}[mode]
        hi_q = {0: 1 - frac, 1: 1.0, 2: 1 - frac / 2}[mode]
        lo, hi = np.quantile(t, [lo_q, hi_q])
        if hi <= lo:
            hi = lo + 1
        out[i] = np.clip(np.rint((t - lo) / (hi - lo) * 255), 0, 255)
    return out


def out_of_sample(tiles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Structure-less noise tiles with the noise level of real tiles (resin, empty beam)."""
    out = np.empty_like(tiles)
    for i, t in enumerate(tiles.astype(np.float32)):
        fine = t - ndimage.uniform_filter(t, 5)
        noise = rng.permutation(fine.ravel()).reshape(t.shape) * rng.uniform(0.5, 1.5)
        noise = ndimage.gaussian_filter(noise, rng.uniform(0.0, 1.0))
        grey = rng.uniform(30, 225)
        out[i] = np.clip(np.rint(grey + noise), 0, 255)
    return out


def near_duplicates(
    sources: np.ndarray,
    size: int,
    rng: np.random.Generator,
    *,
    max_shift: int = 2,
    noise_sigma: tuple[float, float] = (2.0, 6.0),
    jpeg_quality: tuple[int, int] = (60, 95),
) -> tuple[np.ndarray, np.ndarray]:
    """An original and a near-duplicate tile from each source region.

    Args:
        sources: ``(n, size + 2 * max_shift, size + 2 * max_shift)`` uint8 regions.
        size: tile size.
        rng: random generator.
        max_shift: the copy is cut 1..max_shift px away (in y, x or both).
        noise_sigma: range of the added Gaussian noise (grey levels).
        jpeg_quality: range of the JPEG quality of the re-encoding.

    Returns:
        ``(originals, copies)``, each ``(n, size, size)`` uint8.
    """
    m = max_shift
    n = len(sources)
    orig = np.ascontiguousarray(sources[:, m : m + size, m : m + size])
    copies = np.empty_like(orig)
    for i in range(n):
        while True:
            dy, dx = (int(v) for v in rng.integers(-m, m + 1, 2))
            if (dy, dx) != (0, 0):
                break
        c = sources[i, m + dy : m + dy + size, m + dx : m + dx + size].astype(np.float32)
        c = c + rng.normal(0, rng.uniform(*noise_sigma), c.shape)
        img = Image.fromarray(np.clip(np.rint(c), 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(*jpeg_quality, endpoint=True)))
        copies[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    return orig, copies
