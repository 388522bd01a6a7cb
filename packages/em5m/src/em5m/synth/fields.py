"""Randomness as a pure function of position: counter-based hashing and lattice noise.

Every random quantity in a phantom (object parameters, textures, noise) is derived from a hash of
``(seed, purpose, integer position)`` instead of a sequential random stream. Any block of the
phantom can then be rendered alone and agrees bit for bit with its neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_MASK64 = (1 << 64) - 1
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
GOLDEN = 0x9E3779B97F4A7C15

#: Standard deviation of :class:`LatticeNoise` (uniform coefficients in [-1, 1] smoothed by a
#: cubic B-spline in 3D: sqrt(1/3 * (151/315)**3)). Divide by it for unit variance.
VALUE_NOISE_STD = float(np.sqrt((1.0 / 3.0) * (151.0 / 315.0) ** 3))


def mix_int(*parts: int) -> int:
    """Hash Python integers (any sign) into one 64-bit key with splitmix64.

    Examples:
        >>> mix_int(1, 2) == mix_int(1, 2) != mix_int(2, 1)
        True
    """
    h = 0x243F6A8885A308D3
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + GOLDEN) & _MASK64
        h = ((h ^ (h >> 30)) * _M1) & _MASK64
        h = ((h ^ (h >> 27)) * _M2) & _MASK64
        h ^= h >> 31
    return h


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on a uint64 array (a bijection with good avalanche)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x *= np.uint64(_M1)
        x ^= x >> np.uint64(27)
        x *= np.uint64(_M2)
        x ^= x >> np.uint64(31)
    return x


def _u64(a: np.ndarray | int) -> np.ndarray:
    # Two's-complement wrap so negative lattice indices hash fine.
    return np.asarray(a, dtype=np.int64).astype(np.uint64)


def hash3(key: int, iz: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """uint64 hash of integer positions (broadcast together) under ``key``.

    Hashing axis by axis keeps the work on small broadcast arrays until the last step.
    """
    h = mix64(np.uint64(key) ^ _u64(iz))
    h = mix64(h ^ _u64(iy))
    return mix64(h ^ _u64(ix))


def unit_float(h: np.ndarray) -> np.ndarray:
    """float64 in [0, 1) from the top 53 bits of a uint64 hash."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def two_unit_floats(
    h: np.ndarray, dtype: type[np.floating] = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Two floats in (0, 1] from the two 32-bit halves of one hash (never 0; float32 may round
    the top values to 1)."""
    hi = (h >> np.uint64(32)).astype(dtype)
    lo = (h & np.uint64(0xFFFFFFFF)).astype(dtype)
    scale = dtype(1.0 / 4294967296.0)
    hi += dtype(0.5)
    hi *= scale
    lo += dtype(0.5)
    lo *= scale
    return hi, lo


def region_rng(key: int, i: int, j: int, k: int) -> np.random.Generator:
    """A numpy Generator owned by one region of space (deterministic, independent of blocks)."""
    return np.random.default_rng(mix_int(key, i, j, k))


def _bspline_weights(f: np.ndarray, deriv: bool) -> list[np.ndarray]:
    """Cubic B-spline weights of the 4 nodes around fractional position ``f`` (or d/df)."""
    if not deriv:
        g = 1.0 - f
        f2 = f * f
        f3 = f2 * f
        return [g * g * g / 6.0, (3 * f3 - 6 * f2 + 4) / 6.0, (-3 * f3 + 3 * f2 + 3 * f + 1) / 6.0,
                f3 / 6.0]  # fmt: skip
    f2 = f * f
    return [-0.5 * (1.0 - f) ** 2, 1.5 * f2 - 2 * f, -1.5 * f2 + f + 0.5, 0.5 * f2]


def _axis_plan(coords: np.ndarray, spacing: float) -> tuple[int, np.ndarray, np.ndarray]:
    u = np.asarray(coords, np.float64) / spacing
    fl = np.floor(u)
    i0 = fl.astype(np.int64) - 1
    base = int(i0.min())
    return base, i0 - base, u - fl


def _contract(arr: np.ndarray, axis: int, idx: np.ndarray, w: list[np.ndarray]) -> np.ndarray:
    # out = sum_t w_t * arr[idx + t] along `axis`, in a fixed order so every voxel's value is
    # independent of which block/tile it was computed in.
    shape = [1] * arr.ndim
    shape[axis] = idx.size
    out = np.take(arr, idx, axis=axis)
    out *= w[0].astype(np.float32).reshape(shape)
    for t in range(1, 4):
        tmp = np.take(arr, idx + t, axis=axis)
        tmp *= w[t].astype(np.float32).reshape(shape)
        out += tmp
    return out


def noise1d(key: int, ids: np.ndarray, coords: np.ndarray, spacing: float) -> np.ndarray:
    """Independent 1-D value noises (one per integer id) at ``coords`` (nm), in [-1, 1].

    ``ids`` and ``coords`` broadcast together; the result is float64 with std ~0.4.

    Examples:
        >>> noise1d(3, np.array([[1], [2]]), np.array([0.0, 50.0, 100.0]), 100.0).shape
        (2, 3)
    """
    u = np.asarray(coords, np.float64) / spacing
    fl = np.floor(u)
    w = _bspline_weights(u - fl, False)
    i0 = fl.astype(np.int64) - 1
    ids = np.asarray(ids, np.int64)
    out = None
    for t in range(4):  # fixed summation order: identical values wherever evaluated
        c = unit_float(hash3(key, ids, i0 + t, 0)) * 2.0 - 1.0
        out = c * w[t] if out is None else out + c * w[t]
    return out


def noise1d_bounds(
    key: int, ids: np.ndarray, lo: float, hi: float, spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of :func:`noise1d` of each id over ``[lo, hi]`` (nm): a B-spline
    stays within the range of the coefficients that support it."""
    nodes = np.arange(math.floor(lo / spacing) - 1, math.floor(hi / spacing) + 3)
    c = unit_float(hash3(key, np.asarray(ids, np.int64)[:, None], nodes[None, :], 0)) * 2.0 - 1.0
    return c.min(1), c.max(1)


@dataclass(frozen=True)
class LatticeNoise:
    """Smooth value noise: hashed coefficients on a cubic lattice, cubic B-spline interpolated.

    Values lie in [-1, 1] with standard deviation :data:`VALUE_NOISE_STD`; features have about the
    size of ``spacing`` (nm). The field is defined everywhere in world space, so any region can be
    evaluated on its own.

    Args:
        key: 64-bit hash key (seed and purpose).
        spacing: lattice spacing in nm.

    Examples:
        >>> n = LatticeNoise(key=1, spacing=100.0)
        >>> z = y = x = np.arange(8) * 10.0
        >>> n.grid(z, y, x).shape
        (8, 8, 8)
    """

    key: int
    spacing: float

    def _coeffs(self, bz: int, by: int, bx: int, shape: tuple[int, int, int]) -> np.ndarray:
        iz = np.arange(bz, bz + shape[0])[:, None, None]
        iy = np.arange(by, by + shape[1])[None, :, None]
        ix = np.arange(bx, bx + shape[2])[None, None, :]
        return (unit_float(hash3(self.key, iz, iy, ix)) * 2.0 - 1.0).astype(np.float32)

    def grid(
        self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray, *, gradient: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Evaluate on the grid ``zs x ys x xs`` (1-D world coordinates in nm) as float32.

        With ``gradient=True`` returns ``(value, d/dz, d/dy, d/dx)`` (per nm).
        """
        (bz, iz, fz), (by, iy, fy), (bx, ix, fx) = (
            _axis_plan(c, self.spacing) for c in (zs, ys, xs)
        )
        c = self._coeffs(bz, by, bx, (int(iz.max()) + 4, int(iy.max()) + 4, int(ix.max()) + 4))
        wz, wy, wx = (_bspline_weights(f, False) for f in (fz, fy, fx))
        b = _contract(c, 2, ix, wx)
        a = _contract(b, 1, iy, wy)
        value = _contract(a, 0, iz, wz)
        if not gradient:
            return value
        inv = 1.0 / self.spacing
        dwz, dwy, dwx = ([w * inv for w in _bspline_weights(f, True)] for f in (fz, fy, fx))
        dz = _contract(a, 0, iz, dwz)
        dy = _contract(_contract(b, 1, iy, dwy), 0, iz, wz)
        dx = _contract(_contract(_contract(c, 2, ix, dwx), 1, iy, wy), 0, iz, wz)
        return value, dz, dy, dx

    def points(self, p: np.ndarray) -> np.ndarray:
        """Evaluate at ``(N, 3)`` world points (nm), float64. Agrees with :meth:`grid` to float32
        rounding."""
        p = np.asarray(p, np.float64).reshape(-1, 3)
        u = p / self.spacing
        fl = np.floor(u)
        i0 = fl.astype(np.int64) - 1
        f = u - fl
        w = [np.stack(_bspline_weights(f[:, a], False), axis=1) for a in range(3)]  # (N, 4) each
        t = np.arange(4)
        h = hash3(
            self.key,
            (i0[:, 0, None] + t)[:, :, None, None],
            (i0[:, 1, None] + t)[:, None, :, None],
            (i0[:, 2, None] + t)[:, None, None, :],
        )
        c = unit_float(h) * 2.0 - 1.0
        return np.einsum("nabc,na,nb,nc->n", c, w[0], w[1], w[2])
