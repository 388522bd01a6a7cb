"""Orthoplane mode of the engine: a 2D model on xy, xz and yz planes, averaged, on real EM
(Lucchi++ val, isotropic 5 nm FIB-SEM) with a tiny random OmniEM in fp32.

Reference: with one tile covering the volume, the engine's result is the mean of the raw outputs
of MONAI's sliding window over every xy, xz and yz plane of the whole in-memory volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from monai.inferers import sliding_window_inference

from omniem.engine import plan, predict
from omniem.nets import NetConfig, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KW = {"tile": 64, "overlap": 0.25, "dtype": "fp32", "batch_size": 4}


@pytest.fixture(scope="module")
def em(emssl_data: Path) -> np.ndarray:
    import em5m.datasets

    img = np.ascontiguousarray(em5m.datasets.load("lucchi_pp", split="val").image[:24, :70, :90])
    assert img.std() > 10
    return img


def _planes_monai(net, vol: np.ndarray) -> torch.Tensor:  # noqa: ANN001
    """Raw outputs [C, d, h, w]: MONAI per plane along each axis, averaged over the 3 axes."""
    x = torch.from_numpy(vol.astype(np.float32) / np.float32(255.0))

    def per_plane(planes: torch.Tensor) -> torch.Tensor:  # [N, a, b] -> [N, C, a, b]
        with torch.inference_mode():
            return torch.cat(
                [
                    sliding_window_inference(
                        p[None, None],
                        (64, 64),
                        4,
                        net,
                        overlap=0.25,
                        mode="gaussian",
                        padding_mode="reflect",
                    )  # fmt: skip
                    for p in planes
                ]
            )

    xy = per_plane(x).permute(1, 0, 2, 3)
    xz = per_plane(x.permute(1, 0, 2)).permute(1, 2, 0, 3)
    yz = per_plane(x.permute(2, 0, 1)).permute(1, 2, 3, 0)
    return (xy + xz + yz) / 3.0


def test_one_tile_equals_the_mean_of_three_plane_sweeps(net, em) -> None:
    # Smaller than the 64^3 tile along every axis (reflect-padded), and larger than half of it:
    # MONAI's (torch's) reflect padding needs that.
    vol = em[:24, :40, :48]
    ref = torch.softmax(_planes_monai(net, vol), 0).numpy()
    got = predict(net, vol, output="probabilities", orthoplanes=True, **KW)
    assert got.shape == ref.shape == (2, 24, 40, 48)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # Not the same as xy slices alone (the other two planes contribute).
    xy = predict(net, vol, output="probabilities", **KW)
    assert np.abs(xy - got).max() > 1e-3


def test_blocks_and_target_equal_the_in_memory_run(net, em, tmp_path) -> None:
    kw = {**KW, "tile": 32}  # 32^3 tiles: several along every axis of the 24 x 70 x 90 crop
    mem = predict(net, em, output="probabilities", orthoplanes=True, block=(24, 256), **kw)
    out = predict(
        net, em, tmp_path / "o.ome.zarr", output="probabilities", orthoplanes=True,
        block=(12, 48), **kw,
    )  # fmt: skip
    got = np.asarray(zarr.open_group(out, mode="r")["s0"][:])
    np.testing.assert_allclose(got, mem, atol=1e-6, rtol=0)
    labels = predict(net, em, orthoplanes=True, **kw)  # the default 3D block
    np.testing.assert_array_equal(labels, mem.argmax(0))
    p = plan(net, em, orthoplanes=True, **kw)
    assert p["orthoplanes"] is True and p["tile_z"] == 32 and p["block_shape"][0] == 24


def test_identity_model_is_reproduced_across_tiles(em) -> None:
    """Planes, 3D blending and borders: a model that returns its input gives the input back."""
    out = predict(lambda t: t, em, orthoplanes=True, block=(7, 50), **{**KW, "tile": 32})
    np.testing.assert_allclose(out[0], em / np.float32(255.0), atol=1e-6, rtol=0)


def test_orthoplanes_refuse_2d_images_and_3d_models(net, em) -> None:
    with pytest.raises(ValueError, match="needs a volume"):
        predict(net, em[0], orthoplanes=True, **KW)
    cfg = NetConfig(
        backbone="vit_tiny_patch8.random", out_channels=2, feature_size=8, spatial_dims=3
    )
    net3d = build(cfg, img_size=64)
    with pytest.raises(ValueError, match="already a 3D model"):
        predict(net3d, em, orthoplanes=True, **KW)
