"""save_volume -> OME-Zarr 0.5: round trips, pyramid, chunking, independent validation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05.image import Image

from em5m import Volume, open_volume, save_volume

RNG = np.random.default_rng(7)


def validate(path) -> Image:
    """ome-zarr-models (independent of our reader) accepts the group as an NGFF 0.5 image."""
    group = zarr.open_group(path, mode="r")
    model = open_ome_zarr(group)
    assert isinstance(model, Image)
    return Image.from_zarr(group)


def test_round_trip_zyx_with_voxel_size(tmp_path):
    data = RNG.integers(0, 255, (6, 90, 70), dtype=np.uint8)
    vol = Volume.from_array(data, voxel_size=(45.0, 4.6, 4.6))
    out = save_volume(vol, tmp_path / "em.ome.zarr")
    assert out == str(tmp_path / "em.ome.zarr")
    back = open_volume(out)
    assert back.axes == vol.axes and back.voxel_size == vol.voxel_size
    assert back.dtype == data.dtype
    np.testing.assert_array_equal(back.compute(), data)

    model = validate(out)
    ms = model.attributes.ome.multiscales[0]
    assert [(a.name, a.type, a.unit) for a in ms.axes] == [
        ("z", "space", "nanometer"),
        ("y", "space", "nanometer"),
        ("x", "space", "nanometer"),
    ]
    meta = json.loads((tmp_path / "em.ome.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["attributes"]["ome"]["version"] == "0.5"


def test_pyramid_anisotropic_keeps_z(tmp_path):
    data = RNG.integers(0, 60000, (5, 1100, 900)).astype(np.uint16)
    out = save_volume(data, tmp_path / "a.zarr", voxel_size=(40, 4, 4))
    vol = open_volume(out)
    levels = vol.metadata["levels"]
    # 900 -> 450 -> 225: stop once the smaller side is <= 256; z (40 nm vs 4..16 nm) is kept.
    assert [lv["shape"] for lv in levels] == [(5, 1100, 900), (5, 550, 450), (5, 275, 225)]
    assert [lv["voxel_size"] for lv in levels] == [(40, 4, 4), (40, 8, 8), (40, 16, 16)]
    assert levels[1]["translation"] == [0.0, 2.0, 2.0]  # mean: centre of the 2x2 group
    s1 = open_volume(out, level=1).compute()
    expected = data.reshape(5, 550, 2, 450, 2).mean(axis=(2, 4))
    np.testing.assert_array_equal(s1, np.rint(expected).astype(np.uint16))
    validate(out)


def test_pyramid_isotropic_halves_z_and_pads_odd_sides(tmp_path):
    data = RNG.integers(0, 255, (9, 515, 301), dtype=np.uint8)
    out = save_volume(data, tmp_path / "iso.zarr", voxel_size=(5, 5, 5))
    levels = open_volume(out).metadata["levels"]
    assert [lv["shape"] for lv in levels] == [(9, 515, 301), (5, 258, 151)]
    assert levels[1]["voxel_size"] == (10, 10, 10)
    s1 = open_volume(out, level=1).compute()
    padded = np.pad(data, [(0, 1), (0, 1), (0, 1)], mode="edge").astype(np.float64)
    expected = padded.reshape(5, 2, 258, 2, 151, 2).mean(axis=(1, 3, 5))
    np.testing.assert_array_equal(s1, np.rint(expected).astype(np.uint8))


def test_labels_are_subsampled_not_averaged(tmp_path):
    labels = RNG.integers(0, 5, (4, 600, 600)).astype(np.uint32) * 1000
    out = save_volume(labels, tmp_path / "seg.zarr", voxel_size=(8, 8, 8), levels=3, label=True)
    s2 = open_volume(out, level=2).compute()
    np.testing.assert_array_equal(s2, labels[::4, ::4, ::4])
    assert set(np.unique(s2)) <= set(np.unique(labels))  # no invented label ids
    ms = json.loads((tmp_path / "seg.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    assert ms["multiscales"][0]["metadata"]["label"] is True
    validate(out)


def test_levels_argument_and_limit(tmp_path):
    out = save_volume(np.zeros((2, 64, 64), np.uint8), tmp_path / "l.zarr", levels=4)
    assert len(open_volume(out).metadata["levels"]) == 4
    with pytest.raises(ValueError, match="at most"):
        save_volume(np.zeros((2, 8, 8), np.uint8), tmp_path / "l2.zarr", levels=6)


def test_chunks_and_shards_for_slices_and_blocks(tmp_path):
    out = save_volume(np.zeros((40, 1100, 900), np.uint8), tmp_path / "c.zarr", levels=1)
    s0 = zarr.open_array(f"{out}/s0", mode="r")
    assert s0.chunks == (1, 256, 256)  # a 2D slice read decodes only that slice
    assert s0.shards == (32, 1024, 1024)  # a 32-slice 3D block comes from one shard file
    codecs = json.loads((tmp_path / "c.zarr" / "s0" / "zarr.json").read_text())["codecs"]
    inner = codecs[0]["configuration"]["codecs"]
    assert codecs[0]["name"] == "sharding_indexed"
    assert any(c["name"] == "blosc" and c["configuration"]["cname"] == "zstd" for c in inner)
    f32 = save_volume(np.zeros((40, 300, 300), np.float32), tmp_path / "f.zarr", levels=1)
    assert zarr.open_array(f"{f32}/s0", mode="r").shards == (16, 512, 512)  # <= 64 MB shards


def test_custom_chunks_and_no_sharding(tmp_path):
    data = RNG.integers(0, 255, (8, 64, 64), dtype=np.uint8)
    out = save_volume(data, tmp_path / "u.zarr", chunks=(8, 32, 32), shard=False, levels=2)
    s0 = zarr.open_array(f"{out}/s0", mode="r")
    assert s0.chunks == (8, 32, 32) and s0.shards is None
    np.testing.assert_array_equal(open_volume(out).compute(), data)
    with pytest.raises(ValueError, match="multiple of chunks"):
        save_volume(data, tmp_path / "v.zarr", chunks=(8, 32, 32), shard=(8, 48, 64))


def test_czyx_channels(tmp_path):
    data = RNG.integers(0, 255, (2, 3, 40, 50), dtype=np.uint8)
    out = save_volume(data, tmp_path / "c.ome.zarr", axes="czyx", voxel_size=(30, 6, 6))
    back = open_volume(out)
    assert back.axes == ("c", "z", "y", "x") and back.voxel_size == (30.0, 6.0, 6.0)
    np.testing.assert_array_equal(back.compute(), data)
    axes = validate(out).attributes.ome.multiscales[0].axes
    assert (axes[0].name, axes[0].type, axes[0].unit) == ("c", "channel", None)


def test_unknown_voxel_size_round_trips_as_none(tmp_path):
    data = RNG.random((3, 20, 30)).astype(np.float32)
    out = save_volume(data, tmp_path / "n.zarr")
    back = open_volume(out)
    assert back.voxel_size is None
    np.testing.assert_array_equal(back.compute(), data)
    validate(out)


def test_2d_image(tmp_path):
    data = RNG.integers(0, 255, (300, 520), dtype=np.uint8)
    out = save_volume(data, tmp_path / "img.zarr", voxel_size=(2.5, 2.5))
    back = open_volume(out)
    assert back.axes == ("y", "x") and back.voxel_size == (2.5, 2.5)
    assert [lv["shape"] for lv in back.metadata["levels"]] == [(300, 520), (150, 260)]
    np.testing.assert_array_equal(back.compute(), data)
    validate(out)


def test_volume_from_open_volume_round_trips(tmp_path):
    import tifffile

    data = RNG.integers(0, 255, (4, 30, 40), dtype=np.uint8)
    tifffile.imwrite(
        tmp_path / "in.tif",
        data,
        imagej=True,
        resolution=(0.2, 0.2),
        metadata={"axes": "ZYX", "spacing": 50, "unit": "nm"},
    )
    src = open_volume(tmp_path / "in.tif")
    back = open_volume(save_volume(src, tmp_path / "out.zarr"))
    assert back.voxel_size == (50.0, 5.0, 5.0)
    np.testing.assert_array_equal(back.compute(), data)


WRITE_BIG = textwrap.dedent(
    """
    import resource, sys
    import dask.array as da
    from em5m import save_volume
    import em5m.write, em5m.io
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # 1 GiB lazy volume in (1, Y, X) slices, like a slice folder or TIFF stack: the writer must
    # regroup 64 slices into 32-slice shards without holding all slices at once.
    ramp = (da.arange(4096, dtype="uint16", chunks=4096) % 251).astype("uint8")
    vol = da.broadcast_to(ramp, (64, 4096, 4096), chunks=(1, 4096, 4096))
    vol = vol.map_blocks(lambda b: b + 0, dtype="uint8")  # real, owned blocks
    save_volume(vol, sys.argv[1], voxel_size=(8, 8, 8), levels=1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
    """
)


def test_writing_is_block_by_block(tmp_path):
    """Writing a 1 GiB lazy volume never holds the volume in memory."""
    out = subprocess.run(
        [sys.executable, "-c", WRITE_BIG, str(tmp_path / "big.zarr")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    growth_mb = float(out.stdout.strip().splitlines()[-1])
    assert growth_mb < 512, growth_mb  # the volume is 1024 MiB; a shard is 32 MiB
    s0 = zarr.open_array(tmp_path / "big.zarr" / "s0", mode="r")
    assert s0.shape == (64, 4096, 4096) and s0.shards == (32, 1024, 1024)
    np.testing.assert_array_equal(s0[63, 4095, 4090:], np.arange(4090, 4096) % 251)
