"""Pictures: PCA as RGB, 2D projections (UMAP or a labelled PCA fallback), scatter plots."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emdino import viz


def test_pca_rgb_recovers_a_planted_structure():
    # Two regions with different feature directions: PC1 must separate them.
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 0.1, (16, 10, 12)).astype(np.float32)
    feats[0, :, :6] += 3.0
    rgb = viz.pca_rgb(feats)
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :6, 0].mean(), rgb[:, 6:, 0].mean()
    assert abs(left - right) > 150
    mask = np.zeros((10, 12), bool)
    mask[:5] = True
    assert (viz.pca_rgb(feats, foreground=mask)[5:] == 0).all()


def test_pca_is_deterministic_in_sign():
    x = np.random.default_rng(1).normal(size=(40, 6))
    a, _ = viz.pca(x, 2)
    b, _ = viz.pca(x * 1.0, 2)
    assert np.array_equal(a, b)


def test_projection_falls_back_to_a_labelled_pca(monkeypatch):
    monkeypatch.setattr(viz, "umap_available", lambda: False)
    xy, label = viz.project_2d(np.random.default_rng(0).normal(size=(20, 5)))
    assert xy.shape == (20, 2)
    assert label.startswith("PCA") and "not UMAP: umap-learn is not installed" in label
    with pytest.raises(ValueError, match="umap-learn"):
        viz.project_2d(np.zeros((5, 3)), "umap")
    _, label = viz.project_2d(np.random.default_rng(0).normal(size=(20, 5)), "pca")
    assert "not UMAP" not in label


def test_scatter_png_draws_each_category_in_its_colour(tmp_path):
    xy = np.array([[0, 0], [1, 1], [0.5, 0.2], [0.9, 0.1]], float)
    labels = ["a", "b", "a", "c"]
    out = viz.scatter_png(xy, labels, tmp_path / "s.png", title="PCA test")
    pixels = {tuple(p) for p in np.asarray(Image.open(out)).reshape(-1, 3)}
    for colour in viz.PALETTE[:3]:
        assert colour in pixels
    assert viz.PALETTE[3] not in pixels
    with pytest.raises(ValueError):
        viz.scatter_png(xy, labels[:2], tmp_path / "t.png", title="x")
