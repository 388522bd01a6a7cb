"""Features of any size, tiled extraction and stitching, Zarr output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

import em5m
import emdino
from emdino.features import extract_features, extract_to_zarr, plan_axis, tile_geometry


@pytest.fixture(scope="module")
def small() -> emdino.Backbone:
    return emdino.load("vit_small_patch14.random", img_size=224)


@pytest.fixture(scope="module")
def tiny() -> emdino.Backbone:
    return emdino.load("vit_tiny_patch14.random", img_size=112)


@pytest.fixture(scope="module")
def local_tiny() -> emdino.Backbone:
    """ViT-T whose tokens do not interact and carry no position: each token's feature depends on
    its own patch only, so tiled and whole-image features must agree exactly everywhere."""
    model = emdino.load("vit_tiny_patch14.random", img_size=112)
    with torch.no_grad():
        model.vit.pos_embed.zero_()
        for blk in model.vit.blocks:
            blk.attn.proj.weight.zero_()
            blk.attn.proj.bias.zero_()
    return model


def test_any_size_gives_ceil_grid_and_uint8_equals_float(tiny):
    x = torch.randint(0, 256, (2, 1, 45, 71), dtype=torch.uint8)
    f8 = tiny.features(x)
    ff = tiny.features(x.float() / 255)
    assert f8.patch.shape == (2, 192, 4, 6) and f8.grid.padded_hw == (56, 84)
    assert torch.allclose(f8.patch, ff.patch, atol=1e-6)
    assert sorted(f8.levels) == [2, 5, 8, 11]
    assert tiny.features(x[:, :, :5, :3]).patch.shape == (2, 192, 1, 1)  # smaller than a patch
    assert f8.to_pixels().shape == (2, 192, 45, 71)
    assert torch.equal(f8.to_pixels()[..., 13, 14], f8.patch[..., 0, 1])  # pixel -> its token


def test_bad_inputs_raise_value_errors(tiny):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny.features(torch.full((1, 1, 28, 28), 200.0))
    with pytest.raises(ValueError, match="channels"):
        tiny.features(torch.rand(1, 2, 28, 28))
    with pytest.raises(ValueError, match="uint8"):
        tiny.features(torch.zeros(1, 1, 28, 28, dtype=torch.int32))
    with pytest.raises(ValueError, match="out of range"):
        tiny.features(torch.rand(1, 1, 28, 28), levels=[12])


def test_forward_intermediates_is_timms_on_prepared_input(tiny):
    x = torch.rand(1, 1, 50, 30)
    xp, grid = tiny.prepare(x)
    assert xp.shape[-2:] == (56, 42) and grid.tokens_hw == (4, 3)
    with torch.no_grad():
        final, inter = tiny.forward_intermediates(xp, indices=[5], norm=True)
    f = tiny.features(x, levels=[5, -1])
    assert torch.allclose(inter[0], f.levels[5], atol=1e-6)
    assert torch.allclose(final[:, 0], f.cls, atol=1e-6)
    assert torch.allclose(f.levels[11], f.patch, atol=1e-6)  # last block + final norm = patch


@pytest.mark.parametrize(
    ("n", "tile", "overlap"),
    [(1, 5, 2), (5, 5, 2), (6, 5, 2), (37, 16, 4), (586, 37, 9), (100, 10, 0), (23, 8, 7)],
)
def test_plan_axis_partitions_the_grid_with_margins(n, tile, overlap):
    tiles = plan_axis(n, tile, overlap)
    assert tiles[0].keep0 == 0 and tiles[-1].keep1 == n
    for a, b in zip(tiles, tiles[1:], strict=False):
        assert a.keep1 == b.keep0  # kept parts partition [0, n)
        assert b.start - a.start <= tile - overlap or b is tiles[-1]
    for i, t in enumerate(tiles):
        assert 0 <= t.start <= t.keep0 < t.keep1 <= t.stop <= n
        assert t.stop - t.start == min(tile, n)
        if i > 0:  # margin to the tile border on interior sides
            assert t.keep0 - t.start >= overlap // 2
        if i < len(tiles) - 1:
            assert t.stop - t.keep1 >= overlap // 2


def test_tile_geometry_validates(tiny):
    assert tile_geometry(tiny, None, None) == (8, 2)
    assert tile_geometry(tiny, 56, 20) == (4, 2)  # overlap rounded up to whole patches
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        tile_geometry(tiny, 50, None)
    with pytest.raises(ValueError, match="smaller than the tile"):
        tile_geometry(tiny, 56, 56)


@pytest.mark.parametrize(("tile", "overlap"), [(56, 28), (42, 0), (70, 14)])
def test_stitching_is_exact_for_a_model_without_token_interaction(local_tiny, tile, overlap):
    img = np.random.default_rng(0).integers(0, 256, (131, 157), dtype=np.uint8)
    whole = local_tiny.features(torch.from_numpy(img)[None, None], levels=(5,))
    tiled = extract_features(local_tiny, img, tile=tile, overlap=overlap, batch_size=3, levels=(5,))
    assert tiled.patch.shape == (192, 10, 12)
    np.testing.assert_allclose(tiled.patch, whole.patch[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(tiled.levels[5], whole.levels[5][0].numpy(), atol=1e-5)


def test_stitched_features_match_whole_image_away_from_tile_borders(small, emssl_data):
    """Real EM (ISBI 2012), a random ViT-S/14 with attention: tiles see less context, so features
    differ a little; kept tokens sit >= overlap/2 from any tile border."""
    img = np.asarray(Image.open(emssl_data / "isbi2012/train/image/0.png"))[:392, :448]
    whole = small.features(torch.from_numpy(img.copy())[None, None], levels=()).patch[0].numpy()
    tiled = extract_features(small, img, tile=224, overlap=112).patch
    cos = (tiled * whole).sum(0) / np.linalg.norm(tiled, axis=0) / np.linalg.norm(whole, axis=0)
    # measured: min 0.992, mean 0.998 (random weights attend almost uniformly, so most of the
    # difference is the position grid: 16 x 16 per tile vs 28 x 32 resampled for the whole)
    assert cos.min() > 0.98 and cos.mean() > 0.995, (cos.min(), cos.mean())


def test_extract_to_zarr_writes_an_ome_zarr_em5m_reads(tiny, tmp_path):
    vol = np.random.default_rng(1).integers(0, 256, (3, 60, 90), dtype=np.uint8)
    source = em5m.Volume.from_array(vol, voxel_size=(50.0, 4.0, 4.0))
    out = extract_to_zarr(tiny, source, tmp_path / "f.zarr", tile=56, overlap=14, levels=[2])
    back = em5m.open_volume(out)
    assert back.axes == ("c", "z", "y", "x") and back.shape == (192, 3, 5, 7)
    assert back.voxel_size == (50.0, 56.0, 56.0)  # z kept, y/x = pixel x patch
    ref = extract_features(tiny, vol[1], tile=56, overlap=14, levels=[2])
    np.testing.assert_allclose(back.data[:, 1].compute(), ref.patch, atol=1e-6)
    root = zarr.open_group(str(out), mode="r")
    np.testing.assert_allclose(root["levels/2/s0"][:, 1], ref.levels[2], atol=1e-6)
    attrs = root.attrs["emdino"]
    assert attrs["model"] == "vit_tiny_patch14.random" and attrs["tile_px"] == 56
    assert attrs["overlap_px"] == 14 and attrs["levels"] == [2]
    tr = root.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][1]
    assert tr["translation"] == [0.0, 0.0, 26.0, 26.0]  # first token centre: 6.5 px x 4 nm
    with pytest.raises(FileExistsError):
        extract_to_zarr(tiny, source, out)


def test_non_uint8_input_is_windowed_and_recorded(tiny, tmp_path):
    img = np.random.default_rng(2).integers(1000, 5000, (40, 50)).astype(np.uint16)
    out = extract_to_zarr(tiny, img, tmp_path / "u16.zarr")
    attrs = zarr.open_group(str(out), mode="r").attrs["emdino"]
    assert attrs["intensity_window"]["source_dtype"] == "uint16"
    assert em5m.open_volume(out).shape == (192, 3, 4)


def test_failed_extraction_leaves_nothing_behind(tiny, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = tiny.features

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny, "features", flaky)
    img = np.zeros((200, 200), np.uint8)
    with pytest.raises(RuntimeError, match="simulated"):
        extract_to_zarr(tiny, img, tmp_path / "x.zarr", tile=56, batch_size=1)
    assert list(tmp_path.iterdir()) == []
