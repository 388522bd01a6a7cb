"""N5 written with tensorstore's n5 driver, plus COSEM / neuroglancer attributes.json."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest
import tensorstore as ts

from em5m import InvalidVolumeError, VolumeNotFoundError, open_volume

RNG = np.random.default_rng(5)


def write_n5_array(path, data_zyx, block=(16, 16, 4), dtype="uint16"):
    """N5 stores dimensions fastest-first: a (z, y, x) array has dimensions [x, y, z]."""
    store = ts.open(
        {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {
                "dimensions": list(data_zyx.shape[::-1]),
                "blockSize": list(block),
                "dataType": dtype,
                "compression": {"type": "gzip"},
            },
        },
        create=True,
    ).result()
    store[...] = data_zyx.T
    return path


def add_attrs(path, **extra):
    f = path / "attributes.json"
    attrs = json.loads(f.read_text()) if f.exists() else {}
    attrs.update(extra)
    f.write_text(json.dumps(attrs))


@pytest.fixture
def cosem(tmp_path):
    """OpenOrganelle layout: <root>.n5/em/fibsem-uint16/s0, s1 with COSEM transforms."""
    s0 = RNG.integers(0, 60000, (6, 40, 48)).astype(np.uint16)
    s1 = s0[:, ::2, ::2].copy()
    root = tmp_path / "jrc_cell.n5"
    group = root / "em" / "fibsem-uint16"
    datasets = []
    for k, data in enumerate((s0, s1)):
        arr = write_n5_array(group / f"s{k}", data)
        transform = {
            "axes": ["z", "y", "x"],
            "scale": [5.24, 4.0 * 2**k, 4.0 * 2**k],
            "translate": [0.0, 2.0 * k, 2.0 * k],
            "units": ["nm", "nm", "nm"],
        }
        add_attrs(arr, transform=transform)
        datasets.append({"path": f"s{k}", "transform": transform})
    add_attrs(root, n5="2.5.1")
    add_attrs(
        group,
        multiscales=[{"datasets": datasets}],
        axes=["x", "y", "z"],
        units=["nm", "nm", "nm"],
        scales=[[1, 1, 1], [2, 2, 1]],
        pixelResolution={"dimensions": [4.0, 4.0, 5.24], "unit": "nm"},
    )
    return root, s0, s1


def test_cosem_multiscale(cosem):
    root, s0, s1 = cosem
    vol = open_volume(f"{root}::em/fibsem-uint16")
    assert vol.metadata["format"] == "n5"
    assert vol.axes == ("z", "y", "x") and vol.shape == (6, 40, 48)
    assert vol.voxel_size == (5.24, 4.0, 4.0)
    assert [lv["path"] for lv in vol.metadata["levels"]] == ["s0", "s1"]
    np.testing.assert_array_equal(vol.compute(), s0)
    v1 = open_volume(root, dataset="em/fibsem-uint16", level=1)
    assert v1.voxel_size == (5.24, 8.0, 8.0)
    np.testing.assert_array_equal(v1.compute(), s1)


def test_single_level_array_directly(cosem):
    root, _, s1 = cosem
    vol = open_volume(f"{root}::em/fibsem-uint16/s1")
    assert vol.voxel_size == (5.24, 8.0, 8.0)
    np.testing.assert_array_equal(vol.compute(), s1)


def test_neuroglancer_n5_resolution_and_scales(tmp_path):
    """Neuroglancer's N5 convention: group resolution [x,y,z] times per-level scales."""
    s0 = RNG.integers(0, 255, (8, 32, 24)).astype(np.uint8)
    root = tmp_path / "ng.n5"
    write_n5_array(root / "s0", s0, dtype="uint8")
    write_n5_array(root / "s1", s0[::2, ::2, ::2].copy(), dtype="uint8")
    add_attrs(
        root,
        n5="2.0.0",
        resolution=[6.0, 6.0, 30.0],
        units=["nm", "nm", "nm"],
        scales=[[1, 1, 1], [2, 2, 2]],
        axes=["x", "y", "z"],
    )
    vol = open_volume(root)
    assert vol.voxel_size == (30.0, 6.0, 6.0)
    assert vol.metadata["levels"][1]["voxel_size"] == (60.0, 12.0, 12.0)
    np.testing.assert_array_equal(vol.compute(), s0)


def test_pixel_resolution_and_downsampling_factors(tmp_path):
    """n5-viewer convention: group pixelResolution (um) and per-array downsamplingFactors."""
    s0 = RNG.integers(0, 255, (4, 16, 16)).astype(np.uint8)
    root = tmp_path / "v.n5"
    write_n5_array(root / "s0", s0, dtype="uint8")
    write_n5_array(root / "s1", s0[:, ::2, ::2].copy(), dtype="uint8")
    add_attrs(root / "s1", downsamplingFactors=[2, 2, 1])
    add_attrs(root, pixelResolution={"dimensions": [0.008, 0.008, 0.03], "unit": "um"})
    assert open_volume(root).voxel_size == (30.0, 8.0, 8.0)
    assert open_volume(root, level=1).voxel_size == (30.0, 16.0, 16.0)


def test_xyc_axes_attribute(tmp_path):
    data = RNG.integers(0, 255, (3, 10, 12)).astype(np.uint8)  # c, y, x
    arr = write_n5_array(tmp_path / "c.n5" / "rgb", data, block=(8, 8, 3), dtype="uint8")
    add_attrs(arr, axes=["x", "y", "c"])
    vol = open_volume(tmp_path / "c.n5")  # the root's only array
    assert vol.axes == ("c", "y", "x")
    np.testing.assert_array_equal(vol.compute(), data)


def test_missing_node_lists_nodes(cosem):
    root, _, _ = cosem
    with pytest.raises(VolumeNotFoundError) as err:
        open_volume(f"{root}::em/fibsem-uint8")
    assert "em/fibsem-uint16/s0" in str(err.value)


def test_compute_of_one_block_reads_only_that_block(tmp_path):
    """Corrupt every N5 block except the first: the first dask block still computes."""
    data = RNG.integers(0, 255, (8, 64, 64)).astype(np.uint16)
    arr = write_n5_array(tmp_path / "b.n5" / "s0", data, block=(32, 32, 8))
    with dask.config.set({"array.chunk-size": "16KiB"}):  # one dask block per N5 block
        vol = open_volume(tmp_path / "b.n5")
    assert vol.data.chunks == ((8,), (32, 32), (32, 32))
    blocks = sorted(p for p in arr.rglob("*") if p.is_file() and p.name != "attributes.json")
    assert len(blocks) == 4
    for p in blocks:
        if p.relative_to(arr).parts != ("0", "0", "0"):
            p.write_bytes(b"garbage")
    first = vol.data[:8, :32, :32]
    np.testing.assert_array_equal(first.compute(), data[:8, :32, :32])
    with pytest.raises(InvalidVolumeError) as err:
        vol.compute()
    assert "b.n5" in str(err.value) and "could not read region" in str(err.value)
