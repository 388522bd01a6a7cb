"""Opening is free: volumes far larger than memory open and read block by block.

Memory is measured in a fresh subprocess with ``ru_maxrss`` (peak resident memory), so the
test process's own allocations cannot hide or fake a regression.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import zarr

MEASURE = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    from em5m import open_volume
    import em5m.io  # import every reader before taking the baseline

    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    path, voxel = sys.argv[1], json.loads(sys.argv[2])
    base = rss_mb()
    t0 = time.perf_counter()
    vol = open_volume(path)
    t_open = time.perf_counter() - t0
    after_open = rss_mb()
    # The one dask block that holds `voxel`.
    index = tuple(
        int(np.searchsorted(np.cumsum(c), v, side="right")) for c, v in zip(vol.data.chunks, voxel)
    )
    block = vol.data.blocks[index].compute()
    print(json.dumps({
        "shape": vol.shape, "nbytes": vol.nbytes, "block_shape": block.shape,
        "block_sum": float(block.sum(dtype=np.float64)), "t_open": t_open,
        "open_growth_mb": after_open - base, "growth_mb": rss_mb() - base,
        "numblocks": vol.data.numblocks,
    }))
    """
)


def measure(path, voxel) -> dict:
    """Open ``path`` in a fresh interpreter and compute the dask block holding ``voxel``."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), json.dumps(voxel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_100gb_zarr_opens_and_reads_one_block_in_bounded_memory(tmp_path, dtype):
    shape = (1000, 10000, 10000)  # 100 GB as uint8, 400 GB as float32
    chunks = (64, 512, 512)
    z = zarr.create_array(
        tmp_path / "huge.zarr",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        dimension_names=["z", "y", "x"],
    )
    # Only a few chunks exist on disk: one inside the block we read, one elsewhere.
    patch = np.random.default_rng(0).integers(1, 100, chunks).astype(dtype)
    z[64:128, 512:1024, 0:512] = patch
    z[512:576, 5120:5632, 5120:5632] = patch
    result = measure(tmp_path / "huge.zarr", [64, 512, 0])
    assert result["nbytes"] >= 100 * 10**9
    assert result["block_shape"][0] == 64  # dask blocks are whole storage chunks
    assert result["block_sum"] == float(patch.sum(dtype=np.float64))
    assert result["open_growth_mb"] < 50, result
    assert result["growth_mb"] < 500, result


def test_big_sparse_bigtiff_is_not_read_at_open(tmp_path):
    path = tmp_path / "big.tif"
    shape = (2000, 4096, 4096)  # 32 GiB of pixels; the file is sparse on disk
    tifffile.imwrite(path, shape=shape, dtype="uint8", bigtiff=True)
    mm = tifffile.memmap(path)
    mm[1234, :16, :16] = 7
    mm.flush()
    del mm
    result = measure(path, [1234, 0, 0])
    assert result["shape"] == list(shape)
    assert result["block_shape"][1:] == [4096, 4096]
    assert result["block_sum"] == 7 * 16 * 16
    assert result["t_open"] < 5.0, result
    assert result["open_growth_mb"] < 50, result
    assert result["growth_mb"] < 500, result
