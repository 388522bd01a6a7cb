"""Wrap a chunked reader (tensorstore, h5py, zarr, files of slices) into a lazy dask array.

Every reader exposes `BlockReader.read(region)`; `to_dask` builds a dask array whose tasks each
call ``read`` for exactly their own block, so computing one block reads only that block, and
opening a volume larger than memory costs nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.utils import parse_bytes

from em5m.errors import EMDataError, InvalidVolumeError

Region = tuple[slice, ...]


def block_bytes() -> int:
    """Target bytes of one dask block: dask's ``array.chunk-size`` setting (default 128 MiB).

    Big enough that the graph of a 100 GB volume stays small, small enough that a handful of
    worker threads stay well inside memory; change it with
    ``dask.config.set({"array.chunk-size": "32MiB"})``.
    """
    return int(parse_bytes(dask.config.get("array.chunk-size", "128MiB")))


class BlockReader:
    """Reads regions of one stored array. Subclasses implement `_read`.

    Args:
        source: file or URI named in errors.
        shape: stored shape (array order as stored).
        dtype: stored dtype; reads return it in native byte order.
        storage_chunks: the chunk shape on disk (guides dask chunking and sampling).
        state: values identifying this version of the data (e.g. file size and mtime), so a
            rewritten file never shares a dask graph name with the old one.

    Examples:
        >>> class Ones(BlockReader):
        ...     def _read(self, region):
        ...         return np.ones([s.stop - s.start for s in region], self.dtype)
        >>> r = Ones("<ones>", (4, 4), np.uint8, (2, 2))
        >>> to_dask(r).sum().compute()
        np.uint64(16)
    """

    def __init__(
        self,
        source: str,
        shape: Sequence[int],
        dtype: Any,
        storage_chunks: Sequence[int] | None = None,
        state: Any = None,
    ) -> None:
        self.source = source
        self.state = state
        self.shape = tuple(int(s) for s in shape)
        self.stored_dtype = np.dtype(dtype)
        self.dtype = self.stored_dtype.newbyteorder("=")
        self.storage_chunks = tuple(
            int(c) for c in (storage_chunks if storage_chunks is not None else self.shape)
        )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, region: Region) -> np.ndarray:
        """The stored values in ``region`` (a tuple of step-1 slices with start/stop set)."""
        try:
            out = self._read(region)
        except EMDataError:
            raise
        except Exception as exc:  # library errors become one clear line naming the file
            where = ", ".join(f"{s.start}:{s.stop}" for s in region)
            raise InvalidVolumeError(
                self.source, f"could not read region [{where}]: {type(exc).__name__}: {exc}"
            ) from None
        out = np.asarray(out)
        if out.dtype != self.dtype:
            out = out.astype(self.dtype)
        return out

    def _read(self, region: Region) -> np.ndarray:
        raise NotImplementedError

    def token(self) -> str:
        """A stable name for the dask graph (source + shape + dtype + reader state)."""
        return tokenize(
            type(self).__name__, self.source, self.shape, str(self.stored_dtype), self.state
        )


class _ArrayLike:
    """The minimal numpy-like face `dask.array.from_array` needs; slices go to the reader."""

    def __init__(self, reader: BlockReader) -> None:
        self.reader = reader
        self.shape = reader.shape
        self.dtype = reader.dtype
        self.ndim = reader.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        region = tuple(
            slice(*k.indices(n)[:2]) if isinstance(k, slice) else slice(int(k), int(k) + 1)
            for k, n in zip(key, self.shape, strict=True)
        )
        out = self.reader.read(region)
        # Integer indices drop their axis, as numpy does.
        drop = tuple(i for i, k in enumerate(key) if not isinstance(k, slice))
        return out.squeeze(axis=drop) if drop else out


def choose_chunks(
    shape: Sequence[int],
    storage_chunks: Sequence[int],
    itemsize: int,
    target_bytes: int | None = None,
) -> tuple[int, ...]:
    """Dask block shape: whole storage chunks, grown (fastest axes first) up to ``target_bytes``.

    Aligning blocks to storage chunks means no chunk is decoded by two tasks; growing the
    in-plane axes first keeps blocks slab-shaped, which suits 2D-slice access.

    Args:
        shape: array shape.
        storage_chunks: chunk shape on disk.
        itemsize: bytes per element.
        target_bytes: upper bound on a block (unless a single storage chunk is already larger);
            default `block_bytes`.

    Examples:
        >>> choose_chunks((1000, 10000, 10000), (64, 512, 512), 1, target_bytes=64 * 2**20)
        (64, 1024, 1024)
    """
    if target_bytes is None:
        target_bytes = block_bytes()
    shape = tuple(max(int(s), 1) for s in shape)
    chunks = [max(1, min(int(c), s)) for c, s in zip(storage_chunks, shape, strict=True)]
    ndim = len(shape)
    # In-plane axes (the last two) first, alternating so blocks stay square-ish; then the rest.
    phases = [list(range(ndim - 1, max(ndim - 3, -1), -1)), list(range(ndim - 3, -1, -1))]
    for axes in phases:
        grown = True
        while grown:
            grown = False
            for axis in axes:
                if chunks[axis] >= shape[axis]:
                    continue
                if math.prod(chunks) * itemsize * 2 > target_bytes:
                    continue
                chunks[axis] = min(chunks[axis] * 2, shape[axis])
                grown = True
    return tuple(chunks)


def to_dask(
    reader: BlockReader,
    chunks: Sequence[int] | None = None,
    *,
    name: str | None = None,
) -> da.Array:
    """A lazy dask array over ``reader``; one task per block, each reading only its block.

    Args:
        reader: the stored array.
        chunks: dask block shape; default `choose_chunks` from the storage chunks.
        name: graph name; default derived from `BlockReader.token`.
    """
    if chunks is None:
        chunks = choose_chunks(reader.shape, reader.storage_chunks, reader.dtype.itemsize)
    name = name or f"em5m-read-{reader.token()}"
    return da.from_array(
        _ArrayLike(reader),
        chunks=tuple(chunks),
        name=name,
        asarray=False,
        fancy=False,
        lock=False,
        meta=np.empty((0,) * reader.ndim, dtype=reader.dtype),
    )


class FunctionReader(BlockReader):
    """A `BlockReader` from a plain function ``region -> ndarray`` (for simple formats).

    Args:
        source, shape, dtype, storage_chunks, state: as for `BlockReader`.
        fn: reads one region.
    """

    def __init__(
        self,
        source: str,
        shape: Sequence[int],
        dtype: Any,
        storage_chunks: Sequence[int] | None,
        fn: Callable[[Region], np.ndarray],
        state: Any = None,
    ) -> None:
        super().__init__(source, shape, dtype, storage_chunks, state)
        self._fn = fn

    def _read(self, region: Region) -> np.ndarray:
        return self._fn(region)


def file_state(*paths: str) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime_ns) of each path: identifies one version of the files on disk."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((p, st.st_size, st.st_mtime_ns))
    return tuple(out)


class SliceableReader(BlockReader):
    """A `BlockReader` over any object that numpy-slices (zarr array, memmap, tifffile store).

    Args:
        source, storage_chunks, state: as for `BlockReader`.
        array: object with ``shape``, ``dtype`` and ``__getitem__(tuple of slices)``.
        lock: held around each read when the object is not thread-safe.
        keepalive: objects that must outlive the reader (e.g. the open file behind a store).
    """

    def __init__(
        self,
        source: str,
        array: Any,
        storage_chunks: Sequence[int] | None = None,
        *,
        lock: Any = None,
        keepalive: Any = None,
        state: Any = None,
    ) -> None:
        super().__init__(source, array.shape, array.dtype, storage_chunks, state)
        self._array = array
        self._lock = lock
        self._keepalive = keepalive

    def _read(self, region: Region) -> np.ndarray:
        if self._lock is None:
            out = self._array[region]
        else:
            with self._lock:
                out = self._array[region]
        # A memmap slice is a view of the file; copy so a block owns its memory.
        return np.array(out) if isinstance(out, np.memmap) else np.asarray(out)
