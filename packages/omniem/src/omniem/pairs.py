"""Read the inputs of ``omniem evaluate --images PATH --labels PATH`` as lists of 2D arrays.

``PATH`` is one of:

- a **directory of 2D images**: every file whose extension is a known image extension
  (``.png``, ``.tif``, ``.tiff``, ``.jpg``, ``.jpeg``, ``.bmp``; hidden files and other files
  are ignored), in natural sort order (``2.png`` before ``10.png``). Each file is opened with
  `em5m.io.open_volume` and must hold one 2D image; files may differ in size.
- a **TIFF stack** (or any single file em5m reads: TIFF, PNG, MRC, HDF5 ``file.h5::/path``):
  a 3D ``(z, y, x)`` file gives one image per z slice, a 2D file one image.
- a **Zarr array or OME-Zarr image** (v2 or v3; OME-Zarr is read at full resolution): 3D gives one
  image per z slice, 2D one image. N5 and neuroglancer precomputed directories work the same way.

Images and labels pair up by position (sorted file order, or z index), so the two paths must give
the same number of images, and each pair must have the same ``(y, x)`` shape. Arrays are returned
with the dtype they have on disk: the caller decides what a label means (for a binary task any
non-zero label is foreground) and how to scale an image. A single-channel axis is dropped, and an
RGB(A) image whose colour channels are all equal is read as grey; other multi-channel images are
refused.

Every problem raises `PairsError` (a `ValueError`) naming the path and what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from omniem.errors import OmniEMError

__all__ = ["IMAGE_EXTENSIONS", "PairsError", "read_images", "read_named", "read_pairs"]

#: File extensions (lower case) taken from a directory of 2D images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


class PairsError(OmniEMError, ValueError):
    """An images or labels path cannot be read as 2D images, or images and labels do not pair.

    Examples:
        >>> issubclass(PairsError, ValueError)
        True
    """


def read_images(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Read a directory of 2D images, a stack file or a Zarr array as a list of 2D arrays.

    Args:
        path: a directory of 2D images, a TIFF stack (or other file em5m reads) or a Zarr /
            OME-Zarr array; see the module docstring.

    Returns:
        One ``(y, x)`` array per image (per file, or per z slice), with the stored dtype.

    Raises:
        PairsError: the path does not exist, is an empty directory or a directory without
            images, cannot be read, or holds something that is not 2D/3D grey images.

    Examples:
        >>> import tempfile, numpy as np, tifffile
        >>> p = tempfile.mkdtemp() + "/stack.tif"
        >>> tifffile.imwrite(p, np.arange(5 * 8 * 9, dtype=np.uint16).reshape(5, 8, 9))
        >>> images = read_images(p)
        >>> len(images), images[0].shape, images[0].dtype
        (5, (8, 9), dtype('uint16'))
    """
    return [array for array, _name in read_named(path)]


def read_pairs(
    images: str | os.PathLike[str], labels: str | os.PathLike[str]
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Read images and their labels (or restoration targets) and pair them by position.

    Args:
        images: a directory of 2D images, a stack file or a Zarr array (see `read_images`).
        labels: the same for the labels; the k-th label belongs to the k-th image.

    Returns:
        ``(image, label, name)`` per pair: both arrays ``(y, x)`` with their stored dtypes (labels
        as-is: the caller decides whether non-zero means foreground), ``name`` the image's file
        name, or ``"<file>[z=<k>]"`` for slice ``k`` of a stack.

    Raises:
        PairsError: either path cannot be read (see `read_images`), the counts differ, or a pair
            has different shapes.

    Examples:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp())
        >>> for sub in ("img", "lab"):
        ...     (d / sub).mkdir()
        ...     for k in (1, 2, 10):
        ...         Image.fromarray(np.full((6, 7), k, np.uint8)).save(d / sub / f"{k}.png")
        >>> [(int(i[0, 0]), int(lab[0, 0]), name) for i, lab, name in
        ...  read_pairs(d / "img", d / "lab")]
        [(1, 1, '1.png'), (2, 2, '2.png'), (10, 10, '10.png')]
    """
    imgs = _read(images, "images")
    labs = _read(labels, "labels")
    if len(imgs) != len(labs):
        raise PairsError(
            f"images {os.fspath(images)} give {len(imgs)} image(s) but labels "
            f"{os.fspath(labels)} give {len(labs)}; they pair by sorted order / z slice, so the "
            "counts must match"
        )
    pairs = []
    for (img, img_name, img_where), (lab, _lab_name, lab_where) in zip(imgs, labs, strict=True):
        if img.shape != lab.shape:
            raise PairsError(
                f"image {img_where} has shape {img.shape} but its label {lab_where} has shape "
                f"{lab.shape}; each image and its label must have the same shape"
            )
        pairs.append((img, lab, img_name))
    return pairs


def read_named(path: str | os.PathLike[str], *, role: str = "path") -> list[tuple[np.ndarray, str]]:
    """Like `read_images`, with a name per image (file name, or ``"<file>[z=<k>]"``).

    Args:
        path: see `read_images`.
        role: what the path is for (``"images"``, ``"labels"``), used in error messages.

    Returns:
        ``(array, name)`` per image.

    Raises:
        PairsError: as `read_images`.
    """
    return [(array, name) for array, name, _where in _read(path, role)]


def _read(path: str | os.PathLike[str], role: str) -> list[tuple[np.ndarray, str, str]]:
    """``(array, name, where)`` per image; ``where`` is the full file path (+ ``[z=k]``)."""
    from em5m.io import parse_uri

    text = os.fspath(path)
    try:
        parsed = parse_uri(text)
    except Exception as exc:  # a malformed URI
        raise PairsError(f"{role} {text}: cannot parse path ({exc})") from None
    fs_path = parsed.path
    if not os.path.exists(fs_path):
        parent = os.path.dirname(os.path.abspath(fs_path))
        hint = "" if os.path.isdir(parent) else f" (directory {parent} does not exist either)"
        raise PairsError(f"{role} {text}: no such file or directory{hint}")
    plain = parsed.format is None and parsed.inner is None
    if plain and os.path.isdir(fs_path) and not _is_container(fs_path):
        return _read_directory(fs_path, role)
    return _read_file(text, role, Path(fs_path).name)


def _is_container(directory: str) -> bool:
    """Whether a directory is itself an array (Zarr, N5, precomputed) rather than a folder."""
    from em5m.io import READERS

    return any(
        READERS[name].can_open(directory)
        for name in ("precomputed", "zarr", "n5")
        if name in READERS
    )


def _read_directory(directory: str, role: str) -> list[tuple[np.ndarray, str, str]]:
    from em5m.io.slices import natural_key

    entries = sorted(os.listdir(directory), key=natural_key)
    names = [
        n
        for n in entries
        if not n.startswith(".")
        and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
        and os.path.isfile(os.path.join(directory, n))
    ]
    if not names:
        what = "is an empty directory" if not entries else "is a directory with no image files"
        raise PairsError(
            f"{role} {directory}: {what} (looked for {', '.join(IMAGE_EXTENSIONS)}; Zarr, N5 "
            "and precomputed directories are recognised by their metadata files)"
        )
    out = []
    for name in names:
        file = os.path.join(directory, name)
        images = _read_file(file, role, name)
        if len(images) != 1:
            raise PairsError(
                f"{role} {file}: holds {len(images)} slices, but a directory of images must hold "
                "one 2D image per file; pass a stack file as the path itself"
            )
        out.append((images[0][0], name, file))
    return out


def _read_file(uri: str, role: str, name: str) -> list[tuple[np.ndarray, str, str]]:
    from em5m.errors import EMDataError
    from em5m.io import open_volume

    try:
        volume = open_volume(uri)
        array = volume.compute()
    except EMDataError as exc:
        raise PairsError(f"{role} {uri}: {exc.problem}") from exc
    except Exception as exc:  # a reader library failing on a broken file
        raise PairsError(f"{role} {uri}: cannot read ({type(exc).__name__}: {exc})") from exc
    # Native byte order (big-endian TIFF/MRC data would trip torch and some numpy consumers).
    native = np.dtype(array.dtype.char)
    array = array.view(native) if array.dtype.isnative else array.astype(native)
    axes = "".join(volume.axes)
    if "c" in axes:
        array = _grey(array, axes, uri, role)
        axes = axes.replace("c", "")
    if axes == "yx":
        return [(array, name, uri)]
    if axes == "zyx":
        return [(array[k], f"{name}[z={k}]", f"{uri}[z={k}]") for k in range(array.shape[0])]
    raise PairsError(  # pragma: no cover - Volume axes are a subset of czyx containing yx
        f"{role} {uri}: unsupported axes {axes} (shape {array.shape})"
    )


def _grey(array: np.ndarray, axes: str, uri: str, role: str) -> np.ndarray:
    """Drop the channel axis (first in canonical order): one channel, or equal RGB channels."""
    n = array.shape[0]
    colour = array[: min(n, 3)]
    if n == 1 or (n in (3, 4) and all(np.array_equal(colour[0], c) for c in colour[1:])):
        return array[0]
    raise PairsError(
        f"{role} {uri}: has {n} channels (axes {axes}, shape {array.shape}) that differ; EM "
        "images and labels must be single-channel. (A 3- or 4-slice TIFF stack written without "
        "photometric='minisblack' or ImageJ axes 'ZYX' is stored as RGB; write it again with one "
        "of those.)"
    )
