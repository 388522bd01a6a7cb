"""omniem.degrade on real Lucchi++ FIB-SEM slices: noise model, resampling grid, NLM baseline."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import block_reduce
from skimage.metrics import peak_signal_noise_ratio

from omniem import degrade
from omniem.degrade import (
    NOISE_LEVELS,
    bicubic_upsample,
    downsample2x,
    nlm_denoise,
    noise_sigma,
    poisson_gaussian,
    tune_nlm,
)


def _psnr(ref: np.ndarray, test: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(ref, test, data_range=1.0))


@pytest.fixture(scope="module")
def lucchi_val(emssl_data) -> np.ndarray:
    """Lucchi++ val split (last 33 slices of the training volume) as float32 in [0, 1]."""
    from em5m import datasets

    ds = datasets.load("lucchi_pp", split="val")
    assert ds.image.shape == (33, 768, 1024) and ds.image.dtype == np.uint8
    return ds.image.astype(np.float32) / 255.0


@pytest.mark.parametrize("level", ["low", "high"])
def test_noise_variance_matches_model_by_intensity_bin(lucchi_val, level):
    """Unclipped: E[y - x] = 0 and E[(y - x)^2] = x / photons + read_noise^2 in every bin."""
    p = NOISE_LEVELS[level]
    clean = lucchi_val[3]
    noisy = poisson_gaussian(clean, **p, rng=np.random.default_rng(11), clip=False)
    resid = noisy.astype(np.float64) - clean
    bins = np.floor(clean / 0.05).astype(int)
    checked = 0
    for b in np.unique(bins):
        m = bins == b
        if m.sum() < 20_000:
            continue
        model = np.mean(clean[m] / p["photons"] + p["read_noise"] ** 2)
        assert np.mean(resid[m] ** 2) == pytest.approx(model, rel=0.04), f"bin {b * 0.05:.2f}"
        assert abs(np.mean(resid[m])) < 4 * np.sqrt(model / m.sum())  # unbiased
        checked += 1
    assert checked >= 5  # the slice covers enough of the intensity range to test


def test_clipped_noise_keeps_model_in_mid_range(lucchi_val):
    """Clipping to [0, 1] leaves the variance of mid-grey pixels at the model value (low level)."""
    p = NOISE_LEVELS["low"]
    clean = lucchi_val[10]
    noisy = poisson_gaussian(clean, **p, rng=np.random.default_rng(3))
    assert noisy.dtype == np.float32 and noisy.min() >= 0 and noisy.max() <= 1
    m = (clean > 0.35) & (clean < 0.65)
    assert m.sum() > 100_000
    resid = noisy[m].astype(np.float64) - clean[m]
    model = np.mean(clean[m] / p["photons"] + p["read_noise"] ** 2)
    assert np.mean(resid**2) == pytest.approx(model, rel=0.03)


def test_noise_is_deterministic_given_the_generator(lucchi_val):
    clean = lucchi_val[0, :256, :256]
    a = poisson_gaussian(clean, **NOISE_LEVELS["high"], rng=np.random.default_rng(5))
    b = poisson_gaussian(clean, **NOISE_LEVELS["high"], rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, poisson_gaussian(clean, **NOISE_LEVELS["high"], rng=5))
    assert not np.array_equal(a, poisson_gaussian(clean, **NOISE_LEVELS["high"], rng=6))
    gen = np.random.default_rng(5)
    first = poisson_gaussian(clean, **NOISE_LEVELS["high"], rng=gen)
    second = poisson_gaussian(clean, **NOISE_LEVELS["high"], rng=gen)
    np.testing.assert_array_equal(first, a)
    assert not np.array_equal(first, second)  # the generator advances


def test_psnr_orders_levels_and_matches_the_model(lucchi_val):
    rng = np.random.default_rng(0)
    psnr = {"low": [], "high": []}
    clipped_psnr = {"low": [], "high": []}
    for i in (0, 16, 32):
        clean = lucchi_val[i]
        for level, p in NOISE_LEVELS.items():
            noisy = poisson_gaussian(clean, **p, rng=rng, clip=False)
            got = _psnr(clean, noisy)
            expected = -10 * np.log10(np.mean(clean / p["photons"] + p["read_noise"] ** 2))
            assert got == pytest.approx(expected, abs=0.1)
            psnr[level].append(got)
            clipped = _psnr(clean, poisson_gaussian(clean, **p, rng=rng))
            assert np.isfinite(clipped) and clipped >= got - 0.05
            clipped_psnr[level].append(clipped)
    assert max(psnr["high"]) < min(psnr["low"]) - 3  # "high" is clearly noisier
    # the clipped values NOISE_LEVELS documents
    assert np.mean(clipped_psnr["low"]) == pytest.approx(17.3, abs=0.3)
    assert np.mean(clipped_psnr["high"]) == pytest.approx(13.1, abs=0.3)


def test_noise_sigma_matches_model():
    assert noise_sigma(0.5, photons=10, read_noise=0.04) == pytest.approx(np.sqrt(0.0516))
    assert noise_sigma(0.0, photons=30, read_noise=0.02) == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.full((4, 4), 200, np.uint8), {}, "scale it to"),
        (np.full((4, 4), -0.1, np.float32), {}, r"\[0, 1\]"),
        (np.full((4, 4), np.nan, np.float32), {}, "NaN"),
        (np.full((4, 4), 0.5, np.float32), {"photons": 0}, "photons"),
        (np.full((4, 4), 0.5, np.float32), {"read_noise": -1}, "read_noise"),
    ],
)
def test_noise_rejects_bad_input(image, kwargs, match):
    args = {"photons": 30.0, "read_noise": 0.02, "rng": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        poisson_gaussian(image, **args)


def test_downsample2x_is_the_2x2_area_mean(lucchi_val):
    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    np.testing.assert_array_equal(downsample2x(a), [[3.0, 5.0], [13.0, 15.0]])
    odd = lucchi_val[1, :301, :201]
    small = downsample2x(odd)
    assert small.shape == (150, 100) and small.dtype == np.float32
    expected = block_reduce(odd[:300, :200], (2, 2), np.mean)
    np.testing.assert_allclose(small, expected, atol=1e-6)
    batch = downsample2x(lucchi_val[:2, :64, :64])
    np.testing.assert_allclose(batch[1], downsample2x(lucchi_val[1, :64, :64]))
    with pytest.raises(ValueError, match="H, W >= 2"):
        downsample2x(np.zeros((1, 8)))


def test_constant_and_linear_ramp_round_trip():
    const = np.full((64, 64), 0.3, np.float32)
    np.testing.assert_allclose(bicubic_upsample(downsample2x(const)), const, atol=1e-6)
    yy, xx = np.mgrid[0:64, 0:96].astype(np.float32)
    ramp = 0.1 + 0.004 * xx + 0.003 * yy
    up = bicubic_upsample(downsample2x(ramp), clip=False)
    assert up.shape == ramp.shape and up.dtype == np.float32
    err = np.abs(up - ramp)
    assert err[8:-8, 8:-8].max() < 2e-4  # exact away from the border: grids are aligned
    assert err.max() < 0.004  # border pixels within one pixel step of the ramp
    up4 = bicubic_upsample(downsample2x(downsample2x(ramp)), 4, clip=False)
    assert np.abs(up4 - ramp)[16:-16, 16:-16].max() < 5e-4  # 2x twice == the 4x grid


def test_downsample_of_upsampled_smooth_real_image_is_identity(lucchi_val):
    smooth = ndimage.gaussian_filter(lucchi_val[7, :256, :256], 3)
    back = downsample2x(bicubic_upsample(smooth))
    assert back.shape == smooth.shape
    assert np.abs(back - smooth).max() < 2e-3
    assert _psnr(smooth, back) > 60


def test_bicubic_beats_nearest_and_is_aligned_on_real_slices(lucchi_val):
    for i in (2, 20):
        hr = lucchi_val[i]
        lr = downsample2x(hr)
        up = bicubic_upsample(lr)
        assert up.shape == hr.shape and up.min() >= 0 and up.max() <= 1
        bicubic = _psnr(hr, up)
        nearest = _psnr(hr, np.kron(lr, np.ones((2, 2), np.float32)))
        assert np.isfinite(bicubic) and bicubic > nearest + 0.2
        # a half-pixel error in the grid would make one of the 1-pixel shifts score better
        inner = (slice(2, -2), slice(2, -2))
        for axis in (0, 1):
            for shift in (-1, 1):
                shifted = np.roll(up, shift, axis=axis)
                assert _psnr(hr[inner], up[inner]) > _psnr(hr[inner], shifted[inner]) + 0.5


def test_upsample_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2D"):
        bicubic_upsample(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="factor"):
        bicubic_upsample(np.zeros((4, 4)), 1.5)


@pytest.fixture(scope="module")
def nlm_crops(lucchi_val):
    """128 x 128 crops: tuning crops from slices 0-1, disjoint evaluation crops from 30-31."""
    tune = [lucchi_val[i, 200:328, 300:428] for i in (0, 1)]
    evaluate = [lucchi_val[i, 500:628, 600:728] for i in (30, 31)]
    return tune, evaluate


@pytest.mark.parametrize("level", ["low", "high"])
def test_tuned_nlm_improves_held_out_crops(nlm_crops, level):
    tune, evaluate = nlm_crops
    p = NOISE_LEVELS[level]
    rng = np.random.default_rng(21)
    noisy_tune = [poisson_gaussian(c, **p, rng=rng) for c in tune]
    s0 = noise_sigma(float(np.mean(tune)), **p)
    result = tune_nlm(noisy_tune, tune, [s0 * f for f in (0.25, 0.75, 1.0)], h_factors=(0.8, 1.2))
    assert len(result.scores) == 6
    assert result.psnr == max(result.scores.values())
    assert result.scores[(result.sigma, result.h_factor)] == result.psnr
    assert result.h == pytest.approx(result.sigma * result.h_factor)
    assert result.sigma > s0 * 0.5  # far too weak a filter must lose
    for clean in evaluate:
        noisy = poisson_gaussian(clean, **p, rng=rng)
        den = nlm_denoise(noisy, sigma=result.sigma, h_factor=result.h_factor)
        assert den.dtype == np.float32 and den.shape == clean.shape
        assert den.min() >= 0 and den.max() <= 1
        assert _psnr(clean, den) > _psnr(clean, noisy) + 4


def test_nlm_is_the_skimage_filter_with_fixed_settings(nlm_crops):
    from skimage.restoration import denoise_nl_means

    clean = nlm_crops[0][0]
    noisy = poisson_gaussian(clean, **NOISE_LEVELS["low"], rng=4)
    ours = nlm_denoise(noisy, sigma=0.1, h_factor=1.0)
    ref = denoise_nl_means(noisy, h=0.1, sigma=0.1, fast_mode=True, patch_size=5, patch_distance=6)
    np.testing.assert_allclose(ours, np.clip(ref, 0, 1), atol=1e-6)


def test_nlm_rejects_bad_arguments():
    img = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match="sigma"):
        nlm_denoise(img, sigma=0)
    with pytest.raises(ValueError, match="2D"):
        nlm_denoise(img[None], sigma=0.1)
    with pytest.raises(ValueError, match="1 noisy but 2 clean"):
        tune_nlm([img], [img, img], [0.1])
    with pytest.raises(ValueError, match="shape"):
        tune_nlm([img], [img[:8]], [0.1])
    with pytest.raises(ValueError, match="at least one sigma"):
        tune_nlm([img], [img], [])


def test_docstring_examples():
    result = doctest.testmod(degrade, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_noise_std_estimate_finds_added_noise_on_real_slices(lucchi_val):
    """Immerkaer's estimate on a real slice, then with known Gaussian noise added: the added
    variance is recovered, and 2x binning (as training's data.bin) lowers the estimate."""
    from omniem.degrade import estimate_noise_std

    clean = lucchi_val[5, :512, :512]
    base = estimate_noise_std(clean)
    assert 0.005 < base < 0.1
    noisy = clean + 0.08 * np.random.default_rng(0).standard_normal(clean.shape)
    added = np.sqrt(estimate_noise_std(noisy) ** 2 - base**2)
    assert abs(added - 0.08) < 0.008
    assert estimate_noise_std(downsample2x(clean)) < 0.75 * base
    with pytest.raises(ValueError, match="2D image"):
        estimate_noise_std(clean[None])
