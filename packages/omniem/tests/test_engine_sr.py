"""Super-resolution models in the engine (integer ``output_scale``) on real EM (Lucchi++ val).

Output tiles are ``scale`` times larger; they are blended with Gaussian weights computed at the
output size, and the result is ``scale`` times larger in y and x with a voxel size as much smaller.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from omniem.engine import plan, predict
from omniem.nets import NetConfig, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KW = {"tile": 64, "overlap": 0.25, "dtype": "fp32", "batch_size": 4, "output": "image"}


@pytest.fixture(scope="module")
def em(emssl_data) -> np.ndarray:
    import em5m.datasets

    img = np.ascontiguousarray(em5m.datasets.load("lucchi_pp", split="val").image[:2, :90, :150])
    assert img.std() > 10
    return img


@pytest.fixture(scope="module", params=["input", "pixel_shuffle"])
def sr_net(request):
    """Both up-scaling layouts: the network at the output size, or at the input size with a
    sub-pixel head (its head is randomized so the test sees more than bicubic)."""
    torch.manual_seed(0)
    cfg = NetConfig(
        backbone="vit_tiny_patch8.random",
        task="restoration",
        out_channels=1,
        feature_size=8,
        output_scale=2.0,
        upsample=request.param,
        stem_blocks=1 if request.param == "pixel_shuffle" else 0,
    )
    net = build(cfg, img_size=64).eval()
    if request.param == "pixel_shuffle":
        torch.nn.init.normal_(net.out.conv_block.weight, std=0.01)
    return net


def upsample2(t: torch.Tensor) -> torch.Tensor:
    """A 2x 'super-resolution' model with a known answer: nearest-neighbour up-sampling."""
    return t.repeat_interleave(2, -2).repeat_interleave(2, -1)


def test_one_tile_is_the_network_output(sr_net, em) -> None:
    one = em[:, :64, :64]
    got = predict(sr_net, one, out_dtype="float32", **KW)
    with torch.inference_mode():
        ref = sr_net(torch.from_numpy(one.astype(np.float32) / np.float32(255.0))[:, None])
    assert got.shape == (2, 128, 128)
    np.testing.assert_allclose(got, ref[:, 0].clamp(0, 1).numpy(), atol=1e-6, rtol=0)


def test_tiles_blocks_and_padding_keep_the_geometry(em, tmp_path) -> None:
    """Nearest up-sampling must come back exactly: any misplaced tile, crop or block shows."""
    import em5m

    model = _Scaled(upsample2)
    want = upsample2(torch.from_numpy(em.astype(np.float32) / np.float32(255.0))).numpy()
    got = predict(model, em, out_dtype="float32", block=(1, 48), **KW)
    assert got.shape == (2, 180, 300)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    small = em[:1, :40, :50]  # shorter than a tile: reflect-padded, then cropped at 2x
    got_small = predict(model, small, out_dtype="float32", **KW)
    np.testing.assert_allclose(got_small, want[:1, :80, :100], atol=1e-6, rtol=0)
    # Out of core: shards of 2x blocks, the same values, the voxel size halved in y and x.
    vol = em5m.Volume.from_array(em, voxel_size=(10.0, 10.0, 10.0))
    mem = predict(model, vol, out_dtype="float32", block=(1, 64), **KW)
    out = predict(model, vol, tmp_path / "sr.ome.zarr", out_dtype="float32", block=(1, 64), **KW)
    g = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(np.asarray(g["s0"][:]), mem)
    scale = g.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"] == [10.0, 5.0, 5.0]
    p = plan(model, vol, out_dtype="float32", block=(1, 64), **KW)
    assert tuple(p["output_shape"]) == (2, 180, 300) and p["output_bytes"] == 2 * 180 * 300 * 4


def test_voxel_size_mismatch_is_refused_for_super_resolution(sr_net, em) -> None:
    import em5m

    sr_net.card = {"voxel_size_nm": [5.0, 5.0, 5.0]}  # output pixels: expects 10 nm inputs
    try:
        vol = em5m.Volume.from_array(em, voxel_size=(5.0, 5.0, 5.0))
        with pytest.raises(ValueError, match="does not resample for super-resolution"):
            predict(sr_net, vol, **KW)
        assert predict(sr_net, vol, resample=False, **KW).shape == (2, 180, 300)
        ok = em5m.Volume.from_array(em, voxel_size=(10.0, 10.0, 10.0))
        assert predict(sr_net, ok, **KW).shape == (2, 180, 300)
    finally:
        del sr_net.card


class _Scaled(torch.nn.Module):
    """A callable with an OmniEM-like config: restoration, one channel, output scale 2."""

    def __init__(self, fn) -> None:  # noqa: ANN001
        super().__init__()
        self.fn = fn
        self.config = NetConfig(
            backbone="vit_tiny_patch8.random", task="restoration", out_channels=1, output_scale=2.0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_bundled_sr2x_model_runs_in_the_engine(em) -> None:
    """The shipped model end to end; it agrees with the in-memory MONAI path up to blending
    (MONAI resizes its input-size weight map; the engine computes it at the output size)."""
    from omniem import registry
    from omniem.infer import predict_image

    net = registry.load("sr2x-2d")
    crop = em[:1, :90, :150]
    got = predict("sr2x-2d", crop, tile=64, dtype="fp32", out_dtype="float32", output="image")
    ref = predict_image(net, crop[0], tile=64, dtype="fp32")[0].numpy()
    assert got.shape == (1, 180, 300) and ref.shape == (180, 300)
    assert np.abs(got[0] - ref).mean() < 0.005
    # Its output keeps the image's contrast (not blank); quality: tools/bench/restoration.py.
    assert got.std() > 0.5 * crop.std() / 255.0
