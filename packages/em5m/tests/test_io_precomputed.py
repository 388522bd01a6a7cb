"""Neuroglancer precomputed volumes written with tensorstore."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import tensorstore as ts

from em5m import InvalidVolumeError, open_volume

RNG = np.random.default_rng(6)


def write_scale(path, data_czyx, resolution, *, chunk=(32, 32, 8), offset=(0, 0, 0), create_info):
    """Write one scale; tensorstore stores x, y, z, channel."""
    c = data_czyx.shape[0]
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path)},
        "scale_metadata": {
            "size": list(data_czyx.shape[:0:-1]),
            "resolution": list(resolution),
            "encoding": "raw",
            "chunk_size": list(chunk),
            "voxel_offset": list(offset),
        },
    }
    if create_info:
        spec["multiscale_metadata"] = {
            "type": "image",
            "data_type": str(data_czyx.dtype),
            "num_channels": c,
        }
    store = ts.open(spec, create=True).result()
    store[...] = data_czyx.transpose(3, 2, 1, 0)


def test_single_channel_multiscale(tmp_path):
    s0 = RNG.integers(0, 255, (1, 8, 48, 64), dtype=np.uint8)
    s1 = s0[:, :, ::2, ::2].copy()
    write_scale(tmp_path, s0, (4, 4, 40), create_info=True)
    write_scale(tmp_path, s1, (8, 8, 40), create_info=False)
    vol = open_volume(f"precomputed://file://{tmp_path}")
    assert vol.metadata["format"] == "precomputed"
    assert vol.axes == ("z", "y", "x")  # single channel dropped
    assert vol.voxel_size == (40.0, 4.0, 4.0)
    assert [lv["voxel_size"] for lv in vol.metadata["levels"]] == [
        (40.0, 4.0, 4.0),
        (40.0, 8.0, 8.0),
    ]
    np.testing.assert_array_equal(vol.compute(), s0[0])
    v1 = open_volume(tmp_path, level=1)  # a plain directory with `info` works too
    assert v1.voxel_size == (40.0, 8.0, 8.0)
    np.testing.assert_array_equal(v1.compute(), s1[0])


def test_multichannel_with_voxel_offset(tmp_path):
    data = RNG.integers(0, 60000, (3, 4, 20, 30)).astype(np.uint16)
    write_scale(
        tmp_path, data, (6, 6, 30), chunk=(16, 16, 4), offset=(100, 50, 7), create_info=True
    )
    vol = open_volume(tmp_path)
    assert vol.axes == ("c", "z", "y", "x")
    assert vol.metadata["levels"][0]["voxel_offset"] == (100, 50, 7)
    np.testing.assert_array_equal(vol.compute(), data)
    np.testing.assert_array_equal(vol.data[1, 2, 5:9, 10:12].compute(), data[1, 2, 5:9, 10:12])


def test_compute_of_one_block_reads_only_that_block(tmp_path):
    data = RNG.integers(0, 255, (1, 8, 64, 64), dtype=np.uint8)
    write_scale(tmp_path, data, (4, 4, 40), chunk=(32, 32, 8), create_info=True)
    with dask.config.set({"array.chunk-size": "8KiB"}):
        vol = open_volume(tmp_path)
    assert vol.data.chunks == ((8,), (32, 32), (32, 32))
    key_dir = tmp_path / "4_4_40"
    chunks = sorted(key_dir.iterdir())
    assert len(chunks) == 4
    for p in chunks:
        if not p.name.startswith("0-32_0-32_"):
            p.write_bytes(b"garbage")
    np.testing.assert_array_equal(vol.data[:, :32, :32].compute(), data[0, :, :32, :32])
    with pytest.raises(InvalidVolumeError, match="could not read region"):
        vol.compute()


def test_info_of_other_type_is_not_a_volume(tmp_path):
    (tmp_path / "info").write_text('{"@type": "neuroglancer_skeletons"}')
    with pytest.raises(InvalidVolumeError, match="not a neuroglancer precomputed volume"):
        open_volume(f"precomputed://{tmp_path}")
