"""The three unlabeled example crops shipped with the OmniEM package.

Layout: ``2d_MitoEM_H_0_0_0.tif`` (224 x 224), ``3d_AxonEM-H-0-0-0_0_0_0.tif`` (16 x 256 x 256)
and ``gly-z=0.tif`` (168 x 336), all uint8, no labels.

Each file is its own split (their shapes differ): ``mitoem_h`` (one 2D image), ``axonem_h``
(a 16-slice volume) and ``gly`` (one 2D image). MitoEM-H and AxonEM-H are 8 x 8 x 30 nm
(x, y, z); the voxel size of ``gly`` is not stated.
"""

from __future__ import annotations

from pathlib import Path

from em5m.datasets._files import read_tif
from em5m.datasets.base import DatasetInfo, Source, SplitData, SplitInfo
from em5m.datasets.download import pinned_files
from em5m.errors import InvalidVolumeError

NAME = "omniem_examples"
MITOEM_VOXEL = (30.0, 8.0, 8.0)
_FILES = {
    "mitoem_h": "2d_MitoEM_H_0_0_0.tif",
    "axonem_h": "3d_AxonEM-H-0-0-0_0_0_0.tif",
    "gly": "gly-z=0.tif",
}


def load_split(root: Path, split: str) -> SplitData:
    """Read one example file from the dataset folder ``root``.

    Args:
        root: the ``omniem_examples`` folder.
        split: ``mitoem_h``, ``axonem_h`` or ``gly``.
    """
    path = root / _FILES[split]
    image = read_tif(path)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise InvalidVolumeError(path, f"expected a 2D image or 3D stack, got {image.shape}")
    return SplitData(
        image=image,
        labels=None,
        slice_names=tuple(f"{path.stem}/{z}" for z in range(image.shape[0])),
        source_files=(path,),
    )


INFO = DatasetInfo(
    name=NAME,
    title="OmniEM package examples: MitoEM-H 2D, AxonEM-H 3D and 'gly' crops (unlabeled)",
    folder="omniem_examples",
    modality="SEM (MitoEM-H, AxonEM-H); not stated (gly)",
    species="Homo sapiens (MitoEM-H, AxonEM-H); not stated (gly)",
    sample="cortex (MitoEM-H, AxonEM-H); not stated (gly)",
    layout="2d_MitoEM_H_0_0_0.tif, 3d_AxonEM-H-0-0-0_0_0_0.tif, gly-z=0.tif",
    voxel_size=None,
    voxel_size_note="per split: MitoEM-H / AxonEM-H 8 x 8 x 30 nm (x, y, z); gly not stated",
    licence="MIT (OmniEM package examples); MitoEM/AxonEM crops keep their own dataset terms",
    citation=(
        "He L., Shi R., Wang W., Fang G., Cai Y., Ma L. Unifying the Electron Microscopy "
        "Multiverse through a Large-scale Foundation Model (under review). Crops from MitoEM "
        "(Wei D. et al., MICCAI 2020) and AxonEM (Wei D. et al., MICCAI 2021)."
    ),
    source=Source(
        page="https://github.com/pku-maleilab/omniem-package (examples/)",
        base_url="https://raw.githubusercontent.com/pku-maleilab/omniem-package/main/examples/",
        note="URLs as given in the package README; each file checked against its sha256.",
    ),
    splits=(
        SplitInfo("mitoem_h", "one 2D image", (1, 224, 224), "uint8", MITOEM_VOXEL, False, False),
        SplitInfo("axonem_h", "16 slices", (16, 256, 256), "uint8", MITOEM_VOXEL, True, False),
        SplitInfo("gly", "one 2D image", (1, 168, 336), "uint8", None, False, False),
    ),
    default_split=None,
    labels=(),
    class_names=None,
    options={},
    files=pinned_files(NAME),
    loader=load_split,
)
