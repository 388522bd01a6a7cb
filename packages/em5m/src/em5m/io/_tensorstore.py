"""Tensorstore-backed block reader, shared by the N5 and neuroglancer precomputed readers."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorstore as ts

from em5m.errors import InvalidVolumeError
from em5m.io._lazy import BlockReader, Region


def open_store(source: str, spec: dict[str, Any]) -> Any:
    """``ts.open(spec)`` for reading; library errors become `InvalidVolumeError`."""
    try:
        return ts.open(spec, read=True).result()
    except Exception as exc:
        raise InvalidVolumeError(
            source, f"tensorstore cannot open it ({type(exc).__name__}: {exc})"
        ) from None


class TensorStoreReader(BlockReader):
    """Reads regions of a (zero-origin) tensorstore; each read fetches only its own chunks.

    Tensorstore is thread-safe and fetches the chunks of one region concurrently. Pickling keeps
    the JSON spec and reopens on first use, so process-based dask schedulers work too.

    Args:
        source: named in errors.
        store: an open ``ts.TensorStore`` whose domain starts at 0.
        storage_chunks: chunk shape in the store's dimension order.
        state: identifies this version of the data.
    """

    def __init__(self, source: str, store: Any, storage_chunks: Any, state: Any = None) -> None:
        super().__init__(source, store.shape, store.dtype.numpy_dtype, storage_chunks, state)
        self._store = store
        self._spec = store.spec().to_json()

    def _read(self, region: Region) -> np.ndarray:
        if self._store is None:
            self._store = ts.open(self._spec, read=True).result()
        return self._store[region].read().result()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None
        return state
