"""Restoration training data and losses: blind-spot samples of real noisy TEM mixed into
supervised denoising batches, and the masked per-sample losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniem.train import load_config
from omniem.train.config import AugmentConfig, DataConfig, LossConfig
from omniem.train.data import CropSampler, MixedSampler, load_split, training_sampler
from omniem.train.losses import build_loss


def mixed(fraction: float) -> MixedSampler:
    data = DataConfig(
        target="noise",
        crop=64,
        train_slices="0:2",
        self_supervised=[("emdiffuse", "denoise_crops")],
        self_supervised_fraction=fraction,
    )
    arrays = load_split(data, "train", data.train_slices, with_labels=False)
    sampler = training_sampler(arrays, data, AugmentConfig(), task="restoration", seed=3)
    assert isinstance(sampler, MixedSampler)
    return sampler


def test_mixed_sampler_draws_blind_spot_samples_of_real_noisy_tem(emssl_data) -> None:
    sampler = mixed(0.3)
    (blind,) = sampler.self_supervised
    # the real EMDiffuse crops: 49 noisy 256 px TEM crops (uint16 on disk), as uint8 here
    assert blind.arrays.images.shape == (49, 256, 256) and blind.data.target == "blind_spot"
    samples = [s for _, s in zip(range(200), iter(sampler), strict=False)]
    n_blind = 0
    for s in samples:
        assert set(s) == {"image", "target", "mask"}
        assert s["image"].shape == s["target"].shape == s["mask"].shape == (1, 64, 64)
        m = s["mask"]
        if m.min() == 1:  # supervised: synthetic noise on a clean Lucchi++ crop, every pixel
            assert (s["image"] - s["target"]).abs().mean() > 0.03
        else:  # blind spot: ~2 % of pixels replaced by a neighbour, only those are targets
            n_blind += 1
            changed = s["image"] != s["target"]
            assert 0.005 < m.mean() < 0.03 and not changed[m == 0].any()
    # 200 draws at p = 0.3: 60 expected, [40, 80] holds with probability > 0.998
    assert 40 <= n_blind <= 80
    batch = next(iter(torch.utils.data.DataLoader(sampler, batch_size=8)))
    assert batch["mask"].shape == (8, 1, 64, 64)


def test_without_self_supervised_data_the_plain_sampler_is_used(emssl_data) -> None:
    data = DataConfig(target="noise", crop=64, train_slices="0:1")
    arrays = load_split(data, "train", "0:1", with_labels=False)
    sampler = training_sampler(arrays, data, AugmentConfig(), task="restoration")
    assert isinstance(sampler, CropSampler)
    assert "mask" not in sampler.sample(np.random.default_rng(0))


def test_self_supervised_needs_the_noise_target() -> None:
    with pytest.raises(ValueError, match="needs data.target noise"):
        load_config("sr2x_2d", ["data.self_supervised=[[emdiffuse, denoise_crops]]"])
    with pytest.raises(ValueError, match="self_supervised_fraction|less than 1"):
        load_config("denoise_2d", ["data.self_supervised_fraction=1.0"])


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_masked_restoration_loss_weighs_each_sample_equally(kind: str) -> None:
    loss = build_loss(LossConfig(kind=kind), "restoration", 1)
    y = torch.zeros(2, 1, 4, 4)
    t = torch.zeros(2, 1, 4, 4)
    t[0] = 0.5  # supervised sample: every pixel off by 0.5
    t[1, 0, 0, 0] = 0.2  # blind-spot sample: one masked pixel off by 0.2, one exact
    mask = torch.ones(2, 1, 4, 4)
    mask[1] = 0
    mask[1, 0, 0, :2] = 1
    err = (lambda d: d * d) if kind == "l2" else (lambda d: d)
    expected = (err(0.5) + err(0.2) / 2) / 2
    got = loss(y, {"target": t, "mask": mask})
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # without a mask every pixel counts
    plain = loss(y, {"target": t})
    assert plain.item() == pytest.approx((16 * err(0.5) + err(0.2)) / 32, rel=1e-6)


def test_ssim_term_counts_the_supervised_samples_of_a_mixed_batch() -> None:
    loss = build_loss(LossConfig(kind="l1_ssim"), "restoration", 1)
    g = torch.Generator().manual_seed(0)
    y, t = torch.rand(2, 1, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)
    # all samples supervised: the mask changes nothing
    plain = loss(y, {"target": t})
    assert loss(y, {"target": t, "mask": torch.ones_like(t)}).item() == pytest.approx(
        plain.item(), rel=1e-5
    )
    # one blind-spot sample: L1 on its masked pixels, SSIM of the supervised one at half weight
    mask = torch.ones_like(t)
    mask[1] = 0
    mask[1, 0, 5, 5] = 1
    sup = build_loss(LossConfig(kind="l1_ssim"), "restoration", 1)(y[:1], {"target": t[:1]})
    l1_sup = (y[0] - t[0]).abs().mean()
    expected = (l1_sup + (y[1, 0, 5, 5] - t[1, 0, 5, 5]).abs()) / 2 + (sup - l1_sup) / 2
    got = loss(y, {"target": t, "mask": mask})
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
