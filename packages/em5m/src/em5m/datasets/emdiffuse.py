"""EMDiffuse demo inputs: unpaired images for restoration, no labels and no clean targets.

Layout: ``denoise_crop_patches/1/0/R_C.tif`` (R, C = 0..6: 49 overlapping 256 x 256 uint16 crops
of one noisy raw TEM image, ordered row-major by (R, C)), ``microns_demo/{0,1}.tif`` (mouse
cortex) and ``mouse_liver_demo/{0,1}.tif``, 256 x 256 uint8.

Splits (each is a stack of independent 2D images, ``is_volume=False``; no default):
``denoise_crops`` (49, uint16), ``microns`` (2, uint8), ``mouse_liver`` (2, uint8).
Voxel size: not stated by the origin.

For restoration numbers, degrade clean data yourself (see the shared data README); these inputs
have no ground truth.
"""

from __future__ import annotations

import re
from pathlib import Path

from em5m.datasets._files import numbered_files, read_stack, read_tif
from em5m.datasets.base import DatasetInfo, Source, SplitData, SplitInfo
from em5m.datasets.download import pinned_files
from em5m.errors import VolumeNotFoundError

NAME = "emdiffuse"
CROPS = "denoise_crop_patches/1/0"
_FOLDERS = {"microns": "microns_demo", "mouse_liver": "mouse_liver_demo"}


def _crop_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise VolumeNotFoundError(folder, "folder does not exist")
    rx = re.compile(r"(\d+)_(\d+)\.tif")
    found = {}
    for p in folder.iterdir():
        m = rx.fullmatch(p.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = p
    if not found:
        raise VolumeNotFoundError(folder, "no R_C.tif crops")
    return [found[k] for k in sorted(found)]


def load_split(root: Path, split: str) -> SplitData:
    """Read one split from the dataset folder ``root``.

    Args:
        root: the ``emdiffuse_demo`` folder.
        split: ``denoise_crops``, ``microns`` or ``mouse_liver``.
    """
    if split == "denoise_crops":
        files = _crop_files(root / CROPS)
    else:
        files = list(numbered_files(root / _FOLDERS[split], r"(\d+)\.tif").values())
    return SplitData(
        image=read_stack(files, read_tif),
        labels=None,
        slice_names=tuple(p.stem for p in files),
        source_files=tuple(files),
    )


def _split(name: str, description: str, n: int, dtype: str) -> SplitInfo:
    return SplitInfo(name, description, (n, 256, 256), dtype, None, False, False)


INFO = DatasetInfo(
    name=NAME,
    title="EMDiffuse demo inputs: noisy TEM crops (uint16), mouse cortex and liver slices",
    folder="emdiffuse_demo",
    modality="TEM",
    species="Mus musculus (microns, mouse_liver); not stated for the denoise crops",
    sample="cortex (microns), liver (mouse_liver), not stated (denoise crops)",
    layout="denoise_crop_patches/1/0/R_C.tif (R, C = 0..6), microns_demo/{0,1}.tif, "
    "mouse_liver_demo/{0,1}.tif",
    voxel_size=None,
    voxel_size_note="not stated by the origin",
    licence="MIT (EMDiffuse repository)",
    citation=(
        "Lu C. et al. (2024) Diffusion-based deep learning method for augmenting ultrastructural "
        "imaging and volume electron microscopy. Nat. Commun. 15: 4677. "
        "(https://github.com/Luchixiang/EMDiffuse)"
    ),
    source=Source(
        page="https://github.com/Luchixiang/EMDiffuse (demo/)",
        base_url="https://raw.githubusercontent.com/Luchixiang/EMDiffuse/HEAD/demo/",
        note="Per-file download from the GitHub repository, each file checked against its sha256.",
    ),
    splits=(
        _split("denoise_crops", "49 overlapping crops of one noisy raw TEM image", 49, "uint16"),
        _split("microns", "2 mouse cortex slices", 2, "uint8"),
        _split("mouse_liver", "2 mouse liver slices", 2, "uint8"),
    ),
    default_split=None,
    labels=(),
    class_names=None,
    options={},
    files=pinned_files(NAME),
    loader=load_split,
)
