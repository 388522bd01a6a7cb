"""Deterministic degradations of clean EM images, for restoration training and evaluation.

All functions take and return numpy ``float32`` images with intensities in ``[0, 1]`` (divide
``uint8`` data by 255 first). Randomness comes only from the ``rng`` passed in, so a seeded
`numpy.random.Generator` gives the same degraded image every time.

- `poisson_gaussian` with the two `NOISE_LEVELS` ``"low"`` and ``"high"``: shot noise plus read
  noise (denoising).
- `downsample2x` (2 x 2 area mean) and `bicubic_upsample` on the same pixel grid
  (super-resolution inputs and the bicubic baseline).
- `nlm_denoise` and `tune_nlm`: the non-local-means baseline for denoising.

Report the degradation (level name and its parameters, or ``2x area down-sampling``) with every
number measured on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "NOISE_LEVELS",
    "NLMTuning",
    "bicubic_upsample",
    "downsample2x",
    "nlm_denoise",
    "noise_sigma",
    "poisson_gaussian",
    "tune_nlm",
]

#: Named Poisson-Gaussian noise levels: keyword arguments of `poisson_gaussian`. ``photons`` is
#: the expected photon (electron) count of a pixel of intensity 1.0, ``read_noise`` the standard
#: deviation of the added Gaussian noise in ``[0, 1]`` units. Measured PSNR of the noisy image
#: against the clean one on the Lucchi++ val slices (last 33 of the training volume, mean intensity
#: 0.57): "low" 17.3 dB, "high" 13.1 dB.
NOISE_LEVELS: dict[str, dict[str, float]] = {
    "low": {"photons": 30.0, "read_noise": 0.02},
    "high": {"photons": 10.0, "read_noise": 0.04},
}


def _as_unit_float(image: np.ndarray, what: str = "image") -> np.ndarray:
    """``image`` as float32, checked to be finite and in ``[0, 1]``."""
    a = np.asarray(image)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"{what} has dtype {a.dtype}; expected a float image in [0, 1]")
    if a.dtype.kind in "iu" and a.size and a.max() > 1:
        raise ValueError(
            f"{what} has integer dtype {a.dtype} with values up to {a.max()}; scale it to "
            "[0, 1] first (for uint8 divide by 255)"
        )
    a = a.astype(np.float32, copy=False)
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or inf")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(
            f"{what} has values in [{a.min():.4g}, {a.max():.4g}]; expected intensities in [0, 1]"
        )
    return a


def poisson_gaussian(
    image: np.ndarray,
    *,
    photons: float,
    read_noise: float,
    rng: np.random.Generator | int,
    clip: bool = True,
) -> np.ndarray:
    """Add Poisson (shot) and Gaussian (read) noise to an image in ``[0, 1]``.

    The model: a pixel of clean intensity ``x`` collects ``k ~ Poisson(photons * x)`` counts, and
    the detector adds ``n ~ Normal(0, read_noise**2)``; the noisy intensity is
    ``y = k / photons + n``, clipped to ``[0, 1]``. Before clipping ``E[y] = x`` and
    ``Var[y] = x / photons + read_noise**2``, so fewer photons or more read noise mean more
    noise. Clipping lowers the variance only where ``x`` lies within a few standard deviations
    of 0 or 1.

    Args:
        image: clean image, any shape, float (or bool/0-1 integers) with values in ``[0, 1]``.
        photons: expected counts at intensity 1.0 (> 0); see `NOISE_LEVELS`.
        read_noise: standard deviation of the Gaussian read noise in ``[0, 1]`` units (>= 0).
        rng: a `numpy.random.Generator` (or an int seed for a fresh one). The result depends
            only on the image, the parameters and the generator's state.
        clip: clip the result to ``[0, 1]`` (default). ``False`` keeps the unbiased values, for
            checking the model.

    Returns:
        The noisy image, ``float32``, same shape.

    Raises:
        ValueError: ``photons`` <= 0, ``read_noise`` < 0, or the image is not finite in ``[0, 1]``.

    Examples:
        A flat grey image (x = 0.5): Var = 0.5 / 30 + 0.02**2 = 0.0171 ("low", PSNR 17.7 dB) and
        0.5 / 10 + 0.04**2 = 0.0516 ("high", 12.9 dB before clipping; clipping the tails at 0
        and 1 leaves 13.1 dB):

        >>> import numpy as np
        >>> clean = np.full((256, 256), 0.5, np.float32)
        >>> for name in ("low", "high"):
        ...     noisy = poisson_gaussian(clean, **NOISE_LEVELS[name], rng=0)
        ...     mse = float(np.mean((noisy - clean) ** 2))
        ...     print(name, noisy.dtype, round(-10 * np.log10(mse), 1))
        low float32 17.7
        high float32 13.1
    """
    if not (np.isfinite(photons) and photons > 0):
        raise ValueError(f"photons must be a positive number, got {photons}")
    if not (np.isfinite(read_noise) and read_noise >= 0):
        raise ValueError(f"read_noise must be >= 0, got {read_noise}")
    x = _as_unit_float(image)
    gen = np.random.default_rng(rng)
    counts = gen.poisson(x.astype(np.float64) * photons)
    noisy = counts / photons
    if read_noise > 0:
        noisy = noisy + gen.normal(0.0, read_noise, size=x.shape)
    if clip:
        noisy = np.clip(noisy, 0.0, 1.0)
    return noisy.astype(np.float32)


def noise_sigma(intensity: float, *, photons: float, read_noise: float) -> float:
    """Standard deviation of `poisson_gaussian` noise at a clean intensity (before clipping).

    Args:
        intensity: clean intensity in ``[0, 1]`` (for a whole image, its mean).
        photons: as `poisson_gaussian`.
        read_noise: as `poisson_gaussian`.

    Returns:
        ``sqrt(intensity / photons + read_noise**2)``.

    Examples:
        >>> round(noise_sigma(0.5, **NOISE_LEVELS["high"]), 4)
        0.2272
    """
    return math.sqrt(intensity / photons + read_noise**2)


def estimate_noise_std(image: np.ndarray) -> float:
    """Standard deviation of additive white noise in a 2D image (Immerkaer 1996).

    The image is filtered with the 3 x 3 mask ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``, which
    cancels locally planar signal; the mean absolute response times ``sqrt(pi / 2) / 6`` estimates
    sigma. Texture adds to the estimate, so on EM images read it as an upper bound. Used as a
    target, such an image caps restoration scores: a prediction whose only error is the target's
    own noise scores a PSNR of ``-20 log10(sigma)`` (data range 1), and none independent of that
    noise does much better.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> round(estimate_noise_std(0.5 + 0.05 * rng.standard_normal((256, 256))), 3)
        0.05
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 3:
        raise ValueError(f"expected a 2D image of at least 3 x 3 pixels, got shape {a.shape}")
    r = (
        a[:-2, :-2] - 2 * a[:-2, 1:-1] + a[:-2, 2:]
        - 2 * a[1:-1, :-2] + 4 * a[1:-1, 1:-1] - 2 * a[1:-1, 2:]
        + a[2:, :-2] - 2 * a[2:, 1:-1] + a[2:, 2:]
    )  # fmt: skip
    return float(math.sqrt(math.pi / 2) / 6 * np.abs(r).mean())


def downsample2x(image: np.ndarray) -> np.ndarray:
    """Down-sample by 2 with a 2 x 2 area mean (the last two axes).

    Pixel ``(i, j)`` of the result is the mean of input pixels ``2i..2i+1, 2j..2j+1``; an odd
    last row/column is cropped. In input pixel-centre coordinates (pixel ``k`` centred at ``k``),
    output pixel ``j`` is centred at ``2j + 0.5``: the same grid `bicubic_upsample` uses, so
    ``image[: 2 * h, : 2 * w]`` is the high-resolution target of the result.

    Args:
        image: ``(..., H, W)`` array with ``H, W >= 2`` (any real dtype; no range check, the
            mean of values in ``[0, 1]`` stays in ``[0, 1]``).

    Returns:
        ``(..., H // 2, W // 2)`` ``float32``.

    Raises:
        ValueError: fewer than 2 dimensions, or a side shorter than 2.

    Examples:
        >>> import numpy as np
        >>> downsample2x(np.arange(20, dtype=np.float32).reshape(4, 5)).tolist()
        [[3.0, 5.0], [13.0, 15.0]]
    """
    a = np.asarray(image)
    if a.ndim < 2 or a.shape[-1] < 2 or a.shape[-2] < 2:
        raise ValueError(f"downsample2x needs an (..., H, W) image with H, W >= 2, got {a.shape}")
    h, w = a.shape[-2] // 2, a.shape[-1] // 2
    a = a[..., : 2 * h, : 2 * w].astype(np.float32, copy=False)
    blocks = a.reshape(*a.shape[:-2], h, 2, w, 2)
    return blocks.mean(axis=(-3, -1), dtype=np.float32)


def bicubic_upsample(image: np.ndarray, factor: int = 2, *, clip: bool = True) -> np.ndarray:
    """Up-sample a 2D image by an integer factor with cubic-spline (order 3) interpolation.

    Pixel-area alignment (as ``align_corners=False`` in PyTorch, ``grid_mode=True`` in
    `scipy.ndimage.zoom`): the image covers the same area before and after, and output pixel
    ``i`` samples the input at coordinate ``(i + 0.5) / factor - 0.5``. This is the inverse grid
    of `downsample2x` (``factor=2``; two `downsample2x` calls match ``factor=4``), so a constant
    image round-trips exactly and a linear ramp exactly away from the border (the outermost
    pixels see the half-sample mirror boundary; on images smaller than about 8 pixels scipy's
    approximate boundary initialisation of the spline adds errors of order 1e-6).

    Args:
        image: ``(H, W)`` image.
        factor: integer zoom factor >= 1.
        clip: clip the result to ``[0, 1]`` to remove cubic over/undershoot (default; for
            images in ``[0, 1]``). ``False`` keeps the raw interpolation.

    Returns:
        ``(factor * H, factor * W)`` ``float32``.

    Raises:
        ValueError: not 2D, or ``factor`` is not an integer >= 1.

    Examples:
        >>> import numpy as np
        >>> small = downsample2x(np.full((32, 32), 0.25, np.float32))
        >>> big = bicubic_upsample(small)
        >>> big.shape, float(np.abs(big - 0.25).max())
        ((32, 32), 0.0)
    """
    from scipy import ndimage

    a = np.asarray(image, dtype=np.float64)  # float64 spline prefilter: no round-off drift
    if a.ndim != 2:
        raise ValueError(f"bicubic_upsample needs a 2D image, got shape {a.shape}")
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    factor = int(factor)
    out = ndimage.zoom(a, factor, order=3, mode="reflect", grid_mode=True, prefilter=True)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32, copy=False)


def nlm_denoise(image: np.ndarray, *, sigma: float, h_factor: float = 0.8) -> np.ndarray:
    """Non-local-means denoising (`skimage.restoration.denoise_nl_means`), the classic baseline.

    Fixed settings: ``fast_mode=True``, ``patch_size=5``, ``patch_distance=6`` (a 13 x 13 search
    window) and filter strength ``h = h_factor * sigma``; ``sigma`` is also passed to skimage,
    which subtracts the expected noise from the patch distances (fast mode).

    Args:
        image: noisy 2D image in ``[0, 1]``.
        sigma: noise standard deviation in ``[0, 1]`` units (> 0); for `poisson_gaussian` noise
            `noise_sigma` at the image's mean intensity is a start, `tune_nlm` picks it.
        h_factor: ``h / sigma`` (0.8 is skimage's suggestion for fast mode with ``sigma``).

    Returns:
        The denoised image, ``float32`` clipped to ``[0, 1]``.

    Raises:
        ValueError: not 2D, ``sigma`` or ``h_factor`` not positive.

    Examples:
        >>> import numpy as np
        >>> clean = np.tile(np.linspace(0.2, 0.8, 64, dtype=np.float32), (64, 1))
        >>> noisy = poisson_gaussian(clean, **NOISE_LEVELS["low"], rng=1)
        >>> den = nlm_denoise(noisy, sigma=0.12)
        >>> bool(np.mean((den - clean) ** 2) < np.mean((noisy - clean) ** 2) / 3)
        True
    """
    from skimage.restoration import denoise_nl_means

    a = np.asarray(image, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"nlm_denoise needs a 2D image, got shape {a.shape}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma}")
    if not (np.isfinite(h_factor) and h_factor > 0):
        raise ValueError(f"h_factor must be a positive number, got {h_factor}")
    out = denoise_nl_means(
        a,
        h=h_factor * sigma,
        sigma=sigma,
        fast_mode=True,
        patch_size=5,
        patch_distance=6,
        preserve_range=True,
    )
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class NLMTuning:
    """The result of `tune_nlm`.

    Args:
        sigma: the chosen ``sigma`` for `nlm_denoise`.
        h_factor: the chosen ``h_factor``; ``h = h_factor * sigma``.
        psnr: mean PSNR (dB, data range 1) over the tuning images at the chosen setting.
        scores: mean PSNR for every ``(sigma, h_factor)`` tried.
    """

    sigma: float
    h_factor: float
    psnr: float
    scores: dict[tuple[float, float], float] = field(default_factory=dict)

    @property
    def h(self) -> float:
        """The chosen filter strength ``h_factor * sigma``."""
        return self.h_factor * self.sigma


def tune_nlm(
    noisy: Sequence[np.ndarray],
    clean: Sequence[np.ndarray],
    sigmas: Iterable[float],
    *,
    h_factors: Iterable[float] = (0.8,),
) -> NLMTuning:
    """Pick the `nlm_denoise` setting with the best mean PSNR on tuning pairs (grid search).

    The tuning images must be disjoint from the images the baseline is evaluated on (take them
    from the training split); tuning on the evaluation images would report an optimistic number.
    The caller chooses them; this function never sees the evaluation set.

    Args:
        noisy: noisy 2D tuning images in ``[0, 1]``.
        clean: their clean versions (same shapes).
        sigmas: ``sigma`` values to try (each > 0).
        h_factors: ``h / sigma`` values to try; every pair with ``sigmas`` is evaluated.

    Returns:
        The best setting, its PSNR and the PSNR of every setting tried (ties: the first tried).

    Raises:
        ValueError: no images, different counts or shapes, or an empty grid.

    Examples:
        >>> import numpy as np
        >>> clean = [np.tile(np.linspace(0.2, 0.8, 48, dtype=np.float32), (48, 1))]
        >>> noisy = [poisson_gaussian(c, **NOISE_LEVELS["high"], rng=2) for c in clean]
        >>> best = tune_nlm(noisy, clean, sigmas=(0.02, 0.2))
        >>> best.sigma, best.h_factor, len(best.scores)
        (0.2, 0.8, 2)
    """
    noisy = list(noisy)
    clean = list(clean)
    grid = [(float(s), float(k)) for s in sigmas for k in h_factors]
    if not noisy:
        raise ValueError("tune_nlm needs at least one tuning image")
    if len(noisy) != len(clean):
        raise ValueError(f"tune_nlm got {len(noisy)} noisy but {len(clean)} clean images")
    for k, (n, c) in enumerate(zip(noisy, clean, strict=True)):
        if np.shape(n) != np.shape(c):
            raise ValueError(
                f"tuning pair {k}: noisy shape {np.shape(n)} differs from clean {np.shape(c)}"
            )
    if not grid:
        raise ValueError("tune_nlm needs at least one sigma and one h_factor")
    clean_f = [np.asarray(c, dtype=np.float32) for c in clean]
    scores: dict[tuple[float, float], float] = {}
    for sigma, h_factor in grid:
        psnrs = [
            _psnr(nlm_denoise(n, sigma=sigma, h_factor=h_factor), c)
            for n, c in zip(noisy, clean_f, strict=True)
        ]
        scores[(sigma, h_factor)] = float(np.mean(psnrs))
    (sigma, h_factor), best = max(scores.items(), key=lambda kv: kv[1])
    return NLMTuning(sigma=sigma, h_factor=h_factor, psnr=best, scores=scores)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB for data range 1 (inf for identical images)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else -10.0 * math.log10(mse)
