"""Image formation: PSF blur, thick sections, and Poisson-Gaussian detector noise.

Noise is drawn per voxel from a hash of ``(seed, global voxel index)`` (counter-based), so a block
gets the same noise whether rendered alone or as part of the whole volume. Poisson counts are exact
(inverse transform for small means, Hörmann's PTRS rejection sampler otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import gammaln

from em5m.synth.fields import GOLDEN, mix64, mix_int, two_unit_floats

TRUNCATE = 3.0  # Gaussian PSF support in sigmas (as scipy.ndimage)
_CHUNK = 1 << 16  # voxels per noise work unit


@dataclass(frozen=True)
class NoiseModel:
    """Poisson-Gaussian detector noise on a signal ``s`` in [0, 1].

    The detector counts ``Poisson(photons * s)`` electrons and adds Gaussian read noise, so the
    recorded value ``counts / photons + N(0, read_noise^2)`` has mean ``s`` and variance
    ``gain * s + read_noise^2`` with ``gain = 1 / photons``.

    Args:
        photons: expected counts for a full-scale signal (lower is noisier).
        read_noise: standard deviation of the additive Gaussian noise (signal units).

    Examples:
        >>> nm = NoiseModel(photons=100.0, read_noise=0.01)
        >>> round(nm.variance(0.5), 6)
        0.0051
    """

    photons: float = 100.0
    read_noise: float = 0.01

    def __post_init__(self) -> None:
        if not (math.isfinite(self.photons) and self.photons > 0):
            raise ValueError(f"photons must be positive, got {self.photons}")
        if not (math.isfinite(self.read_noise) and self.read_noise >= 0):
            raise ValueError(f"read_noise must be >= 0, got {self.read_noise}")

    @property
    def gain(self) -> float:
        return 1.0 / self.photons

    @property
    def read_var(self) -> float:
        return self.read_noise**2

    def variance(self, signal: float | np.ndarray) -> float | np.ndarray:
        """Expected noise variance at mean signal ``signal``."""
        return self.gain * signal + self.read_var

    def apply(
        self, signal: np.ndarray, *, seed: int = 0, origin: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """Noisy copy (float32) of ``signal`` (clipped below at 0).

        Args:
            signal: 1-3-D array of mean signal.
            seed: noise seed.
            origin: global index of ``signal[0, 0, ...]``; blocks of one image with their true
                origins receive exactly the noise of the whole image.

        Examples:
            >>> img = np.full((64, 64), 0.5, np.float32)
            >>> a = NoiseModel().apply(img, seed=1)
            >>> bool(np.array_equal(a[8:, 8:], NoiseModel().apply(img[8:, 8:], seed=1,
            ...                                                  origin=(8, 8))))
            True
        """
        s = np.asarray(signal, np.float32)
        if not 1 <= s.ndim <= 3:
            raise ValueError(f"signal must be 1-3-D, got {s.ndim}-D")
        origin = (0,) * s.ndim if origin is None else tuple(int(o) for o in origin)
        if len(origin) != s.ndim:
            raise ValueError(f"origin {origin} needs {s.ndim} entries")
        s3 = s.reshape((1,) * (3 - s.ndim) + s.shape)
        o3 = (0,) * (3 - s.ndim) + origin
        key = mix_int(seed, 0x6E6F697365)
        out = np.empty(s3.shape, np.float32)
        # Work in cache-sized groups of rows; randomness is per voxel, so grouping is invisible.
        rows = max(1, _CHUNK // s3.shape[2])
        for z in range(s3.shape[0]):
            for y in range(0, s3.shape[1], rows):
                part = s3[z, y : y + rows]
                hasher = _VoxelHasher((1, *part.shape), (o3[0] + z, o3[1] + y, o3[2]))
                out[z, y : y + rows] = self._rows(part, key, hasher).reshape(part.shape)
        return out.reshape(s.shape)

    def _rows(self, part: np.ndarray, key: int, hasher: _VoxelHasher) -> np.ndarray:
        lam = np.maximum(part.ravel(), 0.0).astype(np.float64) * self.photons
        out = _poisson(lam, key, hasher) * (1.0 / self.photons)
        if self.read_noise > 0:
            u1, u2 = two_unit_floats(hasher.hash(mix_int(key, 0x7E7E)), np.float32)
            gauss = np.sqrt(np.float32(-2.0) * np.log(u1))  # Box-Muller
            gauss *= np.cos(np.float32(2 * np.pi) * u2)
            out += self.read_noise * gauss
        return out


class _VoxelHasher:
    """Per-voxel uint64 hashes of global indices (flat order of a block)."""

    def __init__(self, shape: tuple[int, int, int], origin: tuple[int, int, int]) -> None:
        self.shape, self.origin = shape, origin

    def _parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(  # type: ignore[return-value]
            np.arange(o, o + n, dtype=np.int64).astype(np.uint64)
            for o, n in zip(self.origin, self.shape, strict=True)
        )

    def hash(self, key: int, flat: np.ndarray | None = None) -> np.ndarray:
        gz, gy, gx = self._parts()
        if flat is not None:
            iz, iy, ix = np.unravel_index(flat, self.shape)
            h = mix64(mix64(np.uint64(key) ^ gz[iz]) ^ gy[iy])
            with np.errstate(over="ignore"):
                return mix64(h ^ (gx[ix] * np.uint64(GOLDEN)))
        h = mix64(mix64(np.uint64(key) ^ gz[:, None, None]) ^ gy[None, :, None])
        with np.errstate(over="ignore"):
            return mix64(h ^ (gx[None, None, :] * np.uint64(GOLDEN))).ravel()


def _ptrs(lam: np.ndarray, uu: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One round of PTRS (Hörmann 1993, as numpy's generator) for ``lam >= 10``.

    The quick accept runs in the inputs' precision (float32 is plenty and twice as fast); the
    exact test for the rest runs in float64. Returns candidate counts and acceptance.
    """
    f = lam.dtype.type
    b = np.sqrt(lam)
    b *= f(2.53)
    b += f(0.931)
    a = f(0.02483) * b - f(0.059)
    uu = uu - f(0.5)
    us = f(0.5) - np.abs(uu)
    k = f(2) * a
    k /= us
    k += b
    k *= uu
    k += lam
    k += f(0.43)
    np.floor(k, out=k)
    accept = (us >= f(0.07)) & (v <= f(0.9277) - f(3.6224) / (b - f(2)))
    maybe = np.flatnonzero(~accept & (k >= 0) & ~((us < f(0.013)) & (v > us)))
    km, usm, bm, lm, am = (x[maybe].astype(np.float64) for x in (k, us, b, lam, a))
    invalpha = 1.1239 + 1.1328 / (bm - 3.4)
    lhs = np.log(v[maybe] * invalpha / (am / (usm * usm) + bm))
    rhs = km * np.log(lm) - lm - gammaln(km + 1)
    accept[maybe[lhs <= rhs]] = True
    return k, accept


def _poisson(lam: np.ndarray, key: int, hasher: _VoxelHasher) -> np.ndarray:
    """Exact Poisson samples (float64) with per-voxel counter-based randomness."""
    # Round 1 works on every voxel at once (no gathers); later rounds only on the few voxels
    # still rejected, each round with its own hash stream.
    u_all, v_all = two_unit_floats(hasher.hash(mix_int(key, 1)), np.float32)
    is_big = lam >= 10.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        k, accept = _ptrs(np.maximum(lam, 10.0).astype(np.float32), u_all, v_all)
    out = np.where(is_big & accept, k, 0.0)
    small = np.flatnonzero(~is_big)
    if small.size:
        # Inverse transform: walk the CDF; the active set shrinks quickly for small means.
        u = u_all[small].astype(np.float64)
        lam_s = lam[small]
        p = np.exp(-lam_s)
        cdf = p.copy()
        idx = np.arange(small.size)
        n = 0
        while idx.size and n < 200:
            idx = idx[u[idx] > cdf[idx]]
            n += 1
            out[small[idx]] = n
            p_i = p[idx] * lam_s[idx] / n
            p[idx] = p_i
            cdf[idx] += p_i
    pending = np.flatnonzero(is_big & ~accept)
    rnd = 2
    while pending.size:
        uu, v = two_unit_floats(hasher.hash(mix_int(key, rnd), pending), np.float32)
        k, accept = _ptrs(lam[pending].astype(np.float32), uu, v)
        out[pending[accept]] = k[accept]
        pending = pending[~accept]
        rnd += 1
    return out


def psf_radius(sigma_px: float) -> int:
    """Half-width in voxels of the truncated Gaussian (scipy's ``int(truncate * sigma + 0.5)``)."""
    return int(TRUNCATE * sigma_px + 0.5) if sigma_px > 0 else 0


def blur_xy(slab: np.ndarray, sigma_y: float, sigma_x: float) -> np.ndarray:
    """Gaussian PSF along the last two axes (sigmas in voxels); per-voxel results depend only on
    the ``psf_radius`` neighbourhood, so a halo that wide makes blocks seamless."""
    out = slab
    if sigma_y > 0:
        out = gaussian_filter1d(out, sigma_y, axis=-2, mode="nearest", truncate=TRUNCATE)
    if sigma_x > 0:
        out = gaussian_filter1d(out, sigma_x, axis=-1, mode="nearest", truncate=TRUNCATE)
    return out


def section_kernel(samples: int, sigma_fine: float) -> tuple[int, np.ndarray]:
    """Weights that turn fine z samples into one thick section, with an optional z PSF.

    A section ``k`` is ``sum_j w[j] * fine[k * samples - halo + j]``: the box average over the
    section's ``samples`` fine slices convolved with a Gaussian of ``sigma_fine`` fine slices.

    Returns:
        ``(halo, w)``; ``w`` sums to 1.

    Examples:
        >>> section_kernel(4, 0.0)
        (0, array([0.25, 0.25, 0.25, 0.25]))
    """
    box = np.full(samples, 1.0 / samples)
    halo = psf_radius(sigma_fine)
    if halo == 0:
        return 0, box
    x = np.arange(-halo, halo + 1)
    g = np.exp(-0.5 * (x / sigma_fine) ** 2)
    return halo, np.convolve(box, g / g.sum())
