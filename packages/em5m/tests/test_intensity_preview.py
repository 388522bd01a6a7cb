"""Robust intensity standardization and PNG previews."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from em5m import Volume
from em5m.intensity import estimate_window, to_uint8
from em5m.preview import save_png


def test_window_ignores_outliers_and_maps_uint16_to_uint8():
    rng = np.random.default_rng(0)
    data = rng.normal(20000, 1000, size=(4, 128, 128)).astype(np.uint16)
    data[0, :4, :4] = 65535  # a few saturated pixels must not set the window
    vol = Volume.from_array(data, voxel_size=(30, 5, 5), chunks=(1, 64, 64))
    window = estimate_window(vol)
    assert 15000 < window.low < window.high < 25000
    out = to_uint8(vol, window)
    assert out.dtype == np.uint8 and out.voxel_size == vol.voxel_size
    img = out.compute()
    assert 100 < img.mean() < 155  # centred
    assert out.metadata["intensity_window"]["source_dtype"] == "uint16"


def test_window_is_deterministic_and_bounded(emssl_data):
    from em5m.io import open_volume

    vol = open_volume(str(emssl_data / "lucchi_pp/train/images"))
    a = estimate_window(vol, max_samples=200_000)
    b = estimate_window(vol, max_samples=200_000)
    assert a == b
    assert 0 <= a.low < a.high <= 255


def test_window_rejects_bad_percentiles():
    vol = Volume.from_array(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="percentiles"):
        estimate_window(vol, percentiles=(90, 10))


def test_flat_image_keeps_a_defined_map():
    vol = Volume.from_array(np.full((16, 16), 7, np.uint8))
    assert to_uint8(vol).compute().max() == 0


def test_preview_png_with_overlay(tmp_path):
    img = np.tile(np.linspace(0, 1, 64), (64, 1))
    lab = np.zeros((64, 64), np.uint8)
    lab[10:20, 10:20] = 1
    path = save_png(img, tmp_path / "p.png", overlay=lab)
    rgb = np.asarray(Image.open(path))
    assert rgb.shape == (64, 64, 3)
    inside, outside = rgb[15, 15], rgb[40, 15]
    assert inside[0] != inside[2]  # tinted
    assert outside[0] == outside[1] == outside[2]  # grey
    with pytest.raises(ValueError, match="2D"):
        save_png(np.zeros((2, 4, 4)), tmp_path / "bad.png")
