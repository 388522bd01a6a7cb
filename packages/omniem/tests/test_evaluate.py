"""`omniem evaluate` and `predict_image` on real Lucchi++ slices written as PNG folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from emdino.precision import resolve_precision
from omniem import metrics
from omniem.cli import main
from omniem.infer import predict_image
from omniem.modelfile import save_model
from omniem.nets import NetConfig, build


@pytest.fixture(scope="module")
def val_pngs(emssl_data, tmp_path_factory):
    import em5m.datasets

    va = em5m.datasets.load("lucchi_pp", split="val")
    d = tmp_path_factory.mktemp("val")
    (d / "images").mkdir()
    (d / "labels").mkdir()
    for k in range(3):
        crop = (slice(200, 328), slice(300, 460))
        Image.fromarray(va.image[k][crop]).save(d / "images" / f"{k:04d}.png")
        lab = va.labels["mitochondria"][k][crop].astype(np.uint8) * 255
        Image.fromarray(lab).save(d / "labels" / f"{k:04d}.png")
    return d


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    net = build(
        NetConfig(backbone="vit_tiny_patch8.random", out_channels=2, feature_size=8), img_size=64
    )
    return net, save_model(
        net, tmp_path_factory.mktemp("m") / "tiny.safetensors", card={"name": "tiny"}
    )


def test_predict_image_gives_class_probabilities(tiny_model, val_pngs):
    net, _ = tiny_model
    img = np.asarray(Image.open(val_pngs / "images" / "0000.png"))
    p = predict_image(net, img, tile=64, dtype="fp32")
    assert p.shape == (2, *img.shape)
    torch.testing.assert_close(p.sum(0), torch.ones(img.shape))  # softmax over classes


def test_evaluate_cli_writes_pooled_scores(tiny_model, val_pngs, tmp_path, capsys):
    net, path = tiny_model
    out = tmp_path / "scores.json"
    code = main(["evaluate", "--model", str(path), "--images", str(val_pngs / "images"),
                 "--labels", str(val_pngs / "labels"), "--json", str(out), "--tile", "64",
                 "--dtype", "fp32"])  # fmt: skip
    assert code == 0
    res = json.loads(out.read_text())
    assert res["n_images"] == 3 and {"iou", "dice", "precision", "recall"} <= set(res)
    # The same numbers computed here: predictions pooled over the three images.
    counts = metrics.SegmentationCounts(2)
    for k in range(3):
        img = np.asarray(Image.open(val_pngs / "images" / f"{k:04d}.png"))
        lab = np.asarray(Image.open(val_pngs / "labels" / f"{k:04d}.png")) > 0
        pred = predict_image(net, img, tile=64, dtype="fp32").argmax(0).numpy()
        counts.update(pred, lab.astype(np.int64))
    assert res["iou"] == pytest.approx(counts.iou()[1], abs=1e-9)
    assert res["recall"] == pytest.approx(counts.recall()[1], abs=1e-9)


def test_evaluate_tta_scores_the_mean_over_the_eight_views(tiny_model, val_pngs, tmp_path):
    net, path = tiny_model
    out = tmp_path / "tta.json"
    code = main(["evaluate", "--model", str(path), "--images", str(val_pngs / "images"),
                 "--labels", str(val_pngs / "labels"), "--json", str(out), "--tile", "64",
                 "--dtype", "fp32", "--tta"])  # fmt: skip
    assert code == 0
    res = json.loads(out.read_text())
    assert res["tta"] is True
    counts = metrics.SegmentationCounts(2)
    for k in range(3):
        img = np.asarray(Image.open(val_pngs / "images" / f"{k:04d}.png"))
        lab = np.asarray(Image.open(val_pngs / "labels" / f"{k:04d}.png")) > 0
        pred = predict_image(net, img, tile=64, dtype="fp32", tta=True).argmax(0).numpy()
        counts.update(pred, lab.astype(np.int64))
    assert res["iou"] == pytest.approx(counts.iou()[1], abs=1e-9)
    # An untrained network is not rotation-equivariant: the views do change the output.
    plain = predict_image(net, img, tile=64, dtype="fp32")
    assert not torch.allclose(plain, predict_image(net, img, tile=64, dtype="fp32", tta=True))


def test_evaluate_errors_name_the_problem(tiny_model, val_pngs, tmp_path, capsys):
    _, path = tiny_model
    (tmp_path / "two").mkdir()
    for k in range(2):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "two" / f"{k}.png")
    imgs, two, x_json = str(val_pngs / "images"), str(tmp_path / "two"), str(tmp_path / "x.json")
    code = main(
        ["evaluate", "--model", str(path), "--images", imgs, "--labels", two, "--json", x_json]
    )
    err = capsys.readouterr().err
    assert code == 2 and "3" in err and "2" in err and "Traceback" not in err
    labs, y_json = str(val_pngs / "labels"), str(tmp_path / "y.json")
    code = main(
        ["evaluate", "--model", "no-such", "--images", imgs, "--labels", labs, "--json", y_json]
    )
    assert code == 2 and "no OmniEM model named 'no-such'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def test_registry_lists_and_loads_the_bundled_mito_model():
    import omniem
    import omniem.infer

    assert "mito-2d" in omniem.list_models()
    info = omniem.info("mito-2d")
    assert (
        info["bundled"] and info["net"]["task"] == "semantic" and info["card"]["name"] == "mito-2d"
    )
    net = omniem.load("mito-2d")
    assert net.config.backbone == "vit_tiny_patch8.emdino" and net.config.out_channels == 2
    # It runs on the tiles it was validated with (512 px: its instance norm wants the context).
    assert (info["card"]["tile"], info["card"]["overlap"]) == (512, 0.25)
    assert omniem.infer.model_tiling(net) == (512, 0.25)


def test_bundled_restoration_models_restore_a_held_out_slice(emssl_data):
    """denoise-2d removes synthetic noise and sr2x-2d doubles the size, on Lucchi++ val."""
    import numpy as np

    import em5m.datasets
    import omniem
    from omniem import degrade, metrics
    from omniem.infer import predict_image

    clean = em5m.datasets.load("lucchi_pp", split="val").image[5, 200:328, 300:428] / 255.0
    clean = clean.astype(np.float32)

    den = omniem.load("denoise-2d")
    assert omniem.info("denoise-2d")["net"]["task"] == "restoration"
    noisy = degrade.poisson_gaussian(clean, **degrade.NOISE_LEVELS["high"], rng=0)
    out = predict_image(den, noisy, tile=128)[0].numpy()
    assert out.shape == clean.shape
    gain = metrics.psnr(out, clean, data_range=1.0) - metrics.psnr(noisy, clean, data_range=1.0)
    assert gain > 6.0, gain

    sr = omniem.load("sr2x-2d")
    assert sr.config.output_scale == 2.0
    small = degrade.downsample2x(clean)
    up = predict_image(sr, small, tile=64)[0].numpy()
    assert up.shape == clean.shape
    bicubic = degrade.bicubic_upsample(small, 2)
    # Not worse than bicubic interpolation (its card reports where it stands against it).
    assert (
        metrics.psnr(up, clean, data_range=1.0) > metrics.psnr(bicubic, clean, data_range=1.0) - 0.3
    )


def test_bundled_membrane_and_organelle_models_segment_held_out_slices(emssl_data):
    """membrane-2d on an ISBI 2012 held-out slice and organelle-2d on a VNC held-out section:
    pixel scores near the ones in their cards (short CPU runs: modest, far above chance)."""
    import numpy as np

    import em5m.datasets
    import omniem
    from omniem import metrics
    from omniem.infer import predict_image

    isbi = em5m.datasets.load("isbi2012", split="val")
    mem = omniem.load("membrane-2d")
    p = predict_image(mem, isbi.image[0]).numpy()
    counts = metrics.SegmentationCounts(2)
    counts.update(p.argmax(0), isbi.labels["membrane"][0].astype(np.int64))
    assert counts.dice()[1] > 0.65  # card: 0.739 over the 5 held-out slices

    vnc = em5m.datasets.load("drosophila_vnc", split="val")
    org = omniem.load("organelle-2d")
    assert omniem.info("organelle-2d")["card"]["classes"][1] == "mitochondrion"
    crop = np.s_[256:768, 256:768]
    p = predict_image(org, vnc.image[0][crop]).numpy()
    counts = metrics.SegmentationCounts(5)
    counts.update(p.argmax(0), np.asarray(vnc.labels["classes"][0][crop], dtype=np.int64))
    iou = counts.iou()
    assert iou[4] > 0.5 and iou[0] > 0.2  # intracellular and membrane, far above chance


def test_the_model_cards_tile_is_the_default_tiling(tiny_model, val_pngs, tmp_path):
    """A model file whose card names a tile and overlap (what training validated with) is run with
    them by evaluate, predict_image and the engine unless the call names others."""
    from omniem.engine import predict
    from omniem.registry import load

    net, _ = tiny_model
    path = save_model(net, tmp_path / "tiled.safetensors", card={"tile": 96, "overlap": 0.5})
    model = load(path)
    img = np.asarray(Image.open(val_pngs / "images" / "0000.png"))  # 128 x 160
    own = predict_image(model, img, dtype="fp32")
    torch.testing.assert_close(own, predict_image(model, img, tile=96, overlap=0.5, dtype="fp32"))
    # Another tiling gives another result on this image, so the default is not a coincidence.
    assert not torch.allclose(own, predict_image(model, img, tile=64, dtype="fp32"))

    res = evaluate_json(path, val_pngs, tmp_path / "own.json")
    assert (res["tile"], res["overlap"]) == (96, 0.5)
    assert res["dtype"] == resolve_precision("auto")  # the precision it computed in
    told = evaluate_json(path, val_pngs, tmp_path / "told.json", "--tile", "64")
    assert (told["tile"], told["overlap"]) == (64, 0.5)
    assert res["iou"] != told["iou"]

    # The engine, too: the whole image with the card's tiling, as when it is named.
    own_engine = predict(path, img, dtype="fp32", output="probabilities")
    named = predict(path, img, tile=96, overlap=0.5, dtype="fp32", output="probabilities")
    np.testing.assert_array_equal(own_engine, named)
    other = predict(path, img, tile=64, dtype="fp32", output="probabilities")
    assert not np.allclose(own_engine, other)


def evaluate_json(model, pngs, out, *extra: str) -> dict:
    code = main(["evaluate", "--model", str(model), "--images", str(pngs / "images"),
                 "--labels", str(pngs / "labels"), "--json", str(out), "--dtype", "fp32",
                 *extra])  # fmt: skip
    assert code == 0
    return json.loads(out.read_text())
