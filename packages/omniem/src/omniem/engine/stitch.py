"""Instance outputs across blocks: per-block instances, stitched into one consistent labelling.

``output="instances"`` (a model with task ``instances``: sigmoid channels foreground, boundary):

1. Each block turns its blended probabilities into instances on its own
   (`omniem.instances.instances_from_foreground_boundary`, ``min_size=0`` so that pieces cut by a
   block border survive), numbered 1..n in the block. These local labels go to a side array
   (``<target>/.omniem/raw_instances.zarr``, or memory) and each block's ``n`` to the ledger.
2. Stitching: block ``b``'s label ``k`` is global id ``offset[b] + k``. For every pair of
   face-adjacent blocks, the two touching planes are read and every pair of labelled voxels
   facing each other joins their ids (union-find): an object cut by a border is one object again.
   Ids are then renumbered 1..N in order of first appearance (block order, then local id).
3. Relabelling: every block is rewritten through its lookup table into the output ``s0``
   (uint32); this pass is idempotent, so a run stopped here redoes it on resume.

The result equals whole-volume instance segmentation wherever an object's pieces touch across a
border (for a foreground without boundaries: the face-connected components, exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from omniem.engine.setup import Block, Setup

__all__ = ["RawLabels", "block_instances", "stitch"]

RAW_NAME = "raw_instances.zarr"


def block_instances(probs: np.ndarray) -> np.ndarray:
    """Local instances ``[z, y, x]`` uint32 (1..n) of one block's probabilities ``[z, C, y, x]``.

    A block of one slice is segmented in 2D, a thicker block in 3D.

    Examples:
        >>> p = np.zeros((1, 2, 4, 6), np.float32); p[0, 0, 1:3, 1:5] = 0.9
        >>> block_instances(p)[0]
        array([[0, 0, 0, 0, 0, 0],
               [0, 1, 1, 1, 1, 0],
               [0, 1, 1, 1, 1, 0],
               [0, 0, 0, 0, 0, 0]], dtype=uint32)
    """
    from omniem.instances import instances_from_foreground_boundary

    if probs.ndim != 4 or probs.shape[1] < 2:
        raise ValueError(f"expected [z, C>=2, y, x] probabilities, got shape {probs.shape}")
    fg, bd = probs[:, 0], probs[:, 1]
    if fg.shape[0] == 1:
        lab = instances_from_foreground_boundary(fg[0], bd[0], min_size=0)[None]
    else:
        lab = instances_from_foreground_boundary(fg, bd, min_size=0)
    return lab.astype(np.uint32)


class RawLabels:
    """The per-block local labels: a Zarr array beside the ledger, or an in-memory array."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr

    @classmethod
    def in_memory(cls, setup: Setup) -> RawLabels:
        return cls(np.zeros(setup.shape, np.uint32))

    @classmethod
    def on_disk(cls, setup: Setup, root: Path) -> RawLabels:
        import zarr

        from omniem.engine.ledger import Ledger

        path = Ledger.dir_of(root) / RAW_NAME
        if path.exists():
            return cls(zarr.open_array(str(path), mode="r+"))
        bz, bhw = setup.block
        z, h, w = setup.shape
        shards = (min(bz, z), min(bhw, h), min(bhw, w))
        arr = zarr.create_array(
            str(path),
            shape=setup.shape,
            dtype="uint32",
            chunks=(1, min(256, shards[1]), min(256, shards[2]))
            if shards[1] % min(256, shards[1]) == 0 and shards[2] % min(256, shards[2]) == 0
            else shards,
            shards=shards,
            fill_value=0,
        )
        return cls(arr)

    def write(self, block: Block, labels: np.ndarray) -> None:
        self.arr[slice(*block.z), slice(*block.y), slice(*block.x)] = labels

    def read(self, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.arr[slice(*z), slice(*y), slice(*x)])


def _neighbours(setup: Setup) -> Iterator[tuple[Block, Block, int]]:
    """``(block, next block, axis)`` for every pair of face-adjacent blocks (axis 0 = z)."""
    by_index = {b.index: b for b in setup.blocks}
    for b in setup.blocks:
        for axis in range(3):
            idx = list(b.index)
            idx[axis] += 1
            nb = by_index.get(tuple(idx))  # type: ignore[arg-type]
            if nb is not None:
                yield b, nb, axis


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


def stitch(setup: Setup, raw: RawLabels, n_labels: dict[int, int]) -> Callable[[Block], np.ndarray]:
    """Join labels across block faces; returns ``block -> final uint32 labels of that block``.

    Args:
        setup: the run.
        raw: the blocks' local labels.
        n_labels: labels per block id (local ids are 1..n).
    """
    offsets: dict[int, int] = {}
    total = 0
    for b in setup.blocks:
        offsets[b.id] = total
        total += int(n_labels[b.id])
    parent = np.arange(total + 1, dtype=np.int64)
    for a, b, axis in _neighbours(setup):
        ranges_a = [a.z, a.y, a.x]
        ranges_b = [b.z, b.y, b.x]
        ranges_a[axis] = (ranges_a[axis][1] - 1, ranges_a[axis][1])
        ranges_b[axis] = (ranges_b[axis][0], ranges_b[axis][0] + 1)
        la = raw.read(*ranges_a)
        lb = raw.read(*ranges_b)
        both = (la > 0) & (lb > 0)
        if not both.any():
            continue
        ga = la[both].astype(np.int64) + offsets[a.id]
        gb = lb[both].astype(np.int64) + offsets[b.id]
        for i, j in np.unique(np.stack([ga, gb], axis=1), axis=0):
            ri, rj = _find(parent, int(i)), _find(parent, int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)  # the earlier id stays the root
    for i in range(1, total + 1):
        parent[i] = parent[parent[i]]  # roots are smaller ids: one pass in order flattens all
    roots = parent
    final = np.zeros(total + 1, dtype=np.int64)
    is_root = roots[1:] == np.arange(1, total + 1)
    final[1:][is_root] = np.arange(1, int(is_root.sum()) + 1)
    final = final[roots]
    if final.max(initial=0) > np.iinfo(np.uint32).max:
        raise ValueError(f"{final.max()} instances do not fit uint32")
    final = final.astype(np.uint32)

    def relabel(block: Block) -> np.ndarray:
        local = raw.read(block.z, block.y, block.x)
        o = offsets[block.id]
        lut = np.concatenate([[0], final[o + 1 : o + 1 + int(n_labels[block.id])]]).astype(
            np.uint32
        )
        return lut[local]

    return relabel
