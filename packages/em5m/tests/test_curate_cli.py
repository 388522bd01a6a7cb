"""The ``em5m curate``, ``em5m stats`` and ``em5m montage`` commands on real data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from em5m.cli import main
from em5m.curate import curate
from em5m.curate.progress import TqdmProgress


@pytest.fixture(scope="module")
def corpus(emssl_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    catalog = tmp / "c.yaml"
    catalog.write_text(
        "defaults: {tile_size: 224, pixel_sizes_nm: [8]}\ndatasets:\n"
        f"  - {{id: isbi, uri: '{emssl_data}/isbi2012/train/image', modality: ssTEM,"
        " species: Drosophila melanogaster, organ: ventral nerve cord,"
        " voxel_size_nm: [50, 4, 4], licence: research, citation: Cardona 2010}\n"
        f"  - {{id: vnc, uri: '{emssl_data}/drosophila_vnc_sstem/stack1/raw', modality: ssTEM,"
        " species: Drosophila melanogaster, voxel_size_nm: [50, 4.6, 4.6],"
        " licence: CC BY-NC-SA 3.0, citation: Gerhard 2013,"
        " sampling: {pixel_sizes_nm: [8, 16]}}\n"
        f"  - {{id: liver, uri: '{emssl_data}/emdiffuse_demo/mouse_liver_demo', modality: TEM,"
        " species: mouse, organ: liver, voxel_size_nm: [8, 8], licence: MIT, citation: Lu 2024}\n"
    )
    out = tmp / "out"
    assert main(["curate", str(catalog), "--out", str(out), "--workers", "2"]) == 0
    return tmp, catalog, out


def test_curate_command_writes_the_corpus(corpus, capsys):
    _, _, out = corpus
    assert (out / "manifest.parquet").is_file() and (out / "report.json").is_file()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-000000.tar"]
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["kept"] == 30 + 80 + 20 + 2


def test_stats_counts_and_histogram(corpus, capsys):
    _, _, out = corpus
    assert main(["stats", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["tiles"] == 132
    assert stats["by_modality"] == {"ssTEM": 130, "TEM": 2}
    assert stats["by_species"] == {"Drosophila melanogaster": 130, "mouse": 2}
    assert stats["by_organ"] == {"unknown": 100, "ventral nerve cord": 30, "liver": 2}
    edges = np.asarray(stats["pixel_size_nm"]["bin_edges"])
    counts = np.asarray(stats["pixel_size_nm"]["counts"])
    assert counts.sum() == 132
    centre_8 = np.flatnonzero((edges[:-1] < 8) & (edges[1:] > 8))[0]
    assert counts[centre_8] == 112  # the 8 nm tiles, in the bin around 8 nm
    png = Image.open(stats["histogram_png"])
    assert png.size == (720, 360) and len(set(png.getdata())) > 2


def test_montage_grid(corpus, capsys):
    tmp, _, out = corpus
    assert (
        main(
            [
                "montage",
                str(out),
                "--out",
                str(tmp / "m.png"),
                "--n",
                "10",
                "--seed",
                "1",
                "--tile-px",
                "64",
            ]
        )
        == 0
    )
    img = np.asarray(Image.open(tmp / "m.png"))
    assert img.shape == (3 * 64, 4 * 64)  # ceil(sqrt(10)) = 4 columns, 3 rows
    assert img[:64, :64].std() > 5  # real EM content in the first cell


def test_existing_commands_still_work(emssl_data, capsys):
    assert main(["info", str(emssl_data / "isbi2012" / "train" / "image")]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [30, 512, 512]


def test_progress_bars_report_units_and_rates(corpus, capsys):
    tmp, catalog, _ = corpus
    seen = []

    class Spy(TqdmProgress):
        def __call__(self, stage, done, total, info):
            seen.append((stage, done, total, dict(info)))
            super().__call__(stage, done, total, info)

    curate(catalog, tmp / "out2", progress=Spy(), workers=1)
    stages = {s for s, *_ in seen}
    assert {"units", "dedup", "shards"} <= stages
    last = [x for x in seen if x[0] == "units"][-1]
    assert last[1] == last[2] and last[3]["tiles"] == 132
    err = capsys.readouterr().err
    assert "units: 100%" in err and "tiles/s" in err
    table = pq.read_table(tmp / "out2" / "manifest.parquet")
    assert table.equals(pq.read_table(tmp / "out" / "manifest.parquet"))
