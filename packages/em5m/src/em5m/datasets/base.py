"""The types of the dataset registry: what a dataset *is* and what loading one *gives*.

`DatasetInfo` describes a dataset (origin, licence, citation, voxel size, splits, labels, the files
it needs with their sha256); `EMDataset` is one loaded split: numpy arrays in ``(z, y, x)`` order
plus the facts needed to use them honestly. Both are frozen: a registry entry or a loaded split is
never edited in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from em5m.volume import Volume

#: How the values of a label array are to be read.
#: ``mask``: bool, True = the named structure. ``classes``: small ints indexing ``class_names``.
#: ``instances``: object ids (0 has a per-dataset meaning, see the label's description).
LabelKind = Literal["mask", "classes", "instances"]

VoxelSize = tuple[float, float, float]


@dataclass(frozen=True)
class LabelInfo:
    """One label array a dataset provides (the key in `EMDataset.labels`).

    Args:
        name: key in ``EMDataset.labels``.
        kind: ``"mask"``, ``"classes"`` or ``"instances"``.
        description: how the array was derived from the files, in one sentence.
    """

    name: str
    kind: LabelKind
    description: str


@dataclass(frozen=True)
class SplitInfo:
    """A named part of a dataset.

    Args:
        name: the split name passed to ``load(..., split=name)``.
        description: which files/slices it holds and why.
        shape: expected image shape ``(z, y, x)``; a 2D image has ``z == 1``.
        dtype: expected image dtype (``"uint8"`` or ``"uint16"``).
        voxel_size: nm per voxel along ``(z, y, x)``, or None when the origin does not state it.
        is_volume: False when the first axis indexes independent 2D images (crops, unrelated
            slices) rather than consecutive sections; a z spacing is then meaningless.
        labelled: whether the split has labels.
    """

    name: str
    description: str
    shape: tuple[int, int, int]
    dtype: str
    voxel_size: VoxelSize | None
    is_volume: bool = True
    labelled: bool = True


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from and whether it can be downloaded file by file.

    Args:
        page: the human-readable origin (repository, DOI or project page).
        base_url: URL prefix such that ``base_url + relative_path`` serves each file of the
            dataset's layout; None when no per-file download exists (the archive layout or its
            checksum is unknown), so the only way to get the data is to place it by hand.
        note: provenance caveats (mirrors, re-packaging, what is and is not pinned).
    """

    page: str
    base_url: str | None = None
    note: str = ""


@dataclass(frozen=True)
class SplitData:
    """What a dataset module's loader returns; `load` wraps it into an `EMDataset`.

    Args:
        image: ``(z, y, x)`` array.
        labels: named label arrays of the image's shape, or None for unlabelled splits.
        slice_names: one name per z index (the file stem or index it came from).
        source_files: every file read.
        class_names: names of the values of ``labels["classes"]``, if there is such a label.
        extras: auxiliary arrays of the image's shape that are not ground truth (predictions
            shipped with the data, oversegmentations).
    """

    image: np.ndarray
    labels: dict[str, np.ndarray] | None
    slice_names: tuple[str, ...]
    source_files: tuple[Path, ...]
    class_names: tuple[str, ...] | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)


#: A dataset module's loader: (dataset folder, split name, **options) -> SplitData.
Loader = Callable[..., SplitData]


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: everything known about a dataset before reading a pixel.

    Args:
        name: registry key (``load(name)``).
        title: one line for listings.
        folder: the dataset's folder under ``EMSSL_DATA`` (and under the download cache).
        modality: imaging modality (``"FIB-SEM"``, ``"ssTEM"``, ...).
        species: organism.
        sample: tissue or region.
        layout: the expected file layout under ``folder``, for error messages and docs.
        voxel_size: nm ``(z, y, x)`` shared by all splits; None when not stated or when it
            differs per split (see `SplitInfo.voxel_size`).
        voxel_size_note: where the voxel size comes from and its caveats.
        licence: the dataset's licence, as stated by its origin.
        citation: what to cite when reporting numbers on it.
        source: origin and download details.
        splits: the defined splits, in a stable order.
        default_split: the split ``load(name)`` returns without ``split=``; None when the
            dataset ships separate parts and a choice is required.
        labels: the label arrays a labelled split provides.
        class_names: names of the ``"classes"`` label values (index i -> name), if any.
        options: keyword options the loader accepts, with a one-line description each.
        files: relative path -> sha256 of every file the loader reads.
        loader: the dataset module's loader.
    """

    name: str
    title: str
    folder: str
    modality: str
    species: str
    sample: str
    layout: str
    voxel_size: VoxelSize | None
    voxel_size_note: str
    licence: str
    citation: str
    source: Source
    splits: tuple[SplitInfo, ...]
    default_split: str | None
    labels: tuple[LabelInfo, ...]
    class_names: tuple[str, ...] | None
    options: Mapping[str, str]
    files: Mapping[str, str] = field(repr=False)
    loader: Loader = field(repr=False, compare=False)

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.splits)

    def split(self, name: str | None) -> SplitInfo:
        """The `SplitInfo` called ``name`` (None: the default split).

        Raises:
            ValueError: unknown split, or None for a dataset without a default split.
        """
        if name is None:
            if self.default_split is None:
                raise ValueError(
                    f"dataset {self.name!r} has separate parts; pass split= one of "
                    f"{list(self.split_names)}"
                )
            name = self.default_split
        for s in self.splits:
            if s.name == name:
                return s
        raise ValueError(
            f"dataset {self.name!r} has no split {name!r}; choose one of {list(self.split_names)}"
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (used by ``em5m datasets NAME``)."""
        return {
            "name": self.name,
            "title": self.title,
            "folder": self.folder,
            "modality": self.modality,
            "species": self.species,
            "sample": self.sample,
            "layout": self.layout,
            "voxel_size_nm_zyx": self.voxel_size,
            "voxel_size_note": self.voxel_size_note,
            "licence": self.licence,
            "citation": self.citation,
            "source": {
                "page": self.source.page,
                "base_url": self.source.base_url,
                "note": self.source.note,
            },
            "splits": {
                s.name: {
                    "description": s.description,
                    "shape_zyx": s.shape,
                    "dtype": s.dtype,
                    "voxel_size_nm_zyx": s.voxel_size,
                    "is_volume": s.is_volume,
                    "labelled": s.labelled,
                }
                for s in self.splits
            },
            "default_split": self.default_split,
            "labels": {lab.name: f"{lab.kind}: {lab.description}" for lab in self.labels},
            "class_names": self.class_names,
            "options": dict(self.options),
            "n_files": len(self.files),
        }


@dataclass(frozen=True, eq=False)
class EMDataset:
    """One loaded split of a reference dataset.

    Arrays are plain numpy in ``(z, y, x)`` order (a 2D image has ``z == 1``). Labels keep the
    image's shape; ``labels`` is None for unlabelled splits.

    Args:
        name: dataset name.
        split: split name.
        image: ``(z, y, x)`` uint8 or uint16.
        labels: named label arrays (see ``info.labels`` for each one's kind and meaning) or None.
        class_names: ``class_names[i]`` names value ``i`` of ``labels["classes"]``; None when
            the dataset has no multi-class label.
        voxel_size: nm along ``(z, y, x)``; None when the origin does not state it.
        is_volume: False when the first axis indexes independent 2D images.
        slice_names: one name per z index (file stem or index), for pairing and reporting.
        source_files: every file that was read.
        info: the registry entry (licence, citation, origin, ...).
        extras: auxiliary non-ground-truth arrays of the image's shape (e.g. gala's boundary
            probability), empty unless asked for.

    Examples:
        >>> from em5m import datasets
        >>> val = datasets.load("lucchi_pp", split="val")  # doctest: +SKIP
        >>> val.image.shape, val.labels["mitochondria"].dtype  # doctest: +SKIP
        ((33, 768, 1024), dtype('bool'))
        >>> val.image_volume().voxel_size  # doctest: +SKIP
        (5.0, 5.0, 5.0)
    """

    name: str
    split: str
    image: np.ndarray
    labels: dict[str, np.ndarray] | None
    class_names: tuple[str, ...] | None
    voxel_size: VoxelSize | None
    is_volume: bool
    slice_names: tuple[str, ...]
    source_files: tuple[Path, ...]
    info: DatasetInfo
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    axes: tuple[str, ...] = ("z", "y", "x")

    @property
    def licence(self) -> str:
        return self.info.licence

    @property
    def citation(self) -> str:
        return self.info.citation

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])

    def image_volume(self, index: int | None = None) -> Volume:
        """The image as an `em5m.Volume` carrying the voxel size.

        Args:
            index: take one 2D image (axes ``yx``). Needed when ``is_volume`` is False and there
                is more than one image: independent crops are not a z stack.

        Examples:
            >>> vol = datasets.load("isbi2012", split="train").image_volume()  # doctest: +SKIP
            >>> vol.axes, vol.voxel_size  # doctest: +SKIP
            (('z', 'y', 'x'), (50.0, 4.0, 4.0))
        """
        return self._as_volume(self.image, f"{self.name}/{self.split}", index)

    def label_volume(self, label: str, index: int | None = None) -> Volume:
        """One label array as an `em5m.Volume` (same rules as `image_volume`)."""
        if not self.labels or label not in self.labels:
            have = sorted(self.labels or {})
            raise KeyError(f"{self.name}/{self.split} has no label {label!r}; it has {have}")
        return self._as_volume(self.labels[label], f"{self.name}/{self.split}/{label}", index)

    def _as_volume(self, array: np.ndarray, source: str, index: int | None) -> Volume:
        meta = {"dataset": self.name, "split": self.split, "licence": self.licence}
        if index is None and not self.is_volume and array.shape[0] == 1:
            index = 0
        if index is not None:
            yx = None if self.voxel_size is None else self.voxel_size[1:]
            return Volume.from_array(
                array[index], axes=("y", "x"), voxel_size=yx, source=source, metadata=meta
            )
        if not self.is_volume:
            raise ValueError(
                f"{self.name}/{self.split} holds {array.shape[0]} independent 2D images, not a "
                "z stack; pass index= to get one of them"
            )
        return Volume.from_array(
            array, axes=("z", "y", "x"), voxel_size=self.voxel_size, source=source, metadata=meta
        )

    def __repr__(self) -> str:
        labels = {k: str(v.dtype) for k, v in (self.labels or {}).items()}
        return (
            f"EMDataset({self.name}/{self.split}, image={self.image.shape} {self.image.dtype}, "
            f"labels={labels or None}, voxel_size={self.voxel_size}, licence={self.licence!r})"
        )
