"""omniem.pairs: evaluation inputs from image directories, TIFF stacks and (OME-)Zarr files."""

from __future__ import annotations

import doctest
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from omniem import pairs
from omniem.pairs import PairsError, read_images, read_pairs


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _stack_tif(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, imagej=True, metadata={"axes": "ZYX"})


def _ome_zarr_v04(path: Path, array: np.ndarray) -> None:
    """A one-level OME-Zarr 0.4 image (Zarr v2) with z, y, x axes in nanometres."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "em",
            "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [{"type": "scale", "scale": [40.0, 4.0, 4.0]}],
                }
            ],
        }
    ]
    arr = root.create_array("0", shape=array.shape, dtype=array.dtype, chunks=(1, *array.shape[1:]))
    arr[:] = array


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_directories_pair_in_natural_order_and_keep_dtypes(tmp_path, rng):
    order = [1, 2, 10, 11]  # written out of order; lexical order would put 10 before 2
    imgs, labs = {}, {}
    (tmp_path / "lab").mkdir()
    for k in (10, 2, 11, 1):
        imgs[k] = rng.integers(0, 256, (20, 30), dtype=np.uint8)
        labs[k] = rng.integers(0, 3, (20, 30)).astype(np.uint16) * 1000
        _png(tmp_path / "img" / f"{k}.png", imgs[k])
        tifffile.imwrite(tmp_path / "lab" / f"s{k}.tif", labs[k])
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    (tmp_path / "img" / ".hidden.png").write_bytes(b"junk")

    got = read_pairs(tmp_path / "img", tmp_path / "lab")

    assert [name for _i, _l, name in got] == [f"{k}.png" for k in order]
    for (img, lab, _name), k in zip(got, order, strict=True):
        assert img.dtype == np.uint8 and lab.dtype == np.uint16  # labels as stored
        np.testing.assert_array_equal(img, imgs[k])
        np.testing.assert_array_equal(lab, labs[k])
    assert [a.shape for a in read_images(str(tmp_path / "img"))] == [(20, 30)] * 4


def test_directory_images_may_differ_in_size(tmp_path):
    for k, shape in enumerate([(16, 16), (24, 40)]):
        _png(tmp_path / "img" / f"{k}.png", np.full(shape, k, np.uint8))
        _png(tmp_path / "lab" / f"{k}.png", np.full(shape, 255, np.uint8))
    got = read_pairs(tmp_path / "img", tmp_path / "lab")
    assert [(i.shape, lab.shape) for i, lab, _ in got] == [((16, 16),) * 2, ((24, 40),) * 2]


def test_tiff_stack_images_with_zarr_v3_labels(tmp_path, rng):
    vol = rng.integers(0, 65535, (5, 12, 14), dtype=np.uint16)
    lab = rng.integers(0, 4, (5, 12, 14), dtype=np.int32)
    _stack_tif(tmp_path / "stack.tif", vol)
    z = zarr.create_array(str(tmp_path / "lab.zarr"), shape=lab.shape, dtype=lab.dtype)
    z[:] = lab

    got = read_pairs(tmp_path / "stack.tif", tmp_path / "lab.zarr")

    assert [name for *_x, name in got] == [f"stack.tif[z={k}]" for k in range(5)]
    for k, (img, label, _name) in enumerate(got):
        np.testing.assert_array_equal(img, vol[k])
        np.testing.assert_array_equal(label, lab[k])
        assert label.dtype == np.int32


def test_ome_zarr_3d_and_plain_zarr_v2_2d(tmp_path, rng):
    vol = rng.integers(0, 256, (3, 10, 11), dtype=np.uint8)
    _ome_zarr_v04(tmp_path / "img.ome.zarr", vol)
    slices = read_images(tmp_path / "img.ome.zarr")
    assert len(slices) == 3
    for k in range(3):
        np.testing.assert_array_equal(slices[k], vol[k])

    flat = rng.integers(0, 256, (10, 11), dtype=np.uint8)
    z = zarr.open_array(
        str(tmp_path / "one.zarr"), mode="w", shape=flat.shape, dtype="u1", zarr_format=2
    )
    z[:] = flat
    (one,) = read_images(tmp_path / "one.zarr")
    np.testing.assert_array_equal(one, flat)


def test_hdf5_dataset_uri(tmp_path, rng):
    vol = rng.integers(0, 256, (4, 9, 8), dtype=np.uint8)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = vol
    got = read_images(f"{tmp_path / 'v.h5'}::/raw")
    assert len(got) == 4
    np.testing.assert_array_equal(np.stack(got), vol)


def test_big_endian_tiff_comes_back_native(tmp_path):
    vol = np.arange(2 * 6 * 7, dtype=">u2").reshape(2, 6, 7) * 300
    _stack_tif(tmp_path / "be.tif", vol.astype("<u2"))  # ImageJ writes little-endian ...
    tifffile.imwrite(tmp_path / "be2.tif", vol, byteorder=">")  # ... so also a big-endian file
    for name in ("be.tif", "be2.tif"):
        imgs = read_images(tmp_path / name)
        assert all(a.dtype == np.uint16 and a.dtype.isnative for a in imgs)
        np.testing.assert_array_equal(np.stack(imgs), vol.astype(np.uint16))


def test_grey_rgb_png_is_grey_and_colour_is_refused(tmp_path, rng):
    grey = rng.integers(0, 256, (8, 9), dtype=np.uint8)
    _png(tmp_path / "g" / "a.png", np.stack([grey] * 3, axis=-1))
    (img,) = read_images(tmp_path / "g")
    np.testing.assert_array_equal(img, grey)

    colour = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    _png(tmp_path / "c" / "a.png", colour)
    with pytest.raises(PairsError, match=r"a\.png: has 3 channels"):
        read_images(tmp_path / "c")


def test_count_mismatch_names_both_paths_and_counts(tmp_path):
    for k in range(3):
        _png(tmp_path / "img" / f"{k}.png", np.zeros((8, 8), np.uint8))
    _stack_tif(tmp_path / "lab.tif", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(PairsError) as err:
        read_pairs(tmp_path / "img", tmp_path / "lab.tif")
    msg = str(err.value)
    assert str(tmp_path / "img") in msg and str(tmp_path / "lab.tif") in msg
    assert "3 image(s)" in msg and "give 2" in msg
    assert isinstance(err.value, ValueError)


def test_shape_mismatch_names_both_files_and_shapes(tmp_path):
    for k in range(2):
        _png(tmp_path / "img" / f"{k}.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "lab" / "0.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "lab" / "1.png", np.zeros((8, 10), np.uint8))
    with pytest.raises(PairsError) as err:
        read_pairs(tmp_path / "img", tmp_path / "lab")
    msg = str(err.value)
    assert str(tmp_path / "img" / "1.png") in msg and str(tmp_path / "lab" / "1.png") in msg
    assert "(8, 8)" in msg and "(8, 10)" in msg

    _stack_tif(tmp_path / "s.tif", np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(PairsError, match=r"s\.tif\[z=0\] has shape \(8, 9\)"):
        read_pairs(tmp_path / "s.tif", tmp_path / "lab")


def test_empty_unknown_and_unreadable_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PairsError, match="empty directory"):
        read_images(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    with pytest.raises(PairsError, match="no image files"):
        read_images(tmp_path / "docs")
    with pytest.raises(PairsError, match="no such file or directory") as err:
        read_pairs(tmp_path / "missing", tmp_path / "docs")
    assert str(tmp_path / "missing") in str(err.value) and "images" in str(err.value)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    _png(tmp_path / "ok" / "0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(PairsError, match=r"labels .*bad\.tif"):
        read_pairs(tmp_path / "ok", tmp_path / "bad.tif")
    with pytest.raises(PairsError, match=r"a\.txt"):
        read_images(tmp_path / "docs" / "a.txt")


def test_directory_holding_a_stack_is_refused(tmp_path):
    _png(tmp_path / "d" / "0.png", np.zeros((8, 8), np.uint8))
    _stack_tif(tmp_path / "d" / "1.tif", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(PairsError, match=r"1\.tif: holds 4 slices"):
        read_images(tmp_path / "d")


def test_real_isbi2012_directories(emssl_data):
    """The real ISBI 2012 train folders pair 30 slices in numeric order, matching em5m.datasets."""
    from em5m import datasets

    root = emssl_data / "isbi2012" / "train"
    got = read_pairs(root / "image", root / "label")
    assert len(got) == 30
    assert [name for *_x, name in got] == [f"{k}.png" for k in range(30)]
    ds = datasets.load("isbi2012", split="all_labelled")
    for k in (0, 9, 10, 29):
        img, lab, _name = got[k]
        assert img.shape == lab.shape == (512, 512) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, ds.image[k])
        assert set(np.unique(lab).tolist()) == {0, 255}  # labels untouched


def test_real_tiff_stack(emssl_data):
    path = emssl_data / "omniem_examples" / "3d_AxonEM-H-0-0-0_0_0_0.tif"
    slices = read_images(path)
    assert len(slices) == 16
    np.testing.assert_array_equal(np.stack(slices), tifffile.imread(path))


def test_docstring_examples():
    result = doctest.testmod(pairs, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
