"""Instance output of the engine, stitched across blocks, on real Lucchi++ mitochondria.

The "model" reads the Lucchi++ val mitochondrion masks (as the image) and returns logits of a
sure foreground and no boundary, so whole-volume instance segmentation is exactly the
face-connected components of the mask (`skimage.measure.label`, connectivity 1). Blocks cut
many mitochondria; after stitching the engine must give the same objects, up to renaming.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from skimage.measure import label

from omniem.engine import plan, predict
from omniem.engine.ledger import Ledger

KW = {"tile": 64, "overlap": 0.25, "dtype": "fp32", "batch_size": 4}


@pytest.fixture(scope="module")
def masks(emssl_data) -> np.ndarray:
    import em5m.datasets

    ds = em5m.datasets.load("lucchi_pp", split="val")
    m = np.asarray(ds.labels["mitochondria"][:6, :300, :400]) > 0
    assert 0.02 < m.mean() < 0.5
    return (m * 255).astype(np.uint8)


def mask_model(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, h, w] in [0, 1] -> logits [foreground, boundary]: mask = foreground, no boundary."""
    return torch.cat([40.0 * (x - 0.5), torch.full_like(x, -40.0)], dim=1)


mask_model.task = "instances"  # type: ignore[attr-defined]


def _same_objects(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to renaming: same background, and a one-to-one map between ids."""
    assert np.array_equal(a > 0, b > 0)
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("block", [(2, 96), (6, 1024), (1, 70)])
def test_stitched_instances_equal_whole_volume_components(masks, block, tmp_path) -> None:
    ref = label(masks > 0, connectivity=1)
    got = predict(mask_model, masks, block=block, **KW)
    assert got.dtype == np.uint32 and got.shape == masks.shape
    _same_objects(got, ref)
    assert got.max() == ref.max() and set(np.unique(got)) == set(range(ref.max() + 1))
    # Out of core: the same ids (not only the same objects), and the output is complete.
    out = predict(mask_model, masks, tmp_path / "i.ome.zarr", block=block, **KW)
    np.testing.assert_array_equal(np.asarray(zarr.open_group(out, mode="r")["s0"][:]), got)
    assert Ledger.open(out).is_complete


def test_without_stitching_blocks_would_split_objects(masks) -> None:
    """The test can fail: per-block labels alone cut objects at block borders."""
    from omniem.engine.compute import compute_block
    from omniem.engine.run import prepare

    setup = prepare(mask_model, masks, block=(2, 96), **KW)
    pieces = sum(int(compute_block(setup, b).max()) for b in setup.blocks)
    assert pieces > 1.5 * label(masks > 0, connectivity=1).max()


def test_resume_after_a_stop_gives_the_same_ids(masks, tmp_path) -> None:
    """Stop after some blocks (an exception from the progress callback), then resume."""
    full = predict(mask_model, masks, block=(2, 96), **KW)
    target = tmp_path / "r.ome.zarr"

    def stop(done: int, total: int) -> None:
        if done == total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict(mask_model, masks, target, block=(2, 96), progress=stop, **KW)
    led = Ledger.open(target)
    assert (
        not led.is_complete
        and 0 < len(led.done()) < plan(mask_model, masks, block=(2, 96), **KW)["n_blocks"]
    )
    assert all("n_labels" in r for r in led.blocks().values())
    out = predict(mask_model, masks, target, block=(2, 96), **KW)
    np.testing.assert_array_equal(np.asarray(zarr.open_group(out, mode="r")["s0"][:]), full)


def test_instances_output_needs_an_instances_model(masks) -> None:
    def semantic(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, 1 - x], dim=1)

    semantic.task = "semantic"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="needs an instances model"):
        predict(semantic, masks, output="instances", **KW)
    with pytest.raises(ValueError, match="runs its blocks in this process"):
        predict(mask_model, masks, devices="cpu:2", **KW)
