"""A directory of 2D slices (PNG, TIFF, JPEG, BMP) as a z-stack; also a single 2D image file.

Slices are sorted naturally (``2.png`` before ``10.png``) and become one dask block each. At open
only the headers are read (PIL and tifffile parse them without decoding pixels) to check that all
slices agree on shape and dtype; the first one that does not is named in the error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import tifffile
from PIL import Image

from em5m.errors import InvalidVolumeError
from em5m.io._build import build_volume
from em5m.io._checks import check_level
from em5m.io._lazy import FunctionReader, Region
from em5m.io._sniff import require_kind, sniff
from em5m.volume import Volume

#: Slice file extensions and the family each belongs to (a stack uses one family).
IMAGE_EXTENSIONS: dict[str, str] = {
    ".png": "png",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
}
#: Single files this reader opens as one 2D image (single TIFFs go to the TIFF reader).
SINGLE_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# PIL mode -> (dtype, channels); 'P' keeps palette indices (label images are often paletted).
_PIL_MODES: dict[str, tuple[str, int]] = {
    "1": ("bool", 1),
    "L": ("uint8", 1),
    "P": ("uint8", 1),
    "I;16": ("uint16", 1),
    "I;16L": ("uint16", 1),
    "I;16B": ("uint16", 1),
    "I;16N": ("uint16", 1),
    "I": ("int32", 1),
    "F": ("float32", 1),
    "LA": ("uint8", 2),
    "PA": ("uint8", 2),
    "RGB": ("uint8", 3),
    "YCbCr": ("uint8", 3),
    "RGBA": ("uint8", 4),
    "CMYK": ("uint8", 4),
}


def natural_key(name: str) -> list[object]:
    """Sort key treating digit runs as numbers.

    Examples:
        >>> sorted(["10.png", "2.png", "1.png"], key=natural_key)
        ['1.png', '2.png', '10.png']
    """
    return [(0, int(t), t) if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name)]


def list_slices(directory: str) -> list[str]:
    """Image files in ``directory`` (not hidden), naturally sorted; one extension family only."""
    names = [
        n
        for n in os.listdir(directory)
        if not n.startswith(".")
        and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
        and os.path.isfile(os.path.join(directory, n))
    ]
    families = {IMAGE_EXTENSIONS[os.path.splitext(n)[1].lower()] for n in names}
    if len(families) > 1:
        raise InvalidVolumeError(
            directory,
            f"mixes slice formats {sorted(families)}; keep one image format per "
            "directory so the slice order is unambiguous",
        )
    return sorted(names, key=natural_key)


def can_open(path: str) -> bool:
    """True for a directory holding image slices, or a single PNG/JPEG/BMP file."""
    if os.path.isdir(path):
        try:
            return bool(list_slices(path))
        except InvalidVolumeError:
            return True  # ours to report
    if os.path.isfile(path):
        if path.lower().endswith(SINGLE_IMAGE_EXTENSIONS):
            return True
        return sniff(path) in ("png", "jpeg", "bmp")
    return False


def read_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one 2D image file without decoding its pixels.

    Raises:
        UnsupportedFormatError: extension and content disagree.
        InvalidVolumeError: unreadable, or not a 2D image.
    """
    family = IMAGE_EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if family is None:  # a single file with another extension, accepted by content
        family = sniff(path) or "image"
    kind = require_kind(path, {family}, family.upper())
    try:
        if kind == "tiff":
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype, codes = tuple(series.shape), np.dtype(series.dtype), series.axes
            if codes not in ("YX", "YXS"):
                raise InvalidVolumeError(
                    path, f"slice is not a 2D image (TIFF axes {codes}, shape {shape})"
                )
            return shape, dtype
        with Image.open(path) as im:
            mode, (width, height) = im.mode, im.size
    except InvalidVolumeError:
        raise
    except Exception as exc:
        raise InvalidVolumeError(
            path, f"cannot read image header ({type(exc).__name__}: {exc})"
        ) from None
    if mode not in _PIL_MODES:
        raise InvalidVolumeError(path, f"unsupported image mode {mode!r}")
    dtype_name, channels = _PIL_MODES[mode]
    shape = (height, width) if channels == 1 else (height, width, channels)
    return shape, np.dtype(dtype_name)


def read_image(path: str) -> np.ndarray:
    """Decode one 2D image file."""
    if sniff(path) == "tiff":
        return tifffile.imread(path)
    with Image.open(path) as im:
        return np.asarray(im)


def open(  # noqa: A001 - the reader protocol is ``open(uri) -> Volume``
    path: str,
    *,
    level: int = 0,
    dataset: str | None = None,
    axes: str | Sequence[str] | None = None,
    check_finite: bool = True,
) -> Volume:
    """Open a directory of 2D slices as a lazy (z, y, x) volume, or one image file as (y, x).

    Args:
        path: the directory (or a single PNG/JPEG/BMP file).
        level: must be 0 (slices have no pyramid).
        dataset: not used (must be None).
        axes: override axes (stored order is z, y, x[, c] for RGB slices).
        check_finite: NaN/inf checks for float slices.

    Examples:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> d = tempfile.mkdtemp()
        >>> for i in (0, 1, 10, 2):
        ...     Image.fromarray(np.full((4, 5), i, np.uint8)).save(f"{d}/{i}.png")
        >>> v = open(d)
        >>> v.axes, v.shape, v.data[:, 0, 0].compute().tolist()
        (('z', 'y', 'x'), (4, 4, 5), [0, 1, 2, 10])
    """
    check_level(path, level, 1)
    if dataset is not None:
        raise InvalidVolumeError(path, "image slices have no inner datasets (dataset= given)")
    single = os.path.isfile(path)
    files = [path] if single else [os.path.join(path, n) for n in list_slices(path)]
    if not files:
        raise InvalidVolumeError(
            path, f"directory has no image slices ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    shape0, dtype0 = read_header(files[0])
    for f in files[1:]:
        shape, dtype = read_header(f)
        if shape != shape0 or dtype != dtype0:
            raise InvalidVolumeError(
                f,
                f"slice has shape {shape} and dtype {dtype}, but the first slice "
                f"{os.path.basename(files[0])} has shape {shape0} and dtype {dtype0}; all slices "
                "in a stack must agree",
            )

    def read_region(region: Region) -> np.ndarray:
        z, rest = (slice(0, 1), region) if single else (region[0], region[1:])
        planes = []
        for f in files[z.start : z.stop]:
            img = read_image(f)
            if img.shape != shape0 or img.dtype != dtype0:
                raise InvalidVolumeError(
                    f,
                    f"slice changed on disk: decoded shape {img.shape} dtype {img.dtype}, "
                    f"expected {shape0} {dtype0}",
                )
            planes.append(img[rest])
        return planes[0] if single else np.stack(planes)

    stored_shape = shape0 if single else (len(files), *shape0)
    storage = stored_shape if single else (1, *shape0)
    # Sizes + mtimes of first and last files identify this version of the stack cheaply.
    stat = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in (files[0], files[-1])]
    reader = FunctionReader(path, stored_shape, dtype0, storage, read_region, (len(files), stat))
    stored_axes = ["y", "x"] if single else ["z", "y", "x"]
    if len(shape0) == 3:
        stored_axes.append("c")
    metadata = {
        "format": "image" if single else "slices",
        "slice_format": IMAGE_EXTENSIONS.get(os.path.splitext(files[0])[1].lower(), "image"),
        "files": [os.path.basename(f) for f in files] if not single else [path],
        "voxel_size_source": "none",
    }
    return build_volume(
        reader,
        stored_axes=stored_axes,
        voxel_size=None,
        metadata=metadata,
        axes=axes,
        check_finite=check_finite,
        chunks=storage,
    )
