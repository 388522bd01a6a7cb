"""Real training steps of every bundled recipe on real EM data; resume; model files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emdino.precision import resolve_precision
from omniem.modelfile import load_model, read_metadata
from omniem.train import load_config, train
from omniem.train.config import CONFIG_DIR

RECIPES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "default")

# Small and fast: the real data and the real loop, a small random ViT-T/8, 64 px crops.
FAST = [
    "net.backbone=vit_tiny_patch8.random",
    "net.feature_size=8",
    "data.crop=64",
    "optim.batch_size=4",
    "optim.warmup_steps=2",
    "optim.lr=3e-3",
    "train.log_every=1",
    "train.val_tile=64",
    "train.val_max_images=1",
    "seed=0",
]


def losses(run) -> list[float]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_real_steps_and_the_loss_goes_down(recipe, tmp_path, emssl_data):
    assert {"mito_2d", "membrane_2d", "organelle_2d", "denoise_2d", "sr2x_2d"} <= set(RECIPES)
    cfg = load_config(recipe, [*FAST, "optim.total_steps=24", "train.val_every=1000"])
    path = train(cfg, tmp_path / "run")
    ls = losses(tmp_path / "run")
    assert len(ls) == 24 and all(np.isfinite(ls))
    assert np.mean(ls[-6:]) < np.mean(ls[:6]), ls
    meta = read_metadata(path)
    assert meta["card"]["name"] == cfg.card.name and meta["net"]["task"] == cfg.net.task
    # The card names the tiling the model was validated with, which inference then defaults to.
    card_tiling = (meta["card"]["tile"], meta["card"]["overlap"])
    assert card_tiling == (cfg.train.val_tile, cfg.train.val_overlap)
    assert (tmp_path / "run" / "config.yaml").is_file() and (
        tmp_path / "run" / "curves.png"
    ).is_file()
    # The saved config names the precision the run computed in ("auto" resolved).
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert cfg.train.precision == "auto" and saved.train.precision == resolve_precision("auto")


def test_resume_continues_and_validation_keeps_the_best(tmp_path, emssl_data):
    run = tmp_path / "run"
    over = [*FAST, "optim.total_steps=8", "train.val_every=4", "train.checkpoint_every=2"]
    cfg = load_config("mito_2d", [*over, "train.stop_after_steps=4"])
    train(cfg, run)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, run)
    cfg2 = load_config("mito_2d", over)
    path = train(cfg2, run, resume=True)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == list(range(1, 9))  # 1..4, then 5..8 after the resume
    vals = [r for r in recs if "val_score" in r]
    assert [r["step"] for r in vals] == [4, 8]
    best = max(vals, key=lambda r: r["val_score"])
    assert read_metadata(path)["card"]["step"] == best["step"]
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["step"] == 8


def test_weight_average_is_what_is_saved_and_survives_resume(tmp_path, emssl_data):
    """With ``optim.ema_decay`` the model file holds the moving average, not the live weights,
    and a resumed run continues the average from its checkpoint."""
    run = tmp_path / "run"
    over = [*FAST, "optim.total_steps=6", "data.val_split=null", "optim.ema_decay=0.9"]
    train(load_config("mito_2d", [*over, "train.stop_after_steps=3"]), run)
    assert torch.load(run / "last.pt", weights_only=False)["ema"]["updates"] == 3
    path = train(load_config("mito_2d", over), run, resume=True)
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["ema"]["updates"] == 6
    saved = load_model(path).state_dict()
    moved = 0
    for name, avg in ck["ema"]["average"].items():
        torch.testing.assert_close(saved[name], avg)
        moved += not torch.equal(avg, ck["model"][name])
    assert moved > 0  # the average differs from the live weights
    plain = tmp_path / "plain"
    short = [*FAST, "optim.total_steps=4", "data.val_split=null"]
    train(load_config("mito_2d", [*short, "train.stop_after_steps=2"]), plain)
    with pytest.raises(ValueError, match="started without"):
        train(load_config("mito_2d", [*short, "optim.ema_decay=0.9"]), plain, resume=True)


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_model_file_round_trip_and_errors(tmp_path, emssl_data, mode):
    """The loaded file computes what the trained network did, also with a frozen backbone (not
    stored: rebuilt on the position-embedding grid it was trained with)."""
    sets = [*FAST, "optim.total_steps=2", "data.val_split=null", f"net.backbone_mode={mode}"]
    cfg = load_config("mito_2d", sets)
    path = train(cfg, tmp_path / "run")
    net = load_model(path)
    x = torch.rand(1, 1, 48, 40)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    from omniem.nets import build

    ref = build(cfg.net, img_size=64)
    ref.load_state_dict(ck["model"])
    ref.eval()
    torch.testing.assert_close(net(x), ref(x))
    from omniem.errors import ModelFileError

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="bad.safetensors"):
        load_model(bad)
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.safetensors")


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="restoration"):
        load_config("mito_2d", ["loss.kind=l1"])
    with pytest.raises(FileNotFoundError, match="bundled recipes"):
        load_config("no_such_recipe")
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        load_config("mito_2d", ["optim.lrr=1"])


def test_data_bin_loads_restoration_slices_at_twice_the_pixel_size(emssl_data) -> None:
    from omniem.train.config import DataConfig
    from omniem.train.data import bin_images, load_split

    plain = load_split(DataConfig(target="downsample"), "val", "0:3", with_labels=False)
    binned = load_split(DataConfig(target="downsample", bin=2), "val", "0:3", with_labels=False)
    assert binned.images.shape == (3, 384, 512) and binned.images.dtype == np.uint8
    block = plain.images[:, 100:102, 200:202].astype(np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(binned.images[:, 50, 100], block, atol=0.51)
    assert plain.voxel_size is not None and binned.voxel_size is not None
    assert binned.voxel_size[-1] == 2 * plain.voxel_size[-1]
    with pytest.raises(ValueError, match="not labels"):
        load_split(DataConfig(bin=2), "val", "0:3", with_labels=True)
    with pytest.raises(ValueError, match="smaller than the bin factor"):
        bin_images(np.zeros((1, 3, 3), np.uint8), 4)


def test_bin_shifts_bin_training_slices_at_several_grid_offsets(emssl_data) -> None:
    from omniem.train.config import DataConfig
    from omniem.train.data import bin_images, load_split

    plain = load_split(DataConfig(target="downsample"), "val", "0:2", with_labels=False)
    data = DataConfig(target="downsample", bin=4, bin_shifts=2)
    shifted = load_split(data, "val", "0:2", with_labels=False, bin_shifts=data.bin_shifts)
    # offsets 0 and 2 on each axis: 4 copies of each slice, binned from a 766 x 1022 window
    assert shifted.images.shape == (8, 191, 255)
    assert shifted.names[:2] == [f"{n}@0,0" for n in plain.names]
    assert shifted.names[-1] == f"{plain.names[1]}@2,2"
    np.testing.assert_array_equal(shifted.images[6:], bin_images(plain.images[:, 2:768, 2:1024], 4))
    assert not np.array_equal(shifted.images[0], shifted.images[6])  # distinct pairs
    # validation (bin_shifts not passed) keeps one copy per slice
    assert load_split(data, "val", "0:2", with_labels=False).images.shape == (2, 192, 256)
    with pytest.raises(ValueError, match="bin_shifts must be between 1 and the bin factor 4"):
        load_split(
            DataConfig(target="downsample", bin=4), "val", "0:1", with_labels=False, bin_shifts=5
        )
