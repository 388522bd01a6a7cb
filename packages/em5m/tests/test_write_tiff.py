"""save_volume -> TIFF: ImageJ hyperstacks, OME-TIFF for other dtypes, BigTIFF, size bound."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile

import em5m.write
from em5m import Volume, open_volume, save_volume

RNG = np.random.default_rng(8)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_imagej_round_trip(tmp_path, dtype):
    data = (RNG.random((5, 40, 30)) * 200).astype(dtype)
    vol = Volume.from_array(data, voxel_size=(45.0, 4.6, 4.6))
    out = save_volume(vol, tmp_path / "s.tif")
    with tifffile.TiffFile(out) as tif:  # what Fiji reads: ImageJ description + resolution
        assert tif.is_imagej
        ij = tif.imagej_metadata
        assert ij["unit"] == "nm" and ij["spacing"] == 45.0 and ij["slices"] == 5
    back = open_volume(out)
    assert back.axes == ("z", "y", "x") and back.voxel_size == (45.0, 4.6, 4.6)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back.compute(), data)


def test_imagej_czyx_hyperstack(tmp_path):
    data = RNG.integers(0, 4000, (2, 3, 16, 20)).astype(np.uint16)
    out = save_volume(data, tmp_path / "c.tif", axes="czyx", voxel_size=(30, 5, 5))
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZCYX"  # ImageJ page order
    back = open_volume(out)
    assert back.axes == ("c", "z", "y", "x") and back.voxel_size == (30.0, 5.0, 5.0)
    np.testing.assert_array_equal(back.compute(), data)


def test_2d_image_and_unknown_voxel_size(tmp_path):
    data = RNG.integers(0, 255, (33, 47), dtype=np.uint8)
    back = open_volume(save_volume(data, tmp_path / "img.tiff"))
    assert back.axes == ("y", "x") and back.voxel_size is None
    np.testing.assert_array_equal(back.compute(), data)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint32, np.float64])
def test_other_dtypes_are_written_as_ome_tiff(tmp_path, dtype):
    data = RNG.integers(-50, 100, (3, 12, 14)).astype(dtype)
    if np.issubdtype(dtype, np.unsignedinteger):
        data = np.abs(data).astype(dtype)
    out = save_volume(data, tmp_path / "o.tif", voxel_size=(40, 4, 4))
    back = open_volume(out)
    assert back.metadata["tiff_flavor"] == "ome"
    assert back.dtype == dtype and back.voxel_size == (40.0, 4.0, 4.0)
    np.testing.assert_array_equal(back.compute(), data)


def test_bigtiff_above_threshold(tmp_path, monkeypatch):
    # Lower the 2 GB switch so the BigTIFF path runs on a small array.
    monkeypatch.setattr(em5m.write, "BIGTIFF_BYTES", 10_000)
    data = RNG.integers(0, 255, (4, 64, 64), dtype=np.uint8)
    out = save_volume(data, tmp_path / "b.tif", voxel_size=(10, 2, 2))
    back = open_volume(out)
    assert back.metadata["bigtiff"] is True and back.metadata["tiff_flavor"] == "ome"
    assert back.voxel_size == (10.0, 2.0, 2.0)
    np.testing.assert_array_equal(back.compute(), data)


def test_too_big_for_tiff_is_refused(tmp_path):
    huge = da.zeros((300, 8192, 8192), dtype=np.uint8)  # 20 GB, lazy
    target = tmp_path / "huge.tif"
    with pytest.raises(ValueError) as err:
        save_volume(huge, target)
    msg = str(err.value)
    assert "huge.tif" in msg and "OME-Zarr" in msg and "limited to" in msg
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_written_slab_by_slab_from_dask(tmp_path, monkeypatch):
    """Pages are computed a slab at a time (here one page), not the whole volume at once."""
    monkeypatch.setattr(em5m.write, "TIFF_SLAB_BYTES", 1)
    computed = []

    def record(block, block_info=None):
        computed.append(block_info[None]["array-location"][0])
        return block

    data = RNG.integers(0, 255, (6, 8, 8), dtype=np.uint8)
    lazy = da.from_array(data, chunks=(1, 8, 8)).map_blocks(record, dtype=np.uint8)
    out = save_volume(lazy, tmp_path / "slab.tif")
    np.testing.assert_array_equal(open_volume(out).compute(), data)
    assert sorted(computed) == [(z, z + 1) for z in range(6)]  # each page computed once


def test_unknown_suffix_needs_format(tmp_path):
    with pytest.raises(ValueError, match="format="):
        save_volume(np.zeros((4, 4), np.uint8), tmp_path / "x.dat")
    out = save_volume(np.zeros((4, 4), np.uint8), tmp_path / "x.dat", format="tiff")
    assert open_volume(f"tiff://{out}").shape == (4, 4)


def test_dtype_without_ome_pixel_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"i64\.tif.*int64.*OME-Zarr"):
        save_volume(np.zeros((2, 4, 4), np.int64), tmp_path / "i64.tif")
    assert list(tmp_path.iterdir()) == []
