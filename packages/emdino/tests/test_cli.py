"""The ``emdino`` command line, end to end on real EM images."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import em5m
from emdino.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_and_info(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in (
        "vit_small_patch14.dinov2",
        "vit_giant_patch14_reg4.dinov2",
        "vit_large_patch14.emdino_v1",
    ):
        assert name in out
    assert "default: vit_tiny_patch8.emdino" in out
    code, out, _ = run(capsys, "list", "*tiny_patch16*")
    assert "vit_tiny_patch16.random" in out and "dinov2" not in out
    code, out, _ = run(capsys, "info", "emdinov1")
    assert code == 0
    assert "backbone_emdino_v1.pt" in out and "sha256: unknown" in out
    assert "0.595446" in out


def test_features_on_a_real_em_image(capsys, tmp_path, emssl_data):
    src = emssl_data / "isbi2012/train/image/0.png"
    out = tmp_path / "f.zarr"
    code, _, err = run(
        capsys,
        "features",
        str(src),
        "--out",
        str(out),
        "--tile",
        "256",
        "--overlap",
        "64",
        "--dtype",
        "bf16",
        "--levels",
        "2,11",
    )
    assert code == 0, err
    vol = em5m.open_volume(out)
    assert vol.axes == ("c", "y", "x") and vol.shape == (192, 64, 64)
    data = vol.data.compute()
    assert np.isfinite(data).all() and data.std() > 0.1
    code, _, err = run(capsys, "features", str(src), "--out", str(out))
    assert code == 2 and "already exists" in err


def test_pca_on_a_real_em_volume_slice(capsys, tmp_path, emssl_data):
    png = tmp_path / "pca.png"
    code, _, err = run(
        capsys,
        "pca",
        str(emssl_data / "lucchi_pp/train/images/0000.png"),
        "--out",
        str(png),
        "--size",
        "256",
        "--model",
        "vit_tiny_patch14.random",
    )
    assert code == 0, err
    img = Image.open(png)
    assert img.mode == "RGB" and img.width == 2 * 256 + 8
    assert png.stat().st_size < 300_000
    right = np.asarray(img)[40:, 300:]
    assert len(np.unique(right.reshape(-1, 3), axis=0)) > 50  # a real PCA picture, not flat


def test_embed_then_map_coloured_by_dataset(capsys, tmp_path, emssl_data):
    table = tmp_path / "emb.parquet"
    inputs = [
        emssl_data / "omniem_examples/2d_MitoEM_H_0_0_0.tif",
        emssl_data / "emdiffuse_demo/microns_demo/0.tif",
        emssl_data / "emdiffuse_demo/mouse_liver_demo/0.tif",
        emssl_data / "gala_fibsem/train-image.h5",
    ]
    code, _, err = run(
        capsys,
        "embed",
        *map(str, inputs),
        "--out",
        str(table),
        "--tile",
        "112",
        "--model",
        "vit_tiny_patch14.random",
    )
    assert code == 0, err
    t = pq.read_table(table)
    assert {"source", "dataset", "z", "y0", "x0", "height", "width", "model"} <= set(t.column_names)
    assert t.schema.field("embedding").type.list_size == 192
    datasets = set(t.column("dataset").to_pylist())
    assert {"omniem_examples", "emdiffuse", "gala"} <= datasets
    gala = t.filter(pq.ParquetFile(table).read().column("dataset").to_numpy() == "gala")
    assert gala.num_rows == 50  # one 112-px tile per slice of the (50, 100, 200) volume
    png = tmp_path / "map.png"
    code, _, err = run(
        capsys, "umap", str(table), "--color-by", "dataset", "--out", str(png), "--method", "pca"
    )
    assert code == 0, err
    assert Image.open(png).size == (720, 520)
    code, _, err = run(capsys, "umap", str(table), "--color-by", "organ", "--out", str(png))
    assert code == 2 and "no column 'organ'" in err and "dataset" in err


@pytest.mark.parametrize("command", ["features", "pca", "embed"])
def test_bad_input_is_one_line_naming_the_file(capsys, tmp_path, command):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    out_arg = {"features": "o.zarr", "pca": "o.png", "embed": "o.parquet"}[command]
    code, out, err = run(capsys, command, str(bad), "--out", str(tmp_path / out_arg))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emdino: error: ") and str(bad) in lines[0]
    code, _, err = run(
        capsys, command, str(tmp_path / "missing.tif"), "--out", str(tmp_path / out_arg)
    )
    assert code == 2 and "missing.tif: no such file" in err


def test_unknown_model_and_bad_options_exit_2(capsys, tmp_path, emssl_data):
    src = str(emssl_data / "omniem_examples/2d_MitoEM_H_0_0_0.tif")
    code, _, err = run(
        capsys, "features", src, "--out", str(tmp_path / "a.zarr"), "--model", "vit_smal_patch14"
    )
    assert code == 2 and "unknown model 'vit_smal_patch14'" in err
    code, _, err = run(capsys, "features", src, "--out", str(tmp_path / "b.zarr"), "--tile", "500")
    assert code == 2 and "multiple of the patch size 8" in err


def test_embed_checks_every_input_before_computing(tmp_path, emssl_data, monkeypatch):
    import emdino
    from emdino.embed import embed_sources

    model = emdino.load("vit_tiny_patch14.random", img_size=56)
    monkeypatch.setattr(model, "features", lambda *a, **k: pytest.fail("computed too early"))
    good = emssl_data / "omniem_examples/2d_MitoEM_H_0_0_0.tif"
    with pytest.raises(em5m.EMDataError, match="nope.tif"):
        embed_sources(model, [good, tmp_path / "nope.tif"])


def test_pretrain_is_handed_to_emdino_ssl(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--help"])
    assert exit_.value.code == 0
    assert "usage: emdino pretrain" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "pretrain" in capsys.readouterr().out
