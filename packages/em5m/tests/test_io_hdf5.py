"""HDF5 datasets written with h5py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import dask
import h5py
import numpy as np
import pytest

from em5m import InvalidVolumeError, VolumeNotFoundError, open_volume

RNG = np.random.default_rng(3)


@pytest.fixture
def h5file(tmp_path):
    data = RNG.integers(0, 255, (8, 40, 50), dtype=np.uint8)
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("volumes/raw", data=data, chunks=(2, 20, 25), compression="gzip")
        ds.attrs["resolution"] = [40.0, 4.0, 4.0]  # CREMI: z, y, x in nm
        f.create_dataset("volumes/labels", data=np.zeros((8, 40, 50), np.uint64))
    return path, data


def test_dataset_in_uri_and_keyword(h5file):
    path, data = h5file
    by_uri = open_volume(f"{path}::/volumes/raw")
    by_kw = open_volume(path, dataset="volumes/raw")
    for vol in (by_uri, by_kw):
        assert vol.axes == ("z", "y", "x")
        assert vol.voxel_size == (40.0, 4.0, 4.0)
        assert vol.metadata["dataset"] == "/volumes/raw"
        assert vol.metadata["voxel_size_source"] == "attrs:resolution"
    np.testing.assert_array_equal(by_uri.compute(), data)
    assert by_uri.data.chunks[0][0] % 2 == 0  # dask blocks are whole HDF5 chunks


def test_several_datasets_need_a_name(h5file):
    path, _ = h5file
    with pytest.raises(InvalidVolumeError) as err:
        open_volume(path)
    assert "/volumes/raw" in str(err.value) and "/volumes/labels" in str(err.value)


def test_missing_dataset_lists_existing(h5file):
    path, _ = h5file
    with pytest.raises(VolumeNotFoundError) as err:
        open_volume(f"{path}::/volumes/rwa")
    msg = str(err.value)
    assert "vol.h5" in msg and "/volumes/rwa does not exist" in msg and "/volumes/raw" in msg
    with pytest.raises(VolumeNotFoundError, match="is a group"):
        open_volume(path, dataset="volumes")


def test_single_dataset_element_size_um(tmp_path):
    data = RNG.random((5, 12, 14)).astype(np.float32)
    path = tmp_path / "fiji.h5"
    with h5py.File(path, "w") as f:
        f["data"] = data
        f["data"].attrs["element_size_um"] = [0.05, 0.004, 0.004]
    vol = open_volume(path)
    assert vol.voxel_size == (50.0, 4.0, 4.0)
    np.testing.assert_array_equal(vol.compute(), data)


def test_no_attributes_means_unknown_voxel_size(tmp_path):
    path = tmp_path / "plain.hdf5"
    with h5py.File(path, "w") as f:
        f["stack"] = np.zeros((3, 4, 5), np.uint16)
    vol = open_volume(path)
    assert vol.voxel_size is None
    assert vol.metadata["levels"][0]["shape"] == (3, 4, 5)


def test_axes_attribute_reorders_to_canonical(tmp_path):
    data = RNG.integers(0, 255, (20, 10, 4), dtype=np.uint8)  # stored x, y, z
    path = tmp_path / "xyz.h5"
    with h5py.File(path, "w") as f:
        f["d"] = data
        f["d"].attrs["axes"] = "xyz"
    vol = open_volume(path)
    assert vol.axes == ("z", "y", "x")
    np.testing.assert_array_equal(vol.compute(), data.transpose(2, 1, 0))


def test_concurrent_block_reads_are_consistent(h5file):
    path, data = h5file
    vol = open_volume(f"{path}::/volumes/raw")
    with dask.config.set(scheduler="threads", num_workers=8):
        results = list(
            ThreadPoolExecutor(4).map(lambda _: vol.data.sum(axis=(1, 2)).compute(), range(6))
        )
    expected = data.sum(axis=(1, 2), dtype=np.uint64)
    for r in results:
        np.testing.assert_array_equal(r, expected)
