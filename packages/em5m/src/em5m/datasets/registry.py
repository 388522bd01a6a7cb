"""The registry: dataset name -> `DatasetInfo`, and `load` that turns a name into arrays.

Built-in entries come from one module per dataset (``isbi2012.py``, ``lucchi_pp.py``, ...), each
defining ``INFO``. They are imported on first use so ``import em5m.datasets`` stays cheap.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from em5m.datasets import download
from em5m.datasets.base import DatasetInfo, EMDataset
from em5m.errors import EMDataError, InvalidVolumeError

_BUILTIN_MODULES = (
    "isbi2012",
    "lucchi_pp",
    "drosophila_vnc",
    "flyem_medulla",
    "gala",
    "emdiffuse",
    "omniem_examples",
)

_registry: dict[str, DatasetInfo] = {}
_loaded_builtins = False


def _entries() -> dict[str, DatasetInfo]:
    global _loaded_builtins
    if not _loaded_builtins:
        for mod in _BUILTIN_MODULES:
            inf = importlib.import_module(f"em5m.datasets.{mod}").INFO
            _registry.setdefault(inf.name, inf)
        _loaded_builtins = True
    return _registry


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register(entry: DatasetInfo, *, overwrite: bool = False) -> None:
    """Add a dataset to the registry (e.g. a lab's own data in the same layout conventions).

    Args:
        entry: the dataset's `DatasetInfo`.
        overwrite: replace an existing entry of the same name.

    Examples:
        >>> register(my_info)  # doctest: +SKIP
        >>> load(my_info.name, split="all")  # doctest: +SKIP
    """
    entries = _entries()
    key = _normalise(entry.name)
    if key != entry.name:
        raise ValueError(f"dataset names are lower case with underscores, got {entry.name!r}")
    if key in entries and not overwrite:
        raise ValueError(f"dataset {key!r} is already registered; pass overwrite=True")
    entries[key] = entry


def unregister(name: str) -> None:
    """Remove a dataset from the registry (no error if it is not there)."""
    _entries().pop(_normalise(name), None)


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted.

    Examples:
        >>> "lucchi_pp" in list_datasets()
        True
    """
    return sorted(_entries())


def info(name: str) -> DatasetInfo:
    """The registry entry for ``name`` (its folder name under ``EMSSL_DATA`` works too).

    Raises:
        EMDataError: unknown name (a ValueError); the message lists the known ones.

    Examples:
        >>> info("lucchi_pp").voxel_size
        (5.0, 5.0, 5.0)
    """
    entries = _entries()
    key = _normalise(name)
    if key in entries:
        return entries[key]
    for entry in entries.values():
        if entry.folder == name:
            return entry
    # EMDataError (a ValueError) so the CLI reports a mistyped name in one line.
    raise EMDataError(name, f"unknown dataset; known: {', '.join(sorted(entries))}")


def fetch(name: str, *, download_missing: bool = True, verify: bool = False) -> Path:
    """The folder holding all files of a dataset, downloading missing ones when possible.

    Args:
        name: dataset name.
        download_missing: allow downloading into the cache when ``EMSSL_DATA`` lacks the data.
        verify: also check every file's sha256 (slower: reads every byte).

    Raises:
        DatasetUnavailableError: not on disk and not downloadable.
        EMDataError: ``verify`` found a file whose content differs from the pinned hash.
    """
    entry = info(name)
    folder = download.locate(entry, download=download_missing)
    if verify:
        download.verify_files(entry, folder)
    return folder


def load(name: str, split: str | None = None, **options: Any) -> EMDataset:
    """Load one split of a reference dataset into memory.

    Args:
        name: dataset name (see `list_datasets`).
        split: split name; None for the dataset's default split (only datasets shipped as one
            volume have one).
        **options: dataset-specific options, listed in ``info(name).options``.

    Returns:
        An `EMDataset` with ``(z, y, x)`` arrays, voxel size, licence and citation.

    Raises:
        ValueError: unknown dataset or split.
        DatasetUnavailableError: the data is neither on disk nor downloadable.
        EMDataError: a file is unreadable or not what the dataset's README describes.

    Examples:
        >>> ds = load("isbi2012", split="val")  # doctest: +SKIP
        >>> ds.image.shape, ds.labels["membrane"].mean()  # doctest: +SKIP
        ((5, 512, 512), 0.21...)
    """
    entry = info(name)
    spec = entry.split(split)
    unknown = set(options) - set(entry.options)
    if unknown:
        raise TypeError(
            f"dataset {entry.name!r} has no option(s) {sorted(unknown)}; "
            f"it accepts {sorted(entry.options) or 'none'}"
        )
    folder = download.locate(entry)
    part = entry.loader(folder, spec.name, **options)

    where = folder / spec.name
    if part.image.shape != spec.shape or str(part.image.dtype) != spec.dtype:
        raise InvalidVolumeError(
            where,
            f"{entry.name}/{spec.name} image is {part.image.shape} {part.image.dtype}, "
            f"expected {spec.shape} {spec.dtype}",
        )
    arrays: dict[str, np.ndarray] = {**(part.labels or {}), **part.extras}
    for key, arr in arrays.items():
        if arr.shape != part.image.shape:
            raise InvalidVolumeError(
                where, f"{key} has shape {arr.shape}, the image {part.image.shape}"
            )
    if len(part.slice_names) != part.image.shape[0]:
        raise InvalidVolumeError(where, "one slice name per z index is required")
    return EMDataset(
        name=entry.name,
        split=spec.name,
        image=part.image,
        labels=part.labels,
        class_names=part.class_names,
        voxel_size=spec.voxel_size,
        is_volume=spec.is_volume,
        slice_names=part.slice_names,
        source_files=part.source_files,
        info=entry,
        extras=part.extras,
    )
