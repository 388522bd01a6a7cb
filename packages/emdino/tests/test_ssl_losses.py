"""DINOv2 losses, centering, head, masks, schedules and parameter groups against hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emdino.ssl.heads import DINOHead
from emdino.ssl.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, MeanCenter, sinkhorn_knopp
from emdino.ssl.masking import BlockMaskGenerator, sample_mask
from emdino.ssl.optim import param_groups, vit_layer_id
from emdino.ssl.schedules import CosineScheduler


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_dino_loss_matches_hand_computation() -> None:
    t0 = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    t1 = np.array([[0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    s = [
        np.array([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]]),  # global view 0
        np.array([[0.0, 2.0, 0.0], [0.3, -0.2, 0.4]]),  # global view 1
        np.array([[0.1, 0.1, 0.9], [-1.0, 0.0, 1.0]]),  # local view
    ]
    temp = 0.5
    ce = lambda t, x: -(t * _log_softmax(x / temp)).sum(-1).mean()  # noqa: E731
    # Pairs (student, teacher) with different views: (0,1), (1,0), (2,0), (2,1).
    expected = (ce(t1, s[0]) + ce(t0, s[1]) + ce(t0, s[2]) + ce(t1, s[2])) / 4
    got = DINOLoss(temp)(
        [torch.tensor(x, dtype=torch.float32) for x in s],
        [torch.tensor(t0, dtype=torch.float32), torch.tensor(t1, dtype=torch.float32)],
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dino_loss_rejects_no_pairs() -> None:
    with pytest.raises(ValueError):
        DINOLoss(0.1)([torch.zeros(1, 2)], [torch.ones(1, 2) / 2])
    with pytest.raises(ValueError):
        DINOLoss(0.0)


def test_ibot_loss_matches_hand_computation() -> None:
    masks = torch.tensor([[True, True, False], [False, False, False], [False, True, False]])
    s = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]])
    t = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    temp = 0.2
    tok = -(t * _log_softmax(s / temp)).sum(-1)
    # Image 0: mean of tokens 0, 1; image 1: nothing masked (counts as 0); image 2: token 2.
    expected = ((tok[0] + tok[1]) / 2 + 0.0 + tok[2]) / 3
    got = IBOTPatchLoss(temp)(torch.tensor(s).float(), torch.tensor(t).float(), masks)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        IBOTPatchLoss(temp)(torch.zeros(2, 2), torch.zeros(2, 2), masks)


def test_koleo_matches_hand_computation() -> None:
    x = np.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0], [0.0, -2.0]])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.linalg.norm(xn[:, None] - xn[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    expected = -np.log(d.min(1) + 1e-8).mean()
    got = KoLeoLoss()(torch.tensor(x).float())
    assert got.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        KoLeoLoss()(torch.zeros(1, 3))


def _sinkhorn_reference(logits: np.ndarray, temp: float, iters: int) -> np.ndarray:
    q = np.exp(logits / temp).T  # DINOv2's algorithm, plain numpy, float64
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(1, keepdims=True)
        q /= k
        q /= q.sum(0, keepdims=True)
        q /= b
    return (q * b).T


def test_sinkhorn_matches_reference_and_marginals() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 5)).astype(np.float32)
    got = sinkhorn_knopp(torch.from_numpy(logits), 0.3, n_iterations=3).numpy()
    ref = _sinkhorn_reference(logits.astype(np.float64), 0.3, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    # Rows (samples) are distributions after the last step.
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)
    # With enough iterations every prototype gets B / K of the mass.
    many = sinkhorn_knopp(torch.from_numpy(logits), 0.3, n_iterations=200).numpy()
    np.testing.assert_allclose(many.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(many.sum(0), 12 / 5, rtol=1e-4)


def test_sinkhorn_is_stable_at_sharp_temperature() -> None:
    logits = torch.tensor([[30.0, -30.0, 0.0], [0.0, 30.0, -30.0]])
    q = sinkhorn_knopp(logits, 0.01)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(2))


def test_mean_center() -> None:
    c = MeanCenter(2, momentum=0.75)
    c.update(torch.tensor([[4.0, 0.0], [0.0, 8.0]]))
    torch.testing.assert_close(c.center, torch.tensor([[0.5, 1.0]]))
    p = c.softmax(torch.tensor([[0.5, 1.0]]), 1.0)
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.5]]))


def test_dino_head_prototypes_start_normalised() -> None:
    torch.manual_seed(0)
    head = DINOHead(16, 32, nlayers=3, hidden_dim=24, bottleneck_dim=8)
    out = head(torch.randn(10, 16))
    assert out.shape == (10, 32)
    # Unit bottleneck . unit prototypes (g = 1) = cosine similarities.
    assert out.abs().max().item() <= 1.0 + 1e-5
    g = head.last_layer.parametrizations.weight.original0
    torch.testing.assert_close(g, torch.ones_like(g))


def test_block_masks_are_deterministic_and_bounded() -> None:
    gen = BlockMaskGenerator((12, 12), min_patches=4)
    a = gen(50, np.random.default_rng(3))
    b = gen(50, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert 4 <= a.sum() <= 50
    assert gen(0, np.random.default_rng(0)).sum() == 0
    never = sample_mask(gen, np.random.default_rng(0), 0.0, (0.1, 0.5))
    assert never.shape == (144,) and never.sum() == 0
    counts = [sample_mask(gen, np.random.default_rng(i), 1.0, (0.1, 0.5)).sum() for i in range(20)]
    assert min(counts) >= 4 and max(counts) <= 72


def test_cosine_scheduler() -> None:
    s = CosineScheduler(1.0, 0.1, total_iters=10, warmup_iters=2, start_warmup_value=0.0)
    assert [s[0], s[1]] == [0.0, 1.0]
    assert s[2] == pytest.approx(1.0)
    assert s[6] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 4 / 8)))
    assert s[10] == s[99] == 0.1
    with pytest.raises(ValueError):
        CosineScheduler(1.0, 0.0, total_iters=2, warmup_iters=3)


def test_param_groups_layer_decay_and_no_weight_decay() -> None:
    names = {
        "backbone.vit.pos_embed": (0, 1.0),
        "backbone.vit.patch_embed.proj.weight": (0, 1.0),
        "backbone.vit.blocks.0.attn.qkv.weight": (1, 1.0),
        "backbone.vit.blocks.1.norm1.weight": (2, 0.0),
        "backbone.vit.blocks.1.ls1.gamma": (2, 0.0),
        "backbone.vit.norm.bias": (3, 0.0),
        "dino_head.last_layer.parametrizations.weight.original1": (3, 1.0),
    }
    params = [(n, torch.nn.Parameter(torch.zeros(1))) for n in names]
    groups = param_groups(params, num_blocks=2, layerwise_decay=0.5, patch_embed_lr_mult=0.2)
    by_param = {id(p): g for g in groups for p in g["params"]}
    for (name, p), (layer, wd) in zip(params, names.values(), strict=True):
        g = by_param[id(p)]
        assert vit_layer_id(name, 2) == layer
        expected_lr = 0.5 ** (3 - layer) * (0.2 if "patch_embed" in name else 1.0)
        assert g["lr_multiplier"] == pytest.approx(expected_lr), name
        assert g["wd_multiplier"] == wd, name
        assert g["is_last_layer"] == ("last_layer" in name)
