"""The large-volume engine on real EM (Lucchi++ val crops) with a tiny random OmniEM (fp32).

References: the in-memory engine is compared with MONAI's ``sliding_window_inference`` (same tile,
overlap and Gaussian weights: the engine's Gaussian is MONAI's, bit for bit), and the out-of-core
OME-Zarr run with the in-memory run (identical blocks, so identical bits).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from monai.inferers import sliding_window_inference

from omniem.engine import BlockError, LedgerMismatchError, plan, predict
from omniem.engine.ledger import Ledger
from omniem.engine.tiles import blend_weights
from omniem.nets import NetConfig, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def em(emssl_data: Path) -> np.ndarray:
    """Lucchi++ val (last 33 slices of the training volume), a 3 x 200 x 300 uint8 crop."""
    import em5m.datasets

    img = np.ascontiguousarray(em5m.datasets.load("lucchi_pp", split="val").image[:3, :200, :300])
    assert img.dtype == np.uint8 and img.std() > 10
    return img


def identity(x: torch.Tensor) -> torch.Tensor:
    """A model that returns its input as one channel."""
    return x


KW = {"tile": 64, "overlap": 0.25, "dtype": "fp32", "batch_size": 4}


def _monai(net, img: np.ndarray) -> np.ndarray:
    out = []
    for sl in img:
        x = torch.from_numpy(sl.astype(np.float32) / np.float32(255.0))[None, None]
        with torch.inference_mode():
            y = sliding_window_inference(
                x,
                roi_size=(64, 64),
                sw_batch_size=4,
                predictor=net,
                overlap=0.25,
                mode="gaussian",
                sigma_scale=0.125,
                padding_mode="reflect",
            )
        out.append(torch.softmax(y, dim=1)[0].numpy())
    return np.stack(out, axis=1)


@pytest.mark.parametrize("crop", [np.s_[:, :, :], np.s_[:1, :40, :100]], ids=["3x200x300", "pad"])
def test_engine_matches_monai_and_target_matches_memory(net, em, crop, tmp_path) -> None:
    img = np.ascontiguousarray(em[crop])
    ref = _monai(net, img)
    mem = predict(net, img, output="probabilities", block=(2, 128), **KW)
    assert mem.shape == ref.shape == (2, *img.shape) and mem.dtype == np.float32
    np.testing.assert_allclose(mem, ref, atol=1e-4, rtol=0)
    # Out of core: blocks are OME-Zarr shards; the result is bit-identical to the in-memory run.
    done = []
    out = predict(
        net,
        img,
        tmp_path / "p.ome.zarr",
        output="probabilities",
        block=(2, 128),
        progress=lambda d, t: done.append((d, t)),
        **KW,
    )
    assert done[-1][0] == done[-1][1] == plan(net, img, block=(2, 128), **KW)["n_blocks"]
    np.testing.assert_array_equal(np.asarray(zarr.open_group(out, mode="r")["s0"][:]), mem)


def test_readable_by_em5m_with_voxel_size(net, em, tmp_path) -> None:
    from em5m.io import open_volume
    from em5m.volume import Volume

    src = Volume.from_array(em[:2, :100, :120], voxel_size=(5, 5, 5))
    out = predict(net, src, tmp_path / "lab.ome.zarr", block=(1, 64), **KW)
    vol = open_volume(out)
    assert vol.axes == ("z", "y", "x") and vol.voxel_size == (5.0, 5.0, 5.0)
    lab = vol.compute()
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, predict(net, src, block=(1, 64), **KW))
    prob = predict(net, src, output="probabilities", block=(1, 64), **KW)
    np.testing.assert_array_equal(lab, prob.argmax(0))  # labels = argmax of the probabilities
    attrs = zarr.open_group(out, mode="r").attrs["omniem"]
    assert attrs["complete"] is True and attrs["output"] == "labels"


@pytest.mark.parametrize("blend", ["gaussian", "hann", "constant"])
def test_constant_image_stays_constant_at_borders(blend) -> None:
    img = np.full((2, 150, 170), 100, np.uint8)
    out = predict(identity, img, blend=blend, block=(1, 64), **KW)
    assert out.shape == (1, 2, 150, 170)
    assert np.abs(out - np.float32(100 / 255)).max() < 1e-6
    # A 2D image, smaller than a tile along y (reflect-padded).
    out2 = predict(identity, img[0, :40], blend=blend, **KW)
    assert out2.shape == (1, 40, 170) and np.abs(out2 - np.float32(100 / 255)).max() < 1e-6


def test_weights_and_identity_reconstruct_real_image(em) -> None:
    from monai.data.utils import compute_importance_map

    assert torch.equal(blend_weights((64, 64)), compute_importance_map((64, 64), "gaussian", 0.125))
    out = predict(identity, em[:1], block=(1, 96), **KW)
    np.testing.assert_allclose(out[0], em[:1] / np.float32(255), atol=1e-6)


class Crash(Exception):
    pass


def test_resume_after_crash_is_bit_identical(net, em, tmp_path) -> None:
    img = em[:, :160, :200]
    kw = dict(KW, block=(1, 96), output="probabilities")
    whole = predict(net, img, tmp_path / "whole.zarr", **kw)
    n_blocks = plan(net, img, **kw)["n_blocks"]
    assert n_blocks == 3 * 2 * 3

    def crash(done: int, total: int) -> None:
        if done >= total // 2:
            raise Crash

    target = tmp_path / "resumed.zarr"
    with pytest.raises(Crash):
        predict(net, img, target, progress=crash, **kw)
    led = Ledger.open(target)
    assert len(led.done()) == n_blocks // 2 and not led.is_complete
    assert not (target / ".omniem" / "complete").exists()
    assert zarr.open_group(target, mode="r").attrs["omniem"]["complete"] is False
    # Other parameters on an incomplete output are refused.
    with pytest.raises(LedgerMismatchError, match="tile"):
        predict(net, img, target, **dict(kw, tile=48))
    # A torn ledger line (crash while appending) is ignored.
    with open(target / ".omniem" / "ledger.jsonl", "a") as f:
        f.write('{"kind": "block", "id"')
    seen = []
    out = predict(net, img, target, progress=lambda d, t: seen.append(d), **kw)
    assert seen[0] == n_blocks // 2 + 1 and seen[-1] == n_blocks  # recorded blocks skipped
    a = zarr.open_group(whole, mode="r")["s0"][:]
    b = zarr.open_group(out, mode="r")["s0"][:]
    assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    assert Ledger.open(target).is_complete
    assert json.loads((target / ".omniem" / "complete").read_text())["n_blocks"] == n_blocks
    assert zarr.open_group(target, mode="r").attrs["omniem"]["complete"] is True
    # A complete output is not replaced without overwrite=True.
    with pytest.raises(FileExistsError, match="complete"):
        predict(net, img, target, **kw)
    predict(identity, img, target, overwrite=True, **dict(KW, block=(1, 96)))
    assert zarr.open_group(target, mode="r")["s0"].shape == (1, 3, 160, 200)


def test_errors(em, tmp_path) -> None:
    (tmp_path / "exists.zarr").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        predict(identity, em[:1, :64, :64], tmp_path / "exists.zarr", **KW)
    with pytest.raises(ValueError, match="dtype bool"):
        predict(identity, em[:1] > 100, **KW)
    with pytest.raises(ValueError, match="dtype complex64"):
        predict(identity, em[:1].astype(np.complex64), **KW)
    with pytest.raises(ValueError, match="4D"):
        predict(identity, em[None], **KW)
    with pytest.raises(ValueError, match="overlap"):
        predict(identity, em[:1], **dict(KW, overlap=1.0))
    sr = build(
        NetConfig(
            backbone="vit_tiny_patch8.random",
            task="restoration",
            out_channels=1,
            feature_size=8,
            output_scale=1.5,
        ),
        img_size=32,
    )
    with pytest.raises(NotImplementedError, match="integer up-scaling only"):
        predict(sr, em[:1], **KW)


def test_read_error_names_block_and_leaves_output_incomplete(em, tmp_path) -> None:
    def fail_second_slab(block, block_info=None):
        if block_info[0]["array-location"][0][0] >= 1:
            raise OSError("simulated read failure")
        return block

    src = da.from_array(em[:2, :100, :100], chunks=(1, 100, 100)).map_blocks(
        fail_second_slab, dtype=np.uint8
    )
    target = tmp_path / "r.zarr"
    with pytest.raises(BlockError, match=r"block \d+ \(z 1:2.*reading source.*simulated") as e:
        predict(identity, src, target, block=(1, 64), **KW)
    assert e.value.stage == "read"
    assert not Ledger.open(target).is_complete
    assert zarr.open_group(target, mode="r").attrs["omniem"]["complete"] is False


def test_write_error_names_block_and_leaves_output_incomplete(em, tmp_path) -> None:
    target = tmp_path / "w.zarr"

    def break_store(done: int, total: int) -> None:
        if done == 1:  # the chunk folder becomes a file: the next shard cannot be written
            shutil.rmtree(target / "s0" / "c")
            (target / "s0" / "c").write_text("not a folder")

    with pytest.raises(BlockError, match=r"block 1 .*writing the output") as e:
        predict(identity, em[:1, :100, :100], target, block=(1, 64), progress=break_store, **KW)
    assert e.value.stage == "write"
    assert not (target / ".omniem" / "complete").exists()


def test_resampling_to_model_voxel_size_is_block_independent(em) -> None:
    def coarse(x: torch.Tensor) -> torch.Tensor:
        return x

    coarse.card = {"voxel_size_nm": [10.0, 10.0]}
    img = em[:1, :120, :150]
    p = plan(coarse, img, voxel_size=(5, 5, 5), **KW)
    assert p["resampled"] and p["model_hw"] == (60, 75)
    small = predict(coarse, img, voxel_size=(5, 5, 5), block=(1, 40), **KW)
    big = predict(coarse, img, voxel_size=(5, 5, 5), block=(1, 1024), **KW)
    assert small.shape == (1, 1, 120, 150)
    np.testing.assert_array_equal(small, big)  # halos make blocks exact, also when resampling
    # Down to 10 nm and back up: a smoothed copy of the image.
    assert np.abs(small[0, 0] - img[0] / 255).mean() < 0.05
    with pytest.warns(UserWarning, match="without resampling"):
        same = predict(coarse, img, voxel_size=(5, 5, 5), resample=False, **KW)
    np.testing.assert_allclose(same[0], img / np.float32(255), atol=1e-6)


def test_uint16_and_float_sources_use_a_robust_window(em) -> None:
    u16 = em[:1, :80, :80].astype(np.uint16) * 200 + 1000
    u16[0, 0, 0] = 65535  # one saturated outlier does not set the range
    p = plan(identity, u16, **KW)
    assert p["intensity"]["kind"] == "window" and p["intensity"]["high"] < 60000
    out = predict(identity, u16, **KW)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out[0, 0, 40].std() > 0.05
    f = predict(identity, em[:1, :80, :80].astype(np.float32) * 0.01 - 3.0, **KW)
    np.testing.assert_allclose(f[0, 0, 1:], out[0, 0, 1:], atol=1e-5)  # same window, bar (0, 0)


def test_default_blocks_run_each_tile_of_2048_px_slices_once(emssl_data: Path) -> None:
    import em5m.datasets

    val = np.asarray(em5m.datasets.load("lucchi_pp", split="val").image[:2])  # 2 x 768 x 1024
    vol = np.tile(val, (1, 3, 2))[:, :2048, :2048].copy()
    tiles: list[int] = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 256:  # not the engine's 32 px probe of the output channels
            tiles.append(x.shape[0])
        return torch.cat([x, 1 - x], dim=1)

    kw = {"tile": 256, "overlap": 0.25, "batch_size": 16, "dtype": "fp32"}
    p = plan(counting, vol, **kw)
    assert p["block_shape"] == (2, 2048, 2048) and p["n_blocks"] == 1
    assert p["halo_overhead"] == 1.0
    out = predict(counting, vol, output="probabilities", **kw)
    assert sum(tiles) == p["tile_runs"] == 2 * 11 * 11  # 11 tile starts per 2048 px axis
    np.testing.assert_allclose(out[0], vol.astype(np.float32) / 255.0, atol=1e-6)
    # 1024 px blocks (the default for larger slices) run the tiles on their borders twice
    split = plan(counting, vol, block=(2, 1024), **kw)
    assert split["tile_runs"] == 2 * 12 * 12
    assert split["halo_overhead"] == pytest.approx(144 / 121, abs=1e-3)
