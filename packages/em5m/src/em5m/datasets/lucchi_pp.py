"""Lucchi++ mitochondria: mouse hippocampus CA1, FIB-SEM, 5 nm isotropic (training half only).

Layout: ``train/images/NNNN.png`` + ``train/labels/NNNN.png`` (0000..0164, 768 x 1024 uint8;
label 255 = mitochondrion, 0 = rest). Only the original training volume is in the shared data, so
EM-SSL holds out its last 33 slices as the validation split.

Splits:

- ``train``: slices 0..131 (132).
- ``val``: slices 132..164 (33), the EM-SSL validation split. Report it as
  "Lucchi++ val (last 33 slices of the training volume)" wherever a number is quoted.
- ``all``: all 165 slices (the default).
"""

from __future__ import annotations

from pathlib import Path

from em5m.datasets._files import check_paired, numbered_files, read_png, read_stack, select
from em5m.datasets.base import DatasetInfo, LabelInfo, Source, SplitData, SplitInfo
from em5m.datasets.download import pinned_files

NAME = "lucchi_pp"
VOXEL_SIZE = (5.0, 5.0, 5.0)
N_SLICES = 165
N_TRAIN = 132
_PNG = r"(\d+)\.png"
_SPLIT_SLICES = {
    "train": range(0, N_TRAIN),
    "val": range(N_TRAIN, N_SLICES),
    "all": range(0, N_SLICES),
}


def load_split(root: Path, split: str) -> SplitData:
    """Read one split from the dataset folder ``root``.

    Args:
        root: the ``lucchi_pp`` folder.
        split: ``train``, ``val`` or ``all``.
    """
    images = numbered_files(root / "train" / "images", _PNG)
    labels = numbered_files(root / "train" / "labels", _PNG)
    check_paired(images, labels, root / "train")
    wanted = _SPLIT_SLICES[split]
    img_files = select(images, wanted, root / "train" / "images")
    lab_files = select(labels, wanted, root / "train" / "labels")
    return SplitData(
        image=read_stack(img_files, read_png),
        labels={
            "mitochondria": read_stack(lab_files, allowed=(0, 255), convert=lambda a: a == 255)
        },
        slice_names=tuple(p.stem for p in img_files),
        source_files=tuple(img_files + lab_files),
    )


def _split(name: str, description: str, n: int) -> SplitInfo:
    return SplitInfo(name, description, (n, 768, 1024), "uint8", VOXEL_SIZE)


INFO = DatasetInfo(
    name=NAME,
    title="Lucchi++ mitochondria, mouse hippocampus CA1, FIB-SEM (165 x 768 x 1024)",
    folder="lucchi_pp",
    modality="FIB-SEM",
    species="Mus musculus",
    sample="hippocampus CA1",
    layout="train/images/NNNN.png, train/labels/NNNN.png (0000..0164)",
    voxel_size=VOXEL_SIZE,
    voxel_size_note="5 nm isotropic (shared data README; Lucchi et al. 2012)",
    licence="EPFL public research release (research use; cite the authors)",
    citation=(
        "Lucchi A., Smith K., Achanta R., Knott G., Fua P. (2012) Supervoxel-based segmentation "
        "of mitochondria in EM image stacks with learned shape features. IEEE Trans. Med. "
        "Imaging 31(2): 474-486. Casser V., Kang K., Pfister H., Haehn D. (2020) Fast "
        "mitochondria detection for connectomics. MIDL 2020, arXiv:1812.06024 (Lucchi++)."
    ),
    source=Source(
        page="https://casser.io/connectomics/",
        base_url=None,
        note=(
            "Distributed as an archive from the Lucchi++ page; its exact file URL, layout and "
            "checksum are not pinned here, so there is no automatic download. The per-file "
            "sha256 of the slices this loader reads are pinned in checksums.json."
        ),
    ),
    splits=(
        _split("train", "slices 0..131", N_TRAIN),
        _split("val", "slices 132..164, the EM-SSL validation split", N_SLICES - N_TRAIN),
        _split("all", "all 165 slices of the training volume", N_SLICES),
    ),
    default_split="all",
    labels=(LabelInfo("mitochondria", "mask", "label PNG value 255"),),
    class_names=None,
    options={},
    files=pinned_files(NAME),
    loader=load_split,
)
