"""Janelia FlyEM NeuroProof example: Drosophila medulla, FIB-SEM, 250^3 at 10 nm isotropic.

Layout under ``training_sample2/``: ``grayscale_maps/iso.NNNN.png`` (2600..2849; z = file order)
and ``groundtruth.h5.gz`` (gzipped HDF5: ``stack`` (250, 250, 250) int32 supervoxel ids in z, y, x
order, ``transforms`` (N, 2) supervoxel -> neuron). Neuron ids are
``lut[stack]`` with ``lut[t[:, 0]] = t[:, 1]``: 526 distinct ids, dense (id 0 covers a few hundred
voxels). The gzip is decompressed in memory; the data folder is never written to.

One split, ``all`` (the default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from em5m.datasets._files import numbered_files, read_gzip_h5, read_png, read_stack
from em5m.datasets.base import DatasetInfo, LabelInfo, Source, SplitData, SplitInfo
from em5m.datasets.download import pinned_files
from em5m.errors import InvalidVolumeError

NAME = "flyem_medulla"
VOXEL_SIZE = (10.0, 10.0, 10.0)
SHAPE = (250, 250, 250)
GROUNDTRUTH = "training_sample2/groundtruth.h5.gz"


def neuron_ids(supervoxels: np.ndarray, transforms: np.ndarray, path: Path) -> np.ndarray:
    """Map supervoxel ids to neuron ids through the ``transforms`` table.

    Every supervoxel in the stack must have a row in the table; a missing one would silently
    become neuron 0, so it is an error instead.

    Args:
        supervoxels: int array of supervoxel ids.
        transforms: ``(N, 2)`` rows ``(supervoxel, neuron)``.
        path: the file, for error messages.

    Examples:
        >>> sv = np.array([[1, 2], [2, 3]])
        >>> neuron_ids(sv, np.array([[1, 10], [2, 10], [3, 20]]), Path("gt.h5")).tolist()
        [[10, 10], [10, 20]]
    """
    if transforms.ndim != 2 or transforms.shape[1] != 2:
        raise InvalidVolumeError(path, f"transforms must be (N, 2), got {transforms.shape}")
    if supervoxels.min() < 0 or transforms.min() < 0:
        raise InvalidVolumeError(path, "negative supervoxel or neuron ids")
    size = int(max(supervoxels.max(), transforms[:, 0].max())) + 1
    known = np.zeros(size, dtype=bool)
    known[transforms[:, 0]] = True
    if not known[supervoxels].all():
        raise InvalidVolumeError(path, "some supervoxels have no row in 'transforms'")
    # Neuron ids fit in int32 here (max ~1.4e5); keep the smallest exact type to save memory.
    dtype = np.int32 if transforms[:, 1].max() < 2**31 else np.int64
    lut = np.zeros(size, dtype=dtype)
    lut[transforms[:, 0]] = transforms[:, 1]
    return lut[supervoxels]


def load_split(root: Path, split: str, *, supervoxels: bool = True) -> SplitData:
    """Read the volume from the dataset folder ``root``.

    Args:
        root: the ``flyem_fibsem_medulla`` folder.
        split: ``all``.
        supervoxels: also return the supervoxel ids (``labels["supervoxels"]``, 62 MB).
    """
    grey = numbered_files(root / "training_sample2" / "grayscale_maps", r"iso\.(\d+)\.png")
    grey_files = list(grey.values())
    gt_path = root / GROUNDTRUTH
    gt = read_gzip_h5(gt_path, ["stack", "transforms"])
    stack = gt["stack"]
    if stack.shape != SHAPE:
        raise InvalidVolumeError(gt_path, f"'stack' is {stack.shape}, expected {SHAPE}")
    labels = {"neurons": neuron_ids(stack, gt["transforms"], gt_path)}
    if supervoxels:
        labels["supervoxels"] = stack
    return SplitData(
        image=read_stack(grey_files, read_png),
        labels=labels,
        slice_names=tuple(p.stem for p in grey_files),
        source_files=(*grey_files, gt_path),
    )


INFO = DatasetInfo(
    name=NAME,
    title="FlyEM medulla, Drosophila, FIB-SEM, dense neurons (250^3, 10 nm iso)",
    folder="flyem_fibsem_medulla",
    modality="FIB-SEM",
    species="Drosophila melanogaster",
    sample="distal medulla (optic lobe)",
    layout="training_sample2/grayscale_maps/iso.NNNN.png (2600..2849), "
    "training_sample2/groundtruth.h5.gz",
    voxel_size=VOXEL_SIZE,
    voxel_size_note="10 nm isotropic (training_sample2/README.txt of the origin)",
    licence="HHMI BSD-3-clause-style licence (LICENSE.txt of neuroproof_examples)",
    citation=(
        "Janelia FlyEM NeuroProof examples, training_sample2 "
        "(https://github.com/janelia-flyem/neuroproof_examples)"
    ),
    source=Source(
        page="https://github.com/janelia-flyem/neuroproof_examples",
        base_url="https://raw.githubusercontent.com/janelia-flyem/neuroproof_examples/HEAD/",
        note=(
            "Per-file download from the GitHub repository, each file checked against its sha256. "
            "Licence: the repository's LICENSE.txt is an HHMI BSD-3-clause-style text; the shared "
            "data README calls it Creative Commons attribution terms. Attribute Janelia FlyEM and "
            "keep the copyright notice either way."
        ),
    ),
    splits=(SplitInfo("all", "the whole 250^3 volume", SHAPE, "uint8", VOXEL_SIZE),),
    default_split="all",
    labels=(
        LabelInfo("neurons", "instances", "lut[stack] via 'transforms'; 526 ids, dense"),
        LabelInfo("supervoxels", "instances", "'stack' of groundtruth.h5 (21317 supervoxels)"),
    ),
    class_names=None,
    options={"supervoxels": "also return labels['supervoxels'] (default True)"},
    files=pinned_files(NAME),
    loader=load_split,
)
