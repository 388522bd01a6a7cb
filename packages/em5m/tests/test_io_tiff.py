"""TIFF reading: files written with tifffile in the layouts EM software produces."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from em5m import InvalidVolumeError, open_volume

RNG = np.random.default_rng(0)


def stack(shape=(5, 48, 64), dtype=np.uint8) -> np.ndarray:
    return RNG.integers(0, 200, shape).astype(dtype)


@pytest.mark.parametrize(
    ("unit", "xres", "spacing", "expected"),
    [
        ("nm", 1 / 4.0, 40.0, (40.0, 4.0, 4.0)),
        ("micron", 1 / 0.0046, 0.05, (50.0, 4.6, 4.6)),
        ("um", 1 / 0.008, 0.03, (30.0, 8.0, 8.0)),
        ("\\u00B5m", 1 / 0.005, 0.005, (5.0, 5.0, 5.0)),  # as ImageJ writes it (ASCII)
    ],
)
def test_imagej_stack_voxel_size_units(tmp_path, unit, xres, spacing, expected):
    data = stack()
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(xres, xres),
        metadata={"axes": "ZYX", "spacing": spacing, "unit": unit},
    )
    vol = open_volume(path)
    assert vol.axes == ("z", "y", "x")
    assert vol.voxel_size == pytest.approx(expected, rel=1e-6)
    assert vol.metadata["tiff_flavor"] == "imagej"
    assert vol.metadata["voxel_size_source"] == "imagej"
    np.testing.assert_array_equal(vol.compute(), data)


def test_imagej_anisotropic_xy_and_missing_spacing(tmp_path):
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(
        path,
        stack(),
        imagej=True,
        resolution=(1 / 4.0, 1 / 5.0),
        metadata={"axes": "ZYX", "unit": "nm"},
    )
    vol = open_volume(path)
    # x and y are known but z is not: nothing is guessed.
    assert vol.voxel_size is None
    assert vol.metadata["voxel_size_partial"] == {"x": 4.0, "y": 5.0}


def test_imagej_hyperstack_tzcyx_drops_singleton_time(tmp_path):
    data = stack((1, 3, 2, 32, 40), np.uint16)  # T Z C Y X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(0.25, 0.25),
        metadata={"axes": "TZCYX", "spacing": 30, "unit": "nm"},
    )
    vol = open_volume(path)
    assert vol.axes == ("c", "z", "y", "x")
    assert vol.shape == (2, 3, 32, 40)
    assert vol.voxel_size == (30.0, 4.0, 4.0)
    np.testing.assert_array_equal(vol.compute(), data[0].transpose(1, 0, 2, 3))


def test_ome_tiff_physical_sizes_with_units(tmp_path):
    data = stack()
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.004,
            "PhysicalSizeY": 0.005,
            "PhysicalSizeZ": 400,
            "PhysicalSizeZUnit": "\u00c5",
        },
    )
    vol = open_volume(path)
    assert vol.voxel_size == (40.0, 5.0, 4.0)  # um default for x/y, Angstrom for z
    assert vol.metadata["tiff_flavor"] == "ome"
    np.testing.assert_array_equal(vol.compute(), data)


def test_bigtiff_multipage_plain(tmp_path):
    data = stack((7, 33, 45), np.uint16)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, bigtiff=True)
    vol = open_volume(path)
    assert vol.metadata["bigtiff"] is True
    assert vol.axes == ("z", "y", "x")  # pages of a stack are z
    assert vol.voxel_size is None
    np.testing.assert_array_equal(vol.compute(), data)
    # One storage chunk (page) per z: the dask blocks are aligned to pages.
    assert vol.metadata["storage_chunks"] == (1, 33, 45)


def test_pages_appended_one_by_one_and_tiled_compressed(tmp_path):
    data = stack((4, 300, 260))
    path = tmp_path / "pages.tif"
    for page in data:
        tifffile.imwrite(path, page, append=True, tile=(128, 128), compression="zlib")
    vol = open_volume(path)
    assert vol.shape == (4, 300, 260)
    np.testing.assert_array_equal(vol.data[2, 100:250, 7:200].compute(), data[2, 100:250, 7:200])


def test_single_page_with_centimetre_resolution(tmp_path):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(
        path, stack((40, 50)), resolution=(1e7 / 5, 1e7 / 5), resolutionunit="CENTIMETER"
    )
    vol = open_volume(path)
    assert vol.axes == ("y", "x")
    assert vol.voxel_size == (5.0, 5.0)


def test_inch_resolution_is_not_a_voxel_size(tmp_path):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, stack((40, 50)), resolution=(72, 72), resolutionunit="INCH")
    assert open_volume(path).voxel_size is None


def test_rgb_page_becomes_channel_axis(tmp_path):
    data = stack((20, 30, 3))
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    vol = open_volume(path)
    assert vol.axes == ("c", "y", "x")
    np.testing.assert_array_equal(vol.compute(), data.transpose(2, 0, 1))


def test_4d_without_axes_needs_axes_argument(tmp_path):
    data = stack((2, 5, 16, 16))
    path = tmp_path / "four.tif"
    tifffile.imwrite(path, data)  # shaped TIFF: axes unknown (QQYX)
    with pytest.raises(InvalidVolumeError) as err:
        open_volume(path)
    assert "four.tif" in str(err.value) and "axes=" in str(err.value)
    vol = open_volume(path, axes="czyx")
    assert vol.axes == ("c", "z", "y", "x")
    np.testing.assert_array_equal(vol.compute(), data)


def test_pyramid_level(tmp_path):
    data = stack((512, 512))
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            data,
            subifds=1,
            tile=(128, 128),
            resolution=(1e7 / 4, 1e7 / 4),
            resolutionunit="CENTIMETER",
        )
        tif.write(data[::2, ::2], subfiletype=1, tile=(128, 128))
    v1 = open_volume(path, level=1)
    assert v1.shape == (256, 256)
    assert [lv["shape"] for lv in v1.metadata["levels"]] == [(512, 512), (256, 256)]
    np.testing.assert_array_equal(v1.compute(), data[::2, ::2])
    with pytest.raises(InvalidVolumeError, match="level 2 does not exist"):
        open_volume(path, level=2)


def test_float_tiff_is_checked_lazily(tmp_path):
    data = stack((3, 16, 16), np.float32)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    vol = open_volume(path)
    assert vol.axes == ("z", "y", "x")
    assert vol.metadata["check_finite"] is True
    np.testing.assert_array_equal(vol.compute(), data)


def test_real_vnc_section_with_integer_compression_code_opens(emssl_data):
    # tifffile reports this file's compression as a plain int; opening it once raised deep inside.
    vol = open_volume(emssl_data / "drosophila_vnc_sstem/stack1/raw/00.tif")
    assert vol.shape == (1024, 1024) and vol.metadata["compression"] == "NONE"
    assert vol.data[:8, :8].compute().dtype == np.uint8
