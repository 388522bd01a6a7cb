"""Directories of 2D slices (PNG written with PIL, TIFF written with tifffile)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from em5m import InvalidVolumeError, UnsupportedFormatError, open_volume

RNG = np.random.default_rng(1)


def write_pngs(folder, planes, names=None):
    folder.mkdir(exist_ok=True)
    for i, plane in enumerate(planes):
        Image.fromarray(plane).save(folder / (names[i] if names else f"{i}.png"))
    return folder


def test_png_slices_natural_order_one_chunk_per_slice(tmp_path):
    planes = RNG.integers(0, 255, (12, 30, 40), dtype=np.uint8)
    # Written in a scrambled order; names sort naturally as 0, 1, 2, ..., 11.
    folder = write_pngs(tmp_path / "stack", planes)
    (folder / "README.txt").write_text("not an image, ignored")
    vol = open_volume(folder)
    assert vol.axes == ("z", "y", "x")
    assert vol.shape == (12, 30, 40)
    assert vol.voxel_size is None
    assert vol.data.chunks[0] == (1,) * 12
    assert vol.metadata["files"][:3] == ["0.png", "1.png", "2.png"]
    assert vol.metadata["files"][-1] == "11.png"
    np.testing.assert_array_equal(vol.compute(), planes)


def test_natural_sort_with_name_prefix(tmp_path):
    planes = RNG.integers(0, 255, (3, 8, 9), dtype=np.uint8)
    folder = write_pngs(tmp_path / "s", planes, ["im10.png", "im2.png", "im9.png"][::-1])
    # names im9, im2, im10 were given to planes 0, 1, 2; natural order is im2, im9, im10
    vol = open_volume(folder)
    np.testing.assert_array_equal(vol.compute(), planes[[1, 0, 2]])


def test_16bit_png_slices(tmp_path):
    planes = RNG.integers(0, 60000, (3, 10, 12)).astype(np.uint16)
    vol = open_volume(write_pngs(tmp_path / "s16", planes))
    assert vol.dtype == np.uint16
    np.testing.assert_array_equal(vol.compute(), planes)


def test_tiff_slices(tmp_path):
    planes = RNG.random((4, 10, 12)).astype(np.float32)
    folder = tmp_path / "tifs"
    folder.mkdir()
    for i, p in enumerate(planes):
        tifffile.imwrite(folder / f"z{i:03d}.tif", p)
    vol = open_volume(folder)
    assert vol.dtype == np.float32
    np.testing.assert_array_equal(vol.data[2:4].compute(), planes[2:4])


def test_rgb_slices_have_channel_axis(tmp_path):
    planes = RNG.integers(0, 255, (2, 10, 12, 3), dtype=np.uint8)
    vol = open_volume(write_pngs(tmp_path / "rgb", planes))
    assert vol.axes == ("c", "z", "y", "x")
    np.testing.assert_array_equal(vol.compute(), planes.transpose(3, 0, 1, 2))


def test_single_png_is_2d_image(tmp_path):
    plane = RNG.integers(0, 255, (10, 12), dtype=np.uint8)
    Image.fromarray(plane).save(tmp_path / "one.png")
    vol = open_volume(tmp_path / "one.png")
    assert vol.axes == ("y", "x")
    np.testing.assert_array_equal(vol.compute(), plane)


def test_slice_with_other_shape_is_named(tmp_path):
    planes = list(RNG.integers(0, 255, (3, 10, 12), dtype=np.uint8))
    planes[2] = planes[2][:, :11]
    folder = write_pngs(tmp_path / "bad", planes)
    with pytest.raises(InvalidVolumeError) as err:
        open_volume(folder)
    msg = str(err.value)
    assert "2.png" in msg and "(10, 11)" in msg and "must agree" in msg


def test_slice_with_other_dtype_is_named(tmp_path):
    folder = write_pngs(tmp_path / "mixed", [np.zeros((5, 5), np.uint8)] * 2)
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(folder / "2.png")
    with pytest.raises(InvalidVolumeError, match=r"2\.png.*uint16"):
        open_volume(folder)


def test_mixed_formats_are_refused(tmp_path):
    folder = write_pngs(tmp_path / "mix", [np.zeros((5, 5), np.uint8)] * 2)
    tifffile.imwrite(folder / "2.tif", np.zeros((5, 5), np.uint8))
    with pytest.raises(InvalidVolumeError, match="mixes slice formats"):
        open_volume(folder)


def test_misnamed_slice_is_reported(tmp_path):
    folder = write_pngs(tmp_path / "misnamed", [np.zeros((5, 5), np.uint8)] * 2)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(folder / "2.jpg.png", format="JPEG")
    with pytest.raises(UnsupportedFormatError) as err:
        open_volume(folder)
    assert "2.jpg.png" in str(err.value) and "JPEG" in str(err.value)


def test_empty_directory_is_not_a_volume(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedFormatError, match="not a recognised volume"):
        open_volume(tmp_path / "empty")
