"""ISBI 2012 EM segmentation challenge: Drosophila larva VNC, serial-section TEM, 512 x 512.

Layout: ``train/image/{0..29}.png`` + ``train/label/{0..29}.png`` (label 0 = membrane,
255 = cell interior) and ``test/{0..29}.png`` (the challenge's test stack; its labels were never
released). Files are ordered by their number, not lexically.

Splits (the 30 labelled sections are one 3D stack; val is its last 5 sections so that train and
val are contiguous, non-interleaved blocks):

- ``train``: labelled sections 0..24 (25).
- ``val``: labelled sections 25..29 (5), held out for validation by EM-SSL.
- ``all_labelled``: sections 0..29 (30) = train + val, for a final fit after validation.
- ``test``: the 30 unlabelled challenge test sections.
"""

from __future__ import annotations

from pathlib import Path

from em5m.datasets._files import check_paired, numbered_files, read_stack, select
from em5m.datasets.base import DatasetInfo, LabelInfo, Source, SplitData, SplitInfo
from em5m.datasets.download import pinned_files

NAME = "isbi2012"
VOXEL_SIZE = (50.0, 4.0, 4.0)
_PNG = r"(\d+)\.png"
_SPLIT_SECTIONS = {
    "train": range(0, 25),
    "val": range(25, 30),
    "all_labelled": range(0, 30),
    "test": range(0, 30),
}


def load_split(root: Path, split: str) -> SplitData:
    """Read one split from the dataset folder ``root``.

    Args:
        root: the ``isbi2012`` folder.
        split: ``train``, ``val``, ``all_labelled`` or ``test``.
    """
    sections = _SPLIT_SECTIONS[split]
    if split == "test":
        files = select(numbered_files(root / "test", _PNG), sections, root / "test")
        return SplitData(
            image=read_stack(files),
            labels=None,
            slice_names=tuple(f"test/{p.stem}" for p in files),
            source_files=tuple(files),
        )
    images = numbered_files(root / "train" / "image", _PNG)
    labels = numbered_files(root / "train" / "label", _PNG)
    check_paired(images, labels, root / "train")
    img_files = select(images, sections, root / "train" / "image")
    lab_files = select(labels, sections, root / "train" / "label")
    membrane = read_stack(lab_files, allowed=(0, 255), convert=lambda a: a == 0)
    return SplitData(
        image=read_stack(img_files),
        labels={"membrane": membrane, "cell_interior": ~membrane},
        slice_names=tuple(f"train/{p.stem}" for p in img_files),
        source_files=tuple(img_files + lab_files),
    )


def _split(name: str, description: str, n: int, labelled: bool = True) -> SplitInfo:
    return SplitInfo(name, description, (n, 512, 512), "uint8", VOXEL_SIZE, True, labelled)


INFO = DatasetInfo(
    name=NAME,
    title="ISBI 2012 neuronal membranes, Drosophila larva VNC, ssTEM (30 + 30 x 512^2)",
    folder="isbi2012",
    modality="ssTEM",
    species="Drosophila melanogaster (first instar larva)",
    sample="ventral nerve cord",
    layout="train/image/{0..29}.png, train/label/{0..29}.png, test/{0..29}.png",
    voxel_size=VOXEL_SIZE,
    voxel_size_note="4 x 4 nm pixels, 50 nm sections (shared data README; challenge page)",
    licence="public research release (ISBI 2012 challenge data; cite the authors)",
    citation=(
        "Cardona A. et al. (2010) An integrated micro- and macroarchitectural analysis of the "
        "Drosophila brain by computer-assisted serial section electron microscopy. PLoS Biol "
        "8(10): e1000502. Arganda-Carreras I. et al. (2015) Crowdsourcing the creation of image "
        "segmentation algorithms for connectomics. Front. Neuroanat. 9: 142."
    ),
    source=Source(
        page="https://imagej.net/events/isbi-2012-segmentation-challenge",
        base_url="https://raw.githubusercontent.com/zhixuhao/unet/HEAD/data/membrane/",
        note=(
            "Per-file download from the zhixuhao/unet GitHub mirror, which ships the challenge "
            "stacks as PNG slices in exactly this layout (hoangp/isbi-datasets mirrors them as "
            "JPEG, which is lossy, so it is not used). Each file is checked against its sha256."
        ),
    ),
    splits=(
        _split("train", "labelled sections 0..24", 25),
        _split("val", "labelled sections 25..29, held out for validation", 5),
        _split("all_labelled", "labelled sections 0..29 (train + val)", 30),
        _split("test", "the 30 challenge test sections, no labels", 30, labelled=False),
    ),
    default_split=None,
    labels=(
        LabelInfo("membrane", "mask", "label PNG value 0 (membrane)"),
        LabelInfo("cell_interior", "mask", "label PNG value 255 (cell interior) = ~membrane"),
    ),
    class_names=None,
    options={},
    files=pinned_files(NAME),
    loader=load_split,
)
