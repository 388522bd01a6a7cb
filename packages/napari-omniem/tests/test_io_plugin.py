"""The plugin's reader, writers and sample data, through a real napari viewer under Xvfb."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import em5m
from napari_omniem._reader import get_reader


@pytest.fixture
def em_stack(tmp_path):
    """A real ImageJ TIFF with voxel size 40 x 4 x 4 nm."""
    data = (np.arange(4 * 64 * 64) % 251).astype(np.uint8).reshape(4, 64, 64)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.004, 1 / 0.004),
        metadata={"spacing": 0.04, "unit": "um", "axes": "ZYX"},
    )
    return path, data


def test_reader_is_offered_only_for_em_files(em_stack, tmp_path):
    path, _ = em_stack
    assert callable(get_reader(str(path)))
    (tmp_path / "notes.txt").write_text("not an image")
    assert get_reader(str(tmp_path / "notes.txt")) is None


def test_viewer_opens_tiff_at_physical_scale(make_napari_viewer, em_stack):
    path, data = em_stack
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-omniem")
    assert len(layers) == 1
    layer = layers[0]
    np.testing.assert_allclose(layer.scale, (40.0, 4.0, 4.0))
    np.testing.assert_array_equal(np.asarray(layer.data), data)


def test_sample_data_and_writer_round_trip(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-omniem", "phantom-2d")
    names = [layer.name for layer in viewer.layers]
    assert names[0] == "phantom" and "mitochondria (truth)" in names
    image = viewer.layers["phantom"]
    assert image.data.shape == (512, 512) and image.data.std() > 5  # real structure, not blank
    out = tmp_path / "phantom.ome.zarr"
    written = image.save(str(out), plugin="napari-omniem")
    assert written == [str(out)]
    back = em5m.open_volume(str(out))
    np.testing.assert_array_equal(back.compute(), np.asarray(image.data))
    assert back.voxel_size == (5.0, 5.0)
