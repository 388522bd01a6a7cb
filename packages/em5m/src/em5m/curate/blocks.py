"""Read regions of a lazy volume through a per-process cache of its dask blocks.

A `Volume`'s dask blocks are large (tens of MB; ``em5m.io`` grows them to ~64 MB) and computing
any slice of a block decodes the whole block. Work units are smaller than a block (so that two
workers have work), so units of one block would each decode it again. `read_region` computes
each needed block once per process (LRU, bounded by bytes; concurrent requests for one block
wait for the first) and copies the region out of the cached blocks. Units of one block are
adjacent in the plan, so with local threads every block is decoded once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

#: Bytes of decoded blocks kept per process.
CACHE_BYTES = 384 * 2**20


class BlockCache:
    """LRU cache of computed dask blocks, keyed by (array name, block index).

    Args:
        max_bytes: evict least recently used blocks above this (the newest block always stays).
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[tuple[str, tuple[int, ...]], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, tuple[int, ...]], threading.Lock] = {}
        self.misses = 0

    def get(self, arr: da.Array, index: tuple[int, ...]) -> np.ndarray:
        key = (arr.name, index)
        with self._lock:
            if key in self._blocks:
                self._blocks.move_to_end(key)
                return self._blocks[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one thread computes a block; the others wait and reuse it
            with self._lock:
                if key in self._blocks:
                    return self._blocks[key]
            block = np.asarray(arr.blocks[index].compute(scheduler="synchronous"))
            with self._lock:
                self.misses += 1
                self._blocks[key] = block
                self._bytes += block.nbytes
                self._loading.pop(key, None)
                while self._bytes > self.max_bytes and len(self._blocks) > 1:
                    _, old = self._blocks.popitem(last=False)
                    self._bytes -= old.nbytes
            return block

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._bytes = 0


CACHE = BlockCache()


def _edges(chunks: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)


def block_ranges(
    chunks: Sequence[Sequence[int]], region: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Per axis, the half-open range of block indices a region overlaps.

    Examples:
        >>> block_ranges([(4, 4), (10,)], [(3, 5), (0, 10)])
        [(0, 2), (0, 1)]
    """
    out = []
    for sizes, (a, b) in zip(chunks, region, strict=True):
        e = _edges(sizes)
        first = int(np.searchsorted(e, a, side="right") - 1)
        last = int(np.searchsorted(e, b, side="left"))
        out.append((first, max(last, first + 1)))
    return out


def _as_index(x: slice | np.ndarray) -> np.ndarray:
    return np.arange(x.start, x.stop) if isinstance(x, slice) else x


def read_region(
    arr: da.Array, index: Sequence[slice], cache: BlockCache | None = None
) -> np.ndarray:
    """``arr[index]`` for step slices (start/stop set), assembled from cached whole blocks.

    Examples:
        >>> import dask.array as da, numpy as np
        >>> x = da.arange(60, chunks=7).reshape(6, 10).rechunk((4, 3))
        >>> r = read_region(x, (slice(1, 6, 2), slice(2, 9)), BlockCache())
        >>> bool((r == x.compute()[1:6:2, 2:9]).all())
        True
    """
    cache = cache or CACHE
    index = tuple(index)
    wanted = [np.arange(s.start, s.stop, s.step or 1) for s in index]
    out = np.empty([len(w) for w in wanted], dtype=arr.dtype)
    if out.size == 0:
        return out
    ranges = block_ranges(arr.chunks, [(int(w[0]), int(w[-1]) + 1) for w in wanted])
    edges = [_edges(c) for c in arr.chunks]
    for bidx in np.ndindex(*[b - a for a, b in ranges]):
        block_index = tuple(a + i for (a, _), i in zip(ranges, bidx, strict=True))
        sel_out: list[Any] = []
        sel_blk: list[Any] = []
        empty = False
        for axis, b in enumerate(block_index):
            lo, hi = edges[axis][b], edges[axis][b + 1]
            w = wanted[axis]
            inside = np.flatnonzero((w >= lo) & (w < hi))
            if inside.size == 0:
                empty = True
                break
            local = w[inside] - lo
            if inside[-1] - inside[0] + 1 == len(inside) and local[-1] - local[0] + 1 == len(
                local
            ):  # contiguous on both sides: plain slices (no fancy-index copy)
                sel_out.append(slice(int(inside[0]), int(inside[-1]) + 1))
                sel_blk.append(slice(int(local[0]), int(local[-1]) + 1))
            else:
                sel_out.append(inside)
                sel_blk.append(local)
        if empty:
            continue
        block = cache.get(arr, block_index)
        if all(isinstance(x, slice) for x in sel_out):
            out[tuple(sel_out)] = block[tuple(sel_blk)]
        else:
            out[np.ix_(*[_as_index(x) for x in sel_out])] = block[
                np.ix_(*[_as_index(x) for x in sel_blk])
            ]
    return out
