"""Drosophila larva VNC ssTEM, multi-class (Gerhard et al. 2013), 20 x 1024 x 1024.

Layout under ``stack1/``: ``raw/NN.tif``, merged labels ``labels/labels000000NN.png`` and binary
masks ``membranes/NN.png``, ``mitochondria/NN.png``, ``synapses/NN.png`` (NN = 00..19).

Merged grey values (origin README): 0 / 32 / 64 / 96 membrane at 0 / 45 / 90 / 135 degrees,
128 membrane junction, 159 glia/extracellular, 191 mitochondrion, 223 synapse, 255 intracellular.
By default they become 5 class indices (the classes of the organelle-2d model):

    0 membrane (0, 32, 64, 96, 128)  1 mitochondrion (191)  2 synapse (223)
    3 glia_extracellular (159)       4 intracellular (255)

``membrane_orientations=True`` keeps the four orientations and the junction as separate
classes (9 in all). The binary masks are given as bool (grey > 127). Note the binary membrane
mask is wider than the merged membrane classes (about 20 % vs 17 % of pixels): they are separate
annotations, use one consistently.

Splits: ``all`` (sections 00..19, default), ``train`` (00..15), ``val`` (16..19): the last four
sections, the 80/20 split the origin README suggests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from em5m.datasets._files import (
    check_paired,
    numbered_files,
    read_png,
    read_stack,
    read_tif,
    select,
)
from em5m.datasets.base import DatasetInfo, LabelInfo, Source, SplitData, SplitInfo
from em5m.datasets.download import pinned_files

NAME = "drosophila_vnc"
VOXEL_SIZE = (50.0, 4.6, 4.6)
N_SECTIONS = 20

CLASS_NAMES = ("membrane", "mitochondrion", "synapse", "glia_extracellular", "intracellular")
CLASS_NAMES_ORIENTED = (
    "membrane_0deg",
    "membrane_45deg",
    "membrane_90deg",
    "membrane_135deg",
    "membrane_junction",
    "mitochondrion",
    "synapse",
    "glia_extracellular",
    "intracellular",
)
_GREY_5 = {0: 0, 32: 0, 64: 0, 96: 0, 128: 0, 191: 1, 223: 2, 159: 3, 255: 4}
_GREY_9 = {0: 0, 32: 1, 64: 2, 96: 3, 128: 4, 191: 5, 223: 6, 159: 7, 255: 8}
MASKS = ("membranes", "mitochondria", "synapses")
_SPLIT_SECTIONS = {"all": range(0, 20), "train": range(0, 16), "val": range(16, 20)}


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for grey, cls in mapping.items():
        lut[grey] = cls
    return lut


def load_split(root: Path, split: str, *, membrane_orientations: bool = False) -> SplitData:
    """Read one split from the dataset folder ``root``.

    Args:
        root: the ``drosophila_vnc_sstem`` folder.
        split: ``all``, ``train`` or ``val``.
        membrane_orientations: keep the 4 membrane orientations and the junction as classes.
    """
    stack = root / "stack1"
    raw = numbered_files(stack / "raw", r"(\d+)\.tif")
    merged = numbered_files(stack / "labels", r"labels(\d+)\.png")
    masks = {m: numbered_files(stack / m, r"(\d+)\.png") for m in MASKS}
    for other in (merged, *masks.values()):
        check_paired(raw, other, stack)

    wanted = _SPLIT_SECTIONS[split]
    raw_files = select(raw, wanted, stack / "raw")
    merged_files = select(merged, wanted, stack / "labels")
    mapping = _GREY_9 if membrane_orientations else _GREY_5
    lut = _lut(mapping)
    labels = {"classes": read_stack(merged_files, allowed=mapping, convert=lambda a: lut[a])}
    files = raw_files + merged_files
    for m, found in masks.items():
        mask_files = select(found, wanted, stack / m)
        labels[m] = read_stack(mask_files, read_png, convert=lambda a: a > 127)
        files += mask_files
    return SplitData(
        image=read_stack(raw_files, read_tif),
        labels=labels,
        slice_names=tuple(p.stem for p in raw_files),
        source_files=tuple(files),
        class_names=CLASS_NAMES_ORIENTED if membrane_orientations else CLASS_NAMES,
    )


def _split(name: str, description: str, n: int) -> SplitInfo:
    return SplitInfo(name, description, (n, 1024, 1024), "uint8", VOXEL_SIZE)


INFO = DatasetInfo(
    name=NAME,
    title="Drosophila larva VNC, ssTEM, 5 classes + binary masks (20 x 1024^2)",
    folder="drosophila_vnc_sstem",
    modality="ssTEM",
    species="Drosophila melanogaster (third instar larva)",
    sample="ventral nerve cord",
    layout=(
        "stack1/raw/NN.tif, stack1/labels/labels000000NN.png, "
        "stack1/{membranes,mitochondria,synapses}/NN.png (NN = 00..19)"
    ),
    voxel_size=VOXEL_SIZE,
    voxel_size_note=(
        "4.6 x 4.6 nm pixels; sections are 45-50 nm thick per the origin, 50 nm is used as the "
        "z spacing (an upper value, not a measurement per section)"
    ),
    licence="CC BY-NC-SA 3.0 (non-commercial; share alike)",
    citation=(
        "Gerhard S., Funke J., Martel J., Cardona A., Fetter R. (2013) Segmented anisotropic "
        "ssTEM dataset of neural tissue. figshare. doi:10.6084/m9.figshare.856713"
    ),
    source=Source(
        page="https://doi.org/10.6084/m9.figshare.856713 "
        "(https://github.com/unidesigner/groundtruth-drosophila-vnc)",
        base_url=("https://raw.githubusercontent.com/unidesigner/groundtruth-drosophila-vnc/HEAD/"),
        note="Per-file download from the GitHub repository, each file checked against its sha256.",
    ),
    splits=(
        _split("all", "sections 00..19", N_SECTIONS),
        _split("train", "sections 00..15", 16),
        _split("val", "sections 16..19 (the last four), held out for validation", 4),
    ),
    default_split="all",
    labels=(
        LabelInfo("classes", "classes", "merged label PNG mapped to class_names (see module)"),
        LabelInfo("membranes", "mask", "stack1/membranes/NN.png grey > 127"),
        LabelInfo("mitochondria", "mask", "stack1/mitochondria/NN.png grey > 127"),
        LabelInfo("synapses", "mask", "stack1/synapses/NN.png grey > 127"),
    ),
    class_names=CLASS_NAMES,
    options={
        "membrane_orientations": "keep the 4 membrane orientations + junction (9 classes)",
    },
    files=pinned_files(NAME),
    loader=load_split,
)
