"""3D models in the engine, on real EM (a Lucchi++ val crop), fp32.

The reference is MONAI's 3D ``sliding_window_inference`` over the whole in-memory volume (same
tile, overlap and Gaussian weights); the out-of-core OME-Zarr run, cut into blocks smaller than a
tile, must equal the in-memory run.
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

TILE, TILE_Z, OVERLAP = 64, 8, 0.25
KW = {"tile": TILE, "tile_z": TILE_Z, "overlap": OVERLAP, "dtype": "fp32", "batch_size": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def em(emssl_data: Path) -> np.ndarray:
    """Lucchi++ val, a 12 x 96 x 120 uint8 crop."""
    import em5m.datasets

    img = em5m.datasets.load("lucchi_pp", split="val").image[:12, 100:196, 200:320]
    img = np.ascontiguousarray(img)
    assert img.dtype == np.uint8 and img.std() > 10
    return img


@pytest.fixture(scope="module")
def net3d():
    """A tiny random 3D OmniEM whose z-adapters and z-mixers are *not* at zero (z-context on)."""
    torch.manual_seed(0)
    cfg = NetConfig(
        backbone="vit_tiny_patch8.random", out_channels=2, feature_size=8, spatial_dims=3
    )
    net = build(cfg, img_size=64).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ("z_adapters" in name or "z_mixers" in name) and not p.any():
                p.normal_(0.0, 0.2)
    return net


def _monai3d(net, vol: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(vol.astype(np.float32) / np.float32(255.0))[None, None]
    with torch.inference_mode():
        y = sliding_window_inference(
            x,
            roi_size=(TILE_Z, TILE, TILE),
            sw_batch_size=2,
            predictor=net,
            overlap=OVERLAP,
            mode="gaussian",
            sigma_scale=0.125,
            padding_mode="reflect",
        )
    return torch.softmax(y, dim=1)[0].numpy()  # [C, Z, H, W]


def test_z_context_is_active(net3d, em: np.ndarray) -> None:
    """Changing one slice changes the prediction of its neighbour: the model really is 3D."""
    x = torch.from_numpy(em[:8, :64, :64].astype(np.float32) / 255.0)[None, None]
    x2 = x.clone()
    x2[:, :, 3] = 1.0 - x2[:, :, 3]
    with torch.inference_mode():
        a, b = net3d(x), net3d(x2)
    assert (a[:, :, 4] - b[:, :, 4]).abs().max() > 1e-3


@pytest.mark.parametrize("crop", [np.s_[:, :, :], np.s_[:5, :, :70]], ids=["12x96x120", "thin"])
def test_3d_engine_matches_monai_whole_volume(net3d, em: np.ndarray, crop) -> None:
    vol = np.ascontiguousarray(em[crop])
    ref = _monai3d(net3d, vol)
    out = predict(net3d, vol, output="probabilities", **KW)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-4


def test_3d_blocks_to_zarr_equal_in_memory(net3d, em: np.ndarray, tmp_path: Path) -> None:
    mem = predict(net3d, em, output="probabilities", **KW)
    # Blocks of 3 slices x 40 px: every block needs z tiles and y/x tiles beyond its borders.
    target = predict(
        net3d, em, tmp_path / "p.ome.zarr", output="probabilities", block=(3, 40), **KW
    )
    got = zarr.open_group(str(target), mode="r")["s0"][:]
    np.testing.assert_allclose(got, mem, rtol=0, atol=1e-6)
    assert (Path(target) / ".omniem" / "complete").exists()
    labels = predict(net3d, em, block=(5, 64), **KW)  # default output: arg-max labels
    np.testing.assert_array_equal(labels, mem.argmax(0))


def test_3d_plan_counts_the_forward_passes(em: np.ndarray) -> None:
    calls = []

    class Counting:
        spatial_dims = 3

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            return torch.cat([x, 1 - x], dim=1)

    model = Counting()
    p = plan(model, em, block=(4, 64), **KW)
    calls.clear()
    out = predict(model, em, output="probabilities", block=(4, 64), **KW)
    assert p["tile_z"] == TILE_Z
    # The first call is the engine's probe of the output channels; then tile batches.
    assert calls[0] == (1, 1, 4, 32, 32)
    assert all(c[1:] == (1, TILE_Z, TILE, TILE) for c in calls[1:])
    assert len(calls) - 1 == p["n_batches"]
    np.testing.assert_allclose(out[0], em.astype(np.float32) / 255.0, atol=1e-6)


def test_3d_model_refuses_a_2d_image(net3d, em: np.ndarray) -> None:
    with pytest.raises(ValueError, match="3D model"):
        predict(net3d, em[0], **KW)
