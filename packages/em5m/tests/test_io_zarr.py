"""Zarr v2/v3 arrays and OME-Zarr 0.4 (hand-written per the spec) / 0.5 images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from ome_zarr_models.v04.image import Image as Image04

from em5m import InvalidVolumeError, VolumeNotFoundError, open_volume, save_volume

RNG = np.random.default_rng(4)


def test_zarr_v2_array(tmp_path):
    data = RNG.integers(0, 255, (6, 40, 50), dtype=np.uint8)
    z = zarr.create_array(
        tmp_path / "a.zarr", shape=data.shape, dtype=data.dtype, chunks=(2, 20, 20), zarr_format=2
    )
    z[:] = data
    vol = open_volume(tmp_path / "a.zarr")
    assert vol.metadata["format"] == "zarr" and vol.metadata["zarr_format"] == 2
    assert vol.axes == ("z", "y", "x") and vol.voxel_size is None
    np.testing.assert_array_equal(vol.compute(), data)


def test_zarr_v3_array_dimension_names(tmp_path):
    data = RNG.random((2, 5, 16, 18)).astype(np.float32)  # stored y, x, c, z... see below
    stored = data.transpose(2, 3, 0, 1)  # (y, x, c, z)
    z = zarr.create_array(
        tmp_path / "b.zarr",
        shape=stored.shape,
        dtype=stored.dtype,
        chunks=(8, 9, 1, 5),
        dimension_names=["y", "x", "c", "z"],
    )
    z[:] = stored
    vol = open_volume(tmp_path / "b.zarr")
    assert vol.axes == ("c", "z", "y", "x")
    assert vol.metadata["stored_axes"] == "yxcz"
    np.testing.assert_array_equal(vol.compute(), data)


def test_group_with_one_array_and_inner_path(tmp_path):
    data = RNG.integers(0, 9, (3, 4, 5), dtype=np.int32)
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("sub/raw", data=data)
    assert open_volume(f"{tmp_path / 'g.zarr'}::sub/raw").shape == (3, 4, 5)
    vol = open_volume(tmp_path / "g.zarr", dataset="sub")  # the group's only array
    np.testing.assert_array_equal(vol.compute(), data)
    with pytest.raises(VolumeNotFoundError, match="sub/raw"):
        open_volume(f"{tmp_path / 'g.zarr'}::sub/rwa")


def write_ngff_04(root, levels, axes, scales, translations=None, global_scale=None):
    """An OME-Zarr 0.4 image written by hand with zarr v2 (what OpenOrganelle serves)."""
    g = zarr.open_group(root, mode="w", zarr_format=2)
    datasets = []
    for i, data in enumerate(levels):
        a = g.create_array(
            f"s{i}",
            shape=data.shape,
            dtype=data.dtype,
            chunks=tuple(min(16, n) for n in data.shape),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        a[:] = data
        ct = [{"type": "scale", "scale": scales[i]}]
        if translations:
            ct.append({"type": "translation", "translation": translations[i]})
        datasets.append({"path": f"s{i}", "coordinateTransformations": ct})
    ms = {"version": "0.4", "name": "em", "axes": axes, "datasets": datasets}
    if global_scale:
        ms["coordinateTransformations"] = [{"type": "scale", "scale": global_scale}]
    g.attrs["multiscales"] = [ms]
    return root


def test_ome_zarr_04_multiscale_micrometer(tmp_path):
    s0 = RNG.integers(0, 255, (8, 32, 32), dtype=np.uint8)
    s1 = s0[:, ::2, ::2].copy()
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    root = write_ngff_04(
        tmp_path / "img.zarr",
        [s0, s1],
        axes,
        [[0.04, 0.004, 0.004], [0.04, 0.008, 0.008]],
        [[0, 0, 0], [0, 0.002, 0.002]],
    )
    attrs = json.loads((root / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"
    # The hand-written fixture itself is valid NGFF 0.4 (independent validator).
    Image04.from_zarr(zarr.open_group(root, mode="r"))
    vol = open_volume(root)
    assert vol.metadata["format"] == "ome-zarr" and vol.metadata["ngff_version"] == "0.4"
    assert vol.voxel_size == (40.0, 4.0, 4.0)
    levels = vol.metadata["levels"]
    assert [lv["path"] for lv in levels] == ["s0", "s1"]
    assert levels[1]["shape"] == (8, 16, 16) and levels[1]["voxel_size"] == (40.0, 8.0, 8.0)
    np.testing.assert_array_equal(vol.compute(), s0)
    v1 = open_volume(root, level=1)
    assert v1.voxel_size == (40.0, 8.0, 8.0)
    np.testing.assert_array_equal(v1.compute(), s1)


def test_ome_zarr_04_tczyx_angstrom_and_global_scale(tmp_path):
    data = RNG.integers(0, 255, (1, 2, 4, 16, 16), dtype=np.uint16)
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "ch", "type": "channel"},
        {"name": "z", "type": "space", "unit": "angstrom"},
        {"name": "y", "type": "space", "unit": "angstrom"},
        {"name": "x", "type": "space", "unit": "angstrom"},
    ]
    root = write_ngff_04(
        tmp_path / "t.zarr", [data], axes, [[1, 1, 25, 20, 20]], global_scale=[1, 1, 2, 2, 2]
    )
    vol = open_volume(root)
    assert vol.axes == ("c", "z", "y", "x")  # t of length 1 dropped, channel type -> c
    assert vol.voxel_size == (5.0, 4.0, 4.0)
    np.testing.assert_array_equal(vol.compute(), data[0])


def test_ome_zarr_without_units_has_no_voxel_size(tmp_path):
    data = np.zeros((2, 8, 8), np.uint8)
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    vol = open_volume(write_ngff_04(tmp_path / "nu.zarr", [data], axes, [[3, 2, 2]]))
    assert vol.voxel_size is None


def test_ome_zarr_unknown_axis_raises_with_hint(tmp_path):
    data = np.zeros((3, 2, 8, 8), np.uint8)
    axes = [{"name": "angle", "type": "space", "unit": "nanometer"}] + [
        {"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"
    ]
    root = write_ngff_04(tmp_path / "odd.zarr", [data], axes, [[1, 1, 1, 1]])
    with pytest.raises(InvalidVolumeError) as err:
        open_volume(root)
    msg = str(err.value)
    assert "odd.zarr" in msg and "'angle'" in msg and "axes=" in msg
    # The user can say what the axis is.
    assert open_volume(root, axes="czyx").axes == ("c", "z", "y", "x")


def test_ome_zarr_05_from_our_writer_and_level(tmp_path):
    data = RNG.integers(0, 255, (4, 64, 64), dtype=np.uint8)
    out = save_volume(data, tmp_path / "w.ome.zarr", voxel_size=(50, 5, 5), levels=3)
    vol = open_volume(out, level=2)
    assert vol.metadata["ngff_version"] == "0.5" and vol.metadata["zarr_format"] == 3
    assert vol.shape == (4, 16, 16)
    assert vol.voxel_size == (50.0, 20.0, 20.0)
    with pytest.raises(InvalidVolumeError, match="level 3 does not exist"):
        open_volume(out, level=3)


def test_sharded_v3_array_reads_by_region(tmp_path):
    data = RNG.integers(0, 255, (8, 64, 64), dtype=np.uint8)
    z = zarr.create_array(
        tmp_path / "sh.zarr",
        shape=data.shape,
        dtype=data.dtype,
        chunks=(1, 16, 16),
        shards=(4, 32, 32),
    )
    z[:] = data
    vol = open_volume(tmp_path / "sh.zarr")
    assert vol.metadata["storage_chunks"] == (4, 32, 32)  # shards guide the dask blocks
    np.testing.assert_array_equal(vol.data[3:6, 10:50, 20:21].compute(), data[3:6, 10:50, 20:21])
