"""Probes: tiled feature extraction, patch probe, k-NN and linear probes, the real Lucchi++ task."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emdino.eval import (
    FeatureSpec,
    ProbeRecipe,
    fit_linear,
    fit_patch_probe,
    iou_per_class,
    knn_classify,
    linear_accuracy,
    lucchi_mito,
    patch_features,
    predict,
    vit_embedder,
)

needs_data = pytest.mark.skipif(
    not os.environ.get("EMSSL_DATA"), reason="EMSSL_DATA (real EM data) not set"
)


def _pool_embedder(p: int):
    """Features = mean and max of each p x p patch (the tile as a (B, h, w, 2) grid)."""

    def embed(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.avg_pool2d(x, p), F.max_pool2d(x, p)], 1).permute(0, 2, 3, 1)

    return embed


def test_patch_features_stitch_tiles_in_place() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 40, 56), dtype=np.uint8)
    f = patch_features(
        _pool_embedder(8),
        images,
        patch_size=8,
        tile=16,
        mean=0.5,
        std=0.25,
        precision="fp32",
        out_dtype=torch.float32,
    )
    assert f.shape == (2, 6, 8, 2)  # 40 -> 48 and 56 -> 64 (reflect padding), / 8
    x = torch.from_numpy(images.astype(np.float32) / 255)[:, None]
    x = F.pad(x, (0, 8, 0, 8), mode="reflect")
    expected = F.avg_pool2d((x - 0.5) / 0.25, 8)[:, 0]
    torch.testing.assert_close(f[..., 0], expected)
    with pytest.raises(ValueError):
        patch_features(_pool_embedder(8), images, patch_size=8, tile=12)


def test_vit_embedder_concatenates_last_blocks() -> None:
    from emdino.ssl.backbone import build_backbone
    from emdino.ssl.config import ModelConfig

    torch.manual_seed(0)
    m = build_backbone(ModelConfig(patch_size=8, embed_dim=32, depth=3, num_heads=2), 32)
    embed, p = vit_embedder(m, n_last_blocks=2)
    x = torch.randn(2, 1, 32, 32)
    out = embed(x)
    assert p == 8 and out.shape == (2, 4, 4, 64)
    # The last slice is the final patch tokens of the backbone's forward.
    torch.testing.assert_close(out[..., 32:].reshape(2, 16, 32), m(x)["patch"])


def test_patch_probe_recovers_a_linearly_separable_segmentation() -> None:
    rng = np.random.default_rng(0)
    n, g, p = 6, 8, 4
    # Regions of 2 x 2 patches: a lone patch is mostly border after bilinear upsampling.
    grid = np.kron(rng.random((n, g // 2, g // 2)) > 0.6, np.ones((1, 2, 2), bool))
    feats = torch.from_numpy(np.stack([grid, ~grid], -1).astype(np.float32))
    feats = feats + 0.1 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(0))
    labels = np.repeat(np.repeat(grid, p, 1), p, 2).astype(np.int64)
    probe = fit_patch_probe(feats[:4], labels[:4], 2, p, ProbeRecipe(epochs=30))
    pred = predict(probe, feats[4:], p, (g * p, g * p))
    iou = iou_per_class(pred, labels[4:], 2)
    # Bilinear upsampling blurs patch borders; the interiors must be right.
    assert min(iou) > 0.7, iou
    # A probe on noise features does not do this well.
    noise = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))
    bad = predict(
        fit_patch_probe(noise[:4], labels[:4], 2, p, ProbeRecipe(epochs=30)),
        noise[4:],
        p,
        (g * p, g * p),
    )
    assert min(iou_per_class(bad, labels[4:], 2)) < min(iou) - 0.2


def test_iou_per_class() -> None:
    pred = np.array([[0, 1], [1, 2]])
    target = np.array([[0, 1], [0, 0]])
    iou = iou_per_class(pred, target, 4)
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == 0.5 and iou[2] == 0.0
    assert np.isnan(iou[3])


def test_knn_and_linear_probes_on_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    y_train = torch.arange(3).repeat(30)
    y_test = torch.arange(3).repeat(10)
    x_train = centers[y_train] + torch.randn(90, 3, generator=g)
    x_test = centers[y_test] + torch.randn(30, 3, generator=g)
    acc = (knn_classify(x_train, y_train, x_test, 3, k=5) == y_test).float().mean()
    assert acc > 0.9
    assert linear_accuracy(fit_linear(x_train, y_train, 3), x_test, y_test) > 0.9
    shuffled = y_train[torch.randperm(90, generator=g)]
    assert linear_accuracy(fit_linear(x_train, shuffled, 3), x_test, y_test) < 0.8


@needs_data
def test_lucchi_mito_task_on_real_data() -> None:
    """The real task end to end: intensity statistics per patch find some mitochondria."""
    spec = FeatureSpec(patch_size=8, tile=128, precision="fp32")
    res = lucchi_mito(_pool_embedder(8), spec, train_stride=11, recipe=ProbeRecipe(epochs=8))
    assert res["n_train_images"] == 12 and res["n_val_images"] == 33
    assert set(res["iou"]) == {"background", "mitochondrion"}
    assert res["iou"]["background"] > 0.8
    assert 0.0 <= res["mito_iou"] < 0.65  # two intensity numbers per patch are not enough
