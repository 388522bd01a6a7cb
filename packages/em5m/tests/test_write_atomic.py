"""Atomic writes: an interrupted save never leaves anything at the target that reads as done."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import dask.array as da
import numpy as np
import pytest

from em5m import InvalidVolumeError, VolumeNotFoundError, open_volume, save_volume


class DiskFull(RuntimeError):
    pass


def failing_volume(tmp_path, target_name, fail_block=3):
    """A lazy volume whose later block raises; records whether a partial output existed."""
    seen_partial = []

    def maybe_fail(block, block_info=None):
        z0 = block_info[None]["array-location"][0][0]
        if z0 >= fail_block * 8:
            seen_partial.extend(
                p.name for p in tmp_path.iterdir() if p.name.startswith(f"{target_name}.partial-")
            )
            raise DiskFull(f"simulated failure at z={z0}")
        return block

    data = da.ones((64, 64, 64), dtype=np.uint8, chunks=(8, 64, 64))
    return data.map_blocks(maybe_fail, dtype=np.uint8), seen_partial


@pytest.mark.parametrize("name", ["out.ome.zarr", "out.tif"])
def test_failure_mid_write_leaves_nothing(tmp_path, name):
    vol, seen_partial = failing_volume(tmp_path, name)
    with pytest.raises(DiskFull):
        save_volume(vol, tmp_path / name)
    assert seen_partial, "the writer should have been writing to a .partial- sibling"
    assert not (tmp_path / name).exists()
    assert list(tmp_path.iterdir()) == []  # the partial output was removed too
    with pytest.raises(VolumeNotFoundError):
        open_volume(tmp_path / name)


def test_existing_target_is_refused_without_overwrite(tmp_path):
    target = tmp_path / "v.zarr"
    save_volume(np.zeros((2, 8, 8), np.uint8), target)
    with pytest.raises(FileExistsError) as err:
        save_volume(np.ones((2, 8, 8), np.uint8), target)
    assert "v.zarr" in str(err.value) and "overwrite=True" in str(err.value)
    assert open_volume(target).compute().max() == 0  # untouched


@pytest.mark.parametrize("name", ["v.zarr", "v.tif"])
def test_overwrite_replaces(tmp_path, name):
    target = tmp_path / name
    save_volume(np.zeros((2, 8, 8), np.uint8), target)
    save_volume(np.full((3, 8, 8), 5, np.uint8), target, overwrite=True)
    back = open_volume(target)
    assert back.shape == (3, 8, 8) and int(back.compute().min()) == 5
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no .old-/.partial- leftovers


def test_failed_overwrite_keeps_the_old_volume(tmp_path):
    target = tmp_path / "keep.zarr"
    old = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    save_volume(old, target)
    vol, _ = failing_volume(tmp_path, "keep.zarr")
    with pytest.raises(DiskFull):
        save_volume(vol, target, overwrite=True)
    np.testing.assert_array_equal(open_volume(target).compute(), old)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.zarr"]


CRASH = textwrap.dedent(
    """
    import os, sys
    import dask
    import dask.array as da
    import numpy as np
    from em5m import save_volume

    def crash(block, block_info=None):
        if block_info[None]["array-location"][0][0] >= 32:
            os._exit(3)  # the process dies: no exception handler, no cleanup
        return block

    vol = da.ones((64, 64, 64), dtype=np.uint8, chunks=(8, 64, 64))
    # Small write groups: blocks are written in order, so some exist before the crash.
    with dask.config.set({"array.chunk-size": "32KiB"}):
        save_volume(vol.map_blocks(crash, dtype=np.uint8), sys.argv[1], shard=False,
                    chunks=(8, 64, 64))
    """
)


def test_killed_process_leaves_only_a_refused_partial(tmp_path):
    target = tmp_path / "crash.zarr"
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith("crash.zarr.partial-")
    assert any(leftovers[0].rglob("c/*"))  # some blocks were written before the crash
    with pytest.raises(InvalidVolumeError, match="interrupted save_volume"):
        open_volume(leftovers[0])
