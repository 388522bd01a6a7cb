"""Bad inputs give one clear EMDataError naming the file and the problem."""

from __future__ import annotations

import dask
import h5py
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from em5m import (
    EMDataError,
    InvalidVolumeError,
    UnsupportedFormatError,
    VolumeNotFoundError,
    open_volume,
    save_volume,
)


def test_missing_file(tmp_path):
    with pytest.raises(VolumeNotFoundError) as err:
        open_volume(tmp_path / "nothere.tif")
    assert "nothere.tif" in str(err.value) and "no such file" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)  # also catchable the standard way


def test_truncated_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.ones((4, 64, 64), np.uint16), photometric="minisblack")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InvalidVolumeError) as err:
        open_volume(path)
    assert "cut.tif" in str(err.value) and "truncated" in str(err.value)


def test_truncated_compressed_tiled_tiff(tmp_path):
    path = tmp_path / "cut2.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(
        path,
        rng.integers(0, 255, (3, 256, 256), dtype=np.uint8),
        tile=(64, 64),
        compression="zlib",
        photometric="minisblack",
    )
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * 0.8)])
    with pytest.raises(InvalidVolumeError, match=r"cut2\.tif.*truncated"):
        open_volume(path)


def test_png_renamed_tif(tmp_path):
    path = tmp_path / "slice.tif"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, format="PNG")
    with pytest.raises(UnsupportedFormatError) as err:
        open_volume(path)
    msg = str(err.value)
    assert "slice.tif" in msg and "TIFF" in msg and "looks like a PNG image" in msg


def test_tiff_renamed_mrc(tmp_path):
    path = tmp_path / "tomo.mrc"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(UnsupportedFormatError) as err:
        open_volume(path)
    assert "tomo.mrc" in str(err.value) and "looks like a TIFF image" in str(err.value)


def test_random_bytes_named_mrc(tmp_path):
    path = tmp_path / "junk.mrc"
    path.write_bytes(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(EMDataError) as err:
        open_volume(path)
    assert "junk.mrc" in str(err.value) and "MRC" in str(err.value)


def test_text_named_h5(tmp_path):
    path = tmp_path / "data.h5"
    path.write_text('{"not": "hdf5"}')
    with pytest.raises(UnsupportedFormatError, match=r"data\.h5.*HDF5.*JSON"):
        open_volume(path)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "notes.xyz"
    path.write_text("hello")
    with pytest.raises(UnsupportedFormatError, match=r"notes\.xyz.*unsupported file"):
        open_volume(path)


def test_empty_array(tmp_path):
    z = zarr.create_array(
        tmp_path / "empty.zarr", shape=(0, 64, 64), chunks=(1, 64, 64), dtype="uint8"
    )
    assert z.size == 0
    with pytest.raises(InvalidVolumeError) as err:
        open_volume(tmp_path / "empty.zarr")
    assert "empty.zarr" in str(err.value) and "empty" in str(err.value)


def test_empty_hdf5_dataset(tmp_path):
    path = tmp_path / "e.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("stack", shape=(5, 0, 3), dtype="f4")
    with pytest.raises(InvalidVolumeError, match=r"e\.h5.*zero length"):
        open_volume(path)


def test_nan_in_sample_raises_at_open(tmp_path):
    data = np.ones((4, 32, 32), np.float32)
    data[2, 16, 16] = np.nan  # the centre: inside the open-time sample
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    with pytest.raises(InvalidVolumeError) as err:
        open_volume(path)
    assert "nan.tif" in str(err.value) and "NaN/inf" in str(err.value)
    # Opting out returns the data untouched.
    vol = open_volume(path, check_finite=False)
    assert np.isnan(vol.compute()[2, 16, 16])


def test_inf_outside_sample_raises_on_compute_of_that_block(tmp_path):
    data = np.zeros((8, 64, 64), np.float32)
    data[0, 1, 2] = np.inf  # far from the centre sample
    z = zarr.create_array(
        tmp_path / "inf.zarr", shape=data.shape, chunks=(4, 64, 64), dtype="float32"
    )
    z[:] = data
    with dask.config.set({"array.chunk-size": "64KiB"}):
        vol = open_volume(tmp_path / "inf.zarr")  # the sample is clean: opens fine
    assert vol.data.numblocks[0] == 2
    np.testing.assert_array_equal(vol.data[4:].compute(), data[4:])  # clean block computes
    with pytest.raises(InvalidVolumeError) as err:
        vol.data[:4].compute()
    msg = str(err.value)
    assert "inf.zarr" in msg and "NaN/inf" in msg and "z=0, y=1, x=2" in msg


def test_unknown_axes_in_5d_tiff(tmp_path):
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, np.zeros((2, 2, 2, 8, 8), np.uint8))
    with pytest.raises(InvalidVolumeError) as err:
        open_volume(path)
    assert "five.tif" in str(err.value) and "axes='czyx'" in str(err.value)


def test_wrong_number_of_axes(tmp_path):
    path = tmp_path / "three.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(InvalidVolumeError, match=r"three\.tif.*names 4 axes"):
        open_volume(path, axes="czyx")


def test_time_series_is_refused(tmp_path):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 8, 8), np.uint8), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(InvalidVolumeError, match=r"movie\.tif.*3 time points"):
        open_volume(path)


def test_hdf5_missing_path_lists_datasets(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.zeros((2, 2, 2), np.uint8)
        f["seg/cells"] = np.zeros((2, 2, 2), np.uint32)
    with pytest.raises(VolumeNotFoundError) as err:
        open_volume(path, dataset="/labels")
    msg = str(err.value)
    assert "x.h5" in msg and "/labels does not exist" in msg
    assert "/raw" in msg and "/seg/cells" in msg


def test_remote_url_is_refused_clearly():
    with pytest.raises(UnsupportedFormatError, match="remote URLs"):
        open_volume("s3://bucket/volume.zarr")


def test_interrupted_output_is_refused(tmp_path):
    out = save_volume(np.zeros((2, 8, 8), np.uint8), tmp_path / "ok.zarr")
    leftover = tmp_path / "ok.zarr.partial-0123abcd"
    (tmp_path / "ok.zarr").rename(leftover)
    with pytest.raises(InvalidVolumeError, match="interrupted save_volume"):
        open_volume(leftover)
    assert out.endswith("ok.zarr")


def test_errors_are_short(tmp_path):
    """A library failure surfaces as one EMDataError, not a chain of library tracebacks."""
    path = tmp_path / "cut3.tif"
    tifffile.imwrite(path, np.ones((2, 64, 64), np.uint8), compression="zlib")
    raw = bytearray(path.read_bytes())
    start = tifffile.TiffFile(path).pages[1].dataoffsets[0]
    raw[start : start + 20] = b"\x00" * 20  # corrupt the second page's zlib stream
    path.write_bytes(bytes(raw))
    with dask.config.set({"array.chunk-size": "4KiB"}):  # one dask block per page
        vol = open_volume(path)  # header fine; the damage is in page 2
    vol.data[0].compute()
    with pytest.raises(InvalidVolumeError) as err:
        vol.data[1].compute()
    assert "cut3.tif" in str(err.value) and "could not read region" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
