"""gala example data: two small Drosophila FIB-SEM volumes with dense neuron labels.

Layout: ``{train,test}-image.h5`` (``stack`` (50, 100, 200) uint8; the same slices are also
shipped as PNGs, not read here), ``{train,test}-gt.lzf.h5`` dense neuron ids (0 = boundary between
neurons), ``{train,test}-p1.lzf.h5`` float32 boundary probability and ``{train,test}-ws.lzf.h5``
watershed supervoxels. The probability and watershed are predictions shipped with the data, not
ground truth: ask for them with ``boundary_probability=True`` / ``watershed=True`` and they come
back in ``EMDataset.extras``.

Splits ``train`` and ``test`` as shipped; no default. Voxel size: not stated by the origin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from em5m.datasets._files import read_h5
from em5m.datasets.base import DatasetInfo, LabelInfo, Source, SplitData, SplitInfo
from em5m.datasets.download import pinned_files
from em5m.errors import InvalidVolumeError

NAME = "gala"
SHAPE = (50, 100, 200)


def load_split(
    root: Path, split: str, *, boundary_probability: bool = False, watershed: bool = False
) -> SplitData:
    """Read one split from the dataset folder ``root``.

    Args:
        root: the ``gala_fibsem`` folder.
        split: ``train`` or ``test``.
        boundary_probability: add ``extras["boundary_probability"]`` (float32, from ``*-p1``).
        watershed: add ``extras["watershed"]`` (int32 supervoxels, from ``*-ws``).
    """
    image_path = root / f"{split}-image.h5"
    gt_path = root / f"{split}-gt.lzf.h5"
    neurons = read_h5(gt_path)
    if neurons.min() < 0:
        raise InvalidVolumeError(gt_path, "negative neuron ids")
    files = [image_path, gt_path]
    extras: dict[str, np.ndarray] = {}
    if boundary_probability:
        files.append(root / f"{split}-p1.lzf.h5")
        extras["boundary_probability"] = read_h5(files[-1])
    if watershed:
        files.append(root / f"{split}-ws.lzf.h5")
        extras["watershed"] = read_h5(files[-1])
    image = read_h5(image_path)
    return SplitData(
        image=image,
        labels={"neurons": neurons},
        slice_names=tuple(f"{split}/{z}" for z in range(image.shape[0])),
        source_files=tuple(files),
        extras=extras,
    )


INFO = DatasetInfo(
    name=NAME,
    title="gala example volumes, Drosophila FIB-SEM, dense neurons (2 x 50 x 100 x 200)",
    folder="gala_fibsem",
    modality="FIB-SEM",
    species="Drosophila melanogaster",
    sample="not stated",
    layout="{train,test}-image.h5, {train,test}-gt.lzf.h5, {train,test}-p1.lzf.h5, "
    "{train,test}-ws.lzf.h5 (HDF5 dataset 'stack')",
    voxel_size=None,
    voxel_size_note="not stated by the origin; None rather than a guess",
    licence="BSD-3-clause style (HHMI), the gala repository licence",
    citation=(
        "Nunez-Iglesias J., Kennedy R., Parag T., Shi J., Chklovskii D. B. (2013) Machine "
        "learning of hierarchical clustering to segment 2D and 3D images. PLoS ONE 8(8): e71715."
    ),
    source=Source(
        page="https://github.com/janelia-flyem/gala (tests/example-data)",
        base_url="https://raw.githubusercontent.com/janelia-flyem/gala/HEAD/tests/example-data/",
        note="Per-file download from the GitHub repository, each file checked against its sha256.",
    ),
    splits=(
        SplitInfo("train", "train volume as shipped", SHAPE, "uint8", None),
        SplitInfo("test", "test volume as shipped", SHAPE, "uint8", None),
    ),
    default_split=None,
    labels=(LabelInfo("neurons", "instances", "*-gt.lzf.h5; dense, 0 = boundary"),),
    class_names=None,
    options={
        "boundary_probability": "add extras['boundary_probability'] (float32, *-p1)",
        "watershed": "add extras['watershed'] (int32 supervoxels, *-ws)",
    },
    files=pinned_files(NAME),
    loader=load_split,
)
