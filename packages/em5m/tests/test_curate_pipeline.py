"""Acceptance 1: curate every EMSSL_DATA dataset plus an OME-Zarr and an N5 volume made here.

The manifest passes the schema check, and 20 random tiles rebuilt from their sources using only
their manifest rows equal the stored PNG pixels exactly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorstore as ts

from em5m import open_volume, save_volume
from em5m.curate import (
    MANIFEST_SCHEMA,
    REFERENCE_CATALOG,
    ManifestSchemaError,
    check_manifest,
    curate,
    read_tile,
)
from em5m.curate.shards import decode_png, iter_shard


def _omezarr(path, emssl_data):
    """uint16 OME-Zarr pyramid (5, 10, 20 nm) made from 12 Lucchi++ slices.

    Fixture volumes are transposed in y/x so that their tiles are not near-duplicates of the
    reference datasets' tiles (which cross-dataset dedup would rightly remove).
    """
    vol = open_volume(emssl_data / "lucchi_pp" / "train" / "images")
    rng = np.random.default_rng(1)
    data = vol.data[40:52].compute().transpose(0, 2, 1).astype(np.uint16) * 200
    data += rng.integers(0, 200, data.shape).astype(np.uint16)
    save_volume(data, path, axes="zyx", voxel_size=(5.0, 5.0, 5.0), levels=3)
    return path


def _n5(path, emssl_data):
    """int16 N5 (signed, like MRC-derived data) from the FlyEM medulla volume, 10 nm."""
    vol = open_volume(emssl_data / "flyem_fibsem_medulla" / "training_sample2" / "grayscale_maps")
    data = (vol.data[:24].compute().transpose(0, 2, 1).astype(np.int16) - 128) * 90
    store = ts.open(
        {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {
                "dimensions": list(data.shape[::-1]),
                "blockSize": [64, 64, 8],
                "dataType": "int16",
                "compression": {"type": "gzip"},
            },
        },
        create=True,
    ).result()
    store[...] = data.T
    attrs = json.loads((path / "attributes.json").read_text())
    attrs["pixelResolution"] = {"dimensions": [10.0, 10.0, 10.0], "unit": "nm"}
    (path / "attributes.json").write_text(json.dumps(attrs))
    return path


@pytest.fixture(scope="module")
def run(emssl_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curate_all")
    os.environ["EMSSL_DATA"] = str(emssl_data)
    text = REFERENCE_CATALOG.read_text().replace("${EMSSL_DATA}", str(emssl_data))
    zarr_path = _omezarr(tmp / "lucchi_u16.ome.zarr", emssl_data)
    n5_path = _n5(tmp / "medulla_i16.n5", emssl_data)
    text += (
        f"  - id: fixture_omezarr\n    uri: {zarr_path}\n    modality: FIB-SEM\n"
        "    species: mouse\n    organ: brain\n    licence: EPFL public research release\n"
        "    citation: Lucchi et al. 2012 (uint16 OME-Zarr test fixture)\n"
        "    sampling: {pixel_sizes_nm: [8.0, 16.0]}\n"
        f"  - id: fixture_n5\n    uri: {n5_path}\n    modality: FIB-SEM\n"
        "    species: Drosophila melanogaster\n    licence: CC-BY attribution (FlyEM)\n"
        "    citation: FlyEM NeuroProof examples (int16 N5 test fixture)\n"
    )
    catalog = tmp / "catalog.yaml"
    catalog.write_text(text)
    report = curate(catalog, tmp / "out", workers=2)
    return tmp / "out", report


def test_manifest_passes_schema_and_covers_every_source(run):
    out, report = run
    table = check_manifest(out / "manifest.parquet")
    assert table.schema.equals(MANIFEST_SCHEMA, check_metadata=False)
    assert report["complete"] and report["failures"] == []
    assert table.num_rows == report["totals"]["kept"] > 500
    ds = set(table.column("dataset_id").to_pylist())
    expected = {
        "isbi2012_train",
        "isbi2012_test",
        "lucchi_pp",
        "drosophila_vnc_sstem",
        "flyem_fibsem_medulla",
        "emdiffuse_denoise",
        "emdiffuse_microns",
        "emdiffuse_mouse_liver",
        "omniem_mitoem_2d",
        "omniem_axonem_3d",
        "fixture_omezarr",
        "fixture_n5",
    }
    assert expected <= ds
    # The three datasets smaller than one tile are reported, not failed.
    for name in ("gala_fibsem_train", "gala_fibsem_test", "omniem_gly"):
        assert report["datasets"][name]["sampled"] == 0
        assert any("smaller than one tile" in n for n in report["datasets"][name]["notes"])
    rows = table.to_pylist()
    zarr_rows = [r for r in rows if r["dataset_id"] == "fixture_omezarr"]
    assert {(r["level"], r["target_pixel_size_nm"]) for r in zarr_rows} == {(0, 8.0), (1, 16.0)}
    assert all(
        r["voxel_size_origin"] == "source"
        and r["source_dtype"] == "uint16"
        and r["std_method"] == "percentile-unit"
        for r in zarr_rows
    )
    n5_rows = [r for r in rows if r["dataset_id"] == "fixture_n5"]
    assert {r["axis"] for r in n5_rows} == {"xy"}  # 24 slices: too thin for xz/yz tiles
    assert all(r["source_dtype"] == "int16" for r in n5_rows)
    flyem_axes = {r["axis"] for r in rows if r["dataset_id"] == "flyem_fibsem_medulla"}
    assert flyem_axes == {"xy", "xz", "yz"}  # isotropic: all three planes
    assert {r["axis"] for r in rows if r["dataset_id"] == "isbi2012_train"} == {"xy"}


def test_twenty_random_tiles_rebuild_exactly_from_the_manifest(run):
    out, _ = run
    table = pq.read_table(out / "manifest.parquet")
    rng = np.random.default_rng(0)
    picks = rng.choice(table.num_rows, 20, replace=False)
    # Always include the resampled, non-uint8 and multi-level cases.
    ds = np.asarray(table.column("dataset_id").to_pylist())
    picks = np.unique(
        np.concatenate(
            [
                picks,
                np.flatnonzero(ds == "fixture_omezarr")[:2],
                np.flatnonzero(ds == "fixture_n5")[:2],
            ]
        )
    )
    rows = table.take(pa.array(picks)).to_pylist()
    stored = {}
    for shard in {r["shard"] for r in rows}:
        for key, png, meta in iter_shard(out / "shards" / shard):
            stored[key] = (decode_png(png), meta)
    assert len(rows) >= 20
    for row in rows:
        pixels, meta = stored[row["key"]]
        rebuilt = read_tile(row)
        assert rebuilt.dtype == np.uint8 and rebuilt.shape == (row["tile_size"],) * 2
        np.testing.assert_array_equal(rebuilt, pixels, err_msg=row["key"])
        assert meta["bbox_level"] == row["bbox_level"] and meta["licence"] == row["licence"]


def test_report_and_removed_tiles_add_up(run):
    out, report = run
    saved = json.loads((out / "report.json").read_text())
    assert saved["totals"] == report["totals"]
    removed = pq.read_table(out / "removed.parquet")
    t = report["totals"]
    assert t["sampled"] == t["kept"] + removed.num_rows
    assert t["filtered"] + t["deduplicated"] == removed.num_rows
    dups = [r for r in removed.to_pylist() if r["reason"] == "duplicate"]
    kept = set(pq.read_table(out / "manifest.parquet").column("key").to_pylist())
    assert all(r["duplicate_of"] in kept for r in dups)  # exemplars are kept tiles
    for name, d in report["datasets"].items():
        assert d["sampled"] == d["kept"] + sum(d["filtered"].values()) + d["deduplicated"], name


def test_schema_check_rejects_broken_manifests(run):
    out, _ = run
    table = pq.read_table(out / "manifest.parquet")
    with pytest.raises(ManifestSchemaError, match="missing column 'licence'"):
        check_manifest(table.drop_columns(["licence"]))
    bad_type = table.set_column(
        table.schema.get_field_index("level"), "level", table.column("level").cast(pa.int64())
    )
    with pytest.raises(ManifestSchemaError, match="'level' has type int64"):
        check_manifest(bad_type)
    dup = pa.concat_tables([table.slice(0, 2), table.slice(0, 1)])
    with pytest.raises(ManifestSchemaError, match="not unique"):
        check_manifest(dup)
    blank = table.set_column(
        table.schema.get_field_index("citation"),
        "citation",
        pa.array([" "] * table.num_rows, pa.string()),
    )
    with pytest.raises(ManifestSchemaError, match="citation has blank"):
        check_manifest(blank)
