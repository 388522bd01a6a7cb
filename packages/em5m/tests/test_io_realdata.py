"""Real EM files from EMSSL_DATA (see /work/shared/data/README.md)."""

from __future__ import annotations

import numpy as np

from em5m import open_volume


def test_drosophila_vnc_tif_slices(emssl_data):
    vol = open_volume(emssl_data / "drosophila_vnc_sstem" / "stack1" / "raw")
    assert vol.metadata["format"] == "slices" and vol.metadata["slice_format"] == "tiff"
    assert vol.axes == ("z", "y", "x")
    assert vol.shape == (20, 1024, 1024) and vol.dtype == np.uint8
    assert vol.data.numblocks == (20, 1, 1)
    plane = vol.data[7].compute()
    assert plane.std() > 5  # real image content, not a blank page


def test_gala_fibsem_hdf5_stack(emssl_data):
    path = emssl_data / "gala_fibsem" / "train-image.h5"
    vol = open_volume(f"{path}::/stack")
    assert vol.shape == (50, 100, 200) and vol.dtype == np.uint8
    assert vol.voxel_size is None  # the file does not say
    same = open_volume(path)  # the only dataset: no path needed
    np.testing.assert_array_equal(same.data[10].compute(), vol.data[10].compute())


def test_gala_png_slices_match_hdf5(emssl_data):
    h5 = open_volume(emssl_data / "gala_fibsem" / "train-image.h5", dataset="stack")
    png = open_volume(emssl_data / "gala_fibsem" / "train-image-png")
    assert png.shape == h5.shape
    np.testing.assert_array_equal(png.data[3].compute(), h5.data[3].compute())


def test_lucchi_png_dir(emssl_data):
    vol = open_volume(emssl_data / "lucchi_pp" / "train" / "images")
    assert vol.shape == (165, 768, 1024) and vol.dtype == np.uint8
    assert vol.metadata["files"][0] == "0000.png"


def test_isbi_natural_order(emssl_data):
    vol = open_volume(emssl_data / "isbi2012" / "train" / "image")
    assert vol.shape == (30, 512, 512)
    assert vol.metadata["files"][:3] == ["0.png", "1.png", "2.png"]
    assert vol.metadata["files"][-1] == "29.png"


def test_omniem_3d_tif(emssl_data):
    vol = open_volume(emssl_data / "omniem_examples" / "3d_AxonEM-H-0-0-0_0_0_0.tif")
    assert vol.axes == ("z", "y", "x") and vol.shape == (16, 256, 256)
    assert vol.voxel_size is None  # resolution tags are 1/1 with no unit
