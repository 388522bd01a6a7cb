"""Acceptance 7: bad input gives a named error in the report and the rest of the run completes.

Unreachable sources (a missing path, a refused connection), corrupt files (garbage behind a
.tif name; one truncated slice in a stack), wrong voxel metadata (micrometres read as a 4000 nm
pixel, a 3-value voxel size for a 2D image, no voxel size at all) and an entry without licence.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from PIL import Image

from em5m.cli import main
from em5m.curate import CurateConfig, SampleOptions, curate


def _entry(name: str, uri: str, extra: str = "", licence: str = "licence: MIT, ") -> str:
    return (
        f"  - {{id: {name}, uri: '{uri}', modality: TEM, species: mouse, {licence}"
        f"citation: test{extra}}}\n"
    )


def _micron_omezarr(path, data):
    """OME-Zarr whose axes say micrometer but whose scale was written in nm (4 -> 4000 nm)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("s0", data=data, chunks=(1, 256, 256))
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
                "datasets": [
                    {
                        "path": "s0",
                        "coordinateTransformations": [{"type": "scale", "scale": [40.0, 4.0, 4.0]}],
                    }
                ],
            }
        ],
    }
    return path


@pytest.fixture(scope="module")
def bad_run(emssl_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    isbi = emssl_data / "isbi2012" / "train" / "image"
    broken = tmp / "broken_stack"
    shutil.copytree(isbi, broken)
    victim = broken / "20.png"
    victim.write_bytes(victim.read_bytes()[:400])  # header intact, pixel data cut off
    garbage = tmp / "garbage.tif"
    garbage.write_bytes(b"\x00\x01not a tiff at all" * 100)
    plane = np.asarray(Image.open(isbi / "3.png"))
    _micron_omezarr(tmp / "microns.zarr", np.stack([plane] * 4))
    tifffile.imwrite(tmp / "plain.tif", np.stack([plane] * 3))  # no voxel size in the file
    tifffile.imwrite(tmp / "image2d.tif", plane)
    vox = ", voxel_size_nm: [50, 4, 4]"
    catalog = tmp / "catalog.yaml"
    catalog.write_text(
        "defaults: {tile_size: 224, pixel_sizes_nm: [8]}\ndatasets:\n"
        + _entry("good", str(isbi), vox)
        + _entry("missing_path", str(tmp / "no" / "such.zarr"), vox)
        + _entry(
            "refused",
            "https://127.0.0.1:9/data.zarr",
            vox + ", options: {retries: 1, backoff_s: 0, timeout_s: 2}",
        )
        + _entry("garbage", str(garbage), vox)
        + _entry("truncated_slice", str(broken), vox)
        + _entry("micron_scale", str(tmp / "microns.zarr"))
        + _entry("voxel_3_for_2d", str(tmp / "image2d.tif"), vox)
        + _entry("no_voxel", str(tmp / "plain.tif"))
        + _entry("no_licence", str(isbi), vox, licence="")
    )
    cfg = CurateConfig(sample=SampleOptions(unit_tiles=4))  # several units per dataset
    report = curate(catalog, tmp / "out", config=cfg, workers=2)
    return tmp, catalog, report


def _failures(report, name):
    return [f for f in report["failures"] if f["dataset"] == name]


def test_each_bad_input_gives_a_named_error(bad_run):
    _, _, report = bad_run
    expect = {
        "missing_path": ("SourceNotFoundError", "unreachable_source"),
        "refused": ("SourceUnavailableError", "unreachable_source"),
        "garbage": ("InvalidVolumeError", "corrupt_file"),
        "truncated_slice": ("InvalidVolumeError", "corrupt_file"),
        "micron_scale": ("VoxelMetadataError", "wrong_voxel_metadata"),
        "voxel_3_for_2d": ("VoxelMetadataError", "wrong_voxel_metadata"),
        "no_voxel": ("VoxelMetadataError", "wrong_voxel_metadata"),
        "no_licence": ("MissingLicenceError", "missing_licence"),
    }
    for name, (error, kind) in expect.items():
        fails = _failures(report, name)
        assert fails, f"{name}: no failure recorded"
        assert {(f["error"], f["kind"]) for f in fails} == {(error, kind)}, (name, fails)
        assert all(f["message"] for f in fails)
    assert "4000" in _failures(report, "micron_scale")[0]["message"]
    assert "20:21" in _failures(report, "truncated_slice")[0]["message"]  # slice 20
    assert _failures(report, "truncated_slice")[0]["unit"]  # a unit failed, not the dataset
    assert not report["complete"]


def test_the_rest_of_the_run_completes(bad_run):
    tmp, _, report = bad_run
    table = pq.read_table(tmp / "out" / "manifest.parquet")
    by_ds = table.group_by("dataset_id").aggregate([("key", "count")]).to_pylist()
    counts = {r["dataset_id"]: r["key_count"] for r in by_ds}
    assert counts["good"] == 30
    # The truncated stack lost only the unit holding slice 20; its other slices are
    # near-identical to the "good" ISBI tiles (same images) and removed as duplicates.
    d = report["datasets"]["truncated_slice"]
    assert d["status"] == "partial" and d["sampled"] >= 24
    assert d["deduplicated"] == d["sampled"]
    assert report["datasets"]["no_licence"]["status"] == "rejected"
    assert report["datasets"]["garbage"]["status"] == "failed"


def test_cli_prints_the_failures_and_strict_sets_the_exit_code(bad_run, capsys):
    tmp, catalog, _ = bad_run
    out = tmp / "out_cli"
    assert main(["curate", str(catalog), "--out", str(out), "--quiet", "--unit-tiles", "4"]) == 0
    text = capsys.readouterr().out
    assert "failure(s) (the rest of the run completed)" in text
    assert "[missing_licence] no_licence: MissingLicenceError" in text
    assert "[wrong_voxel_metadata]" in text and "[unreachable_source]" in text
    assert main(["curate", str(catalog), "--out", str(out), "--quiet", "--strict"]) == 1
