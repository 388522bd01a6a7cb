"""MRC files written with mrcfile."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from em5m import open_volume

RNG = np.random.default_rng(2)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float32])
def test_mrc_dtypes_and_voxel_size(tmp_path, dtype):
    data = RNG.integers(-100, 100, (4, 20, 30)).astype(dtype)
    if dtype == np.uint16:
        data = np.abs(data).astype(dtype)
    path = tmp_path / "t.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = (40.0, 42.0, 450.0)  # x, y, z in Angstrom
    vol = open_volume(path)
    assert vol.axes == ("z", "y", "x")
    assert vol.dtype == dtype
    assert vol.voxel_size == (45.0, 4.2, 4.0)
    assert vol.metadata["voxel_size_source"].startswith("mrc-header")
    np.testing.assert_array_equal(vol.compute(), data)


def test_mode0_is_signed(tmp_path):
    data = np.array([[[-128, -1, 0, 127]]], np.int8)
    path = tmp_path / "b.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
    vol = open_volume(path)
    assert vol.metadata["mrc_mode"] == 0
    np.testing.assert_array_equal(vol.compute(), data)


def test_tomogram_extension_and_missing_voxel_size(tmp_path):
    data = RNG.random((3, 8, 8)).astype(np.float32)
    path = tmp_path / "tomo.rec"
    with mrcfile.new(path) as m:
        m.set_data(data)  # cell left at 0: voxel size not recorded
    vol = open_volume(path)
    assert vol.voxel_size is None
    np.testing.assert_array_equal(vol.data[1].compute(), data[1])


def test_single_image_is_2d(tmp_path):
    data = RNG.integers(0, 1000, (16, 24)).astype(np.int16)
    path = tmp_path / "img.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 10.0
    vol = open_volume(path)
    assert vol.axes == ("y", "x")
    assert vol.voxel_size == (1.0, 1.0)
    np.testing.assert_array_equal(vol.compute(), data)


def test_blocks_are_slices_of_the_memmap(tmp_path):
    data = RNG.integers(0, 1000, (6, 16, 24)).astype(np.int16)
    path = tmp_path / "mm.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
    vol = open_volume(path)
    block = vol.data.blocks[0].compute()
    assert not isinstance(block, np.memmap)  # a block owns its memory, the file may change
    np.testing.assert_array_equal(block, data[: block.shape[0]])
