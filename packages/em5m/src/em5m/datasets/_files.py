"""Small, strict file readers for the dataset modules (PNG, TIFF, HDF5, gzipped HDF5).

Deliberately independent of `em5m.io`: the reference datasets have fixed, known layouts, and a
failure here must name the exact file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np
import tifffile
from PIL import Image

from em5m.errors import EMDataError, InvalidVolumeError, VolumeNotFoundError


def numbered_files(folder: Path, pattern: str) -> dict[int, Path]:
    """Files in ``folder`` whose name fully matches ``pattern``, keyed by its first group as int.

    Numeric keys give the real section order where names are not zero-padded (ISBI's
    ``0.png .. 29.png`` sort lexically as 0, 1, 10, 11, ...). Other files are ignored, so a
    folder holding extras (e.g. ``0_predict.png``) still reads.

    Examples:
        >>> numbered_files(Path("isbi2012/test"), r"(\\d+)\\.png")  # doctest: +SKIP
        {0: PosixPath('isbi2012/test/0.png'), 1: ...}
    """
    if not folder.is_dir():
        raise VolumeNotFoundError(folder, "folder does not exist")
    rx = re.compile(pattern)
    found: dict[int, Path] = {}
    for p in folder.iterdir():
        m = rx.fullmatch(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    if not found:
        raise VolumeNotFoundError(folder, f"no files matching {pattern!r}")
    return dict(sorted(found.items()))


def select(files: dict[int, Path], numbers: Iterable[int], what: Path) -> list[Path]:
    """The files with the given numbers, in that order; names the first missing one."""
    out = []
    for n in numbers:
        if n not in files:
            raise VolumeNotFoundError(what, f"slice {n} is missing (have {len(files)} files)")
        out.append(files[n])
    return out


def check_paired(a: dict[int, Path], b: dict[int, Path], folder: Path) -> None:
    """Images and labels must carry the same slice numbers, or pairs would be shifted."""
    if a.keys() != b.keys():
        only_a = sorted(set(a) - set(b))[:5]
        only_b = sorted(set(b) - set(a))[:5]
        raise InvalidVolumeError(
            folder, f"image/label slices do not pair: only images {only_a}, only labels {only_b}"
        )


def read_png(path: Path) -> np.ndarray:
    """A greyscale PNG as a 2D array (1-bit PNGs become 0/255 uint8)."""
    try:
        with Image.open(path) as im:
            if im.mode == "1":  # bilevel masks (VNC): read as 0/255 so "grey > 127" holds
                im = im.convert("L")
            if im.mode not in ("L", "I;16"):
                raise InvalidVolumeError(path, f"expected a greyscale PNG, got mode {im.mode!r}")
            return np.asarray(im).copy()
    except FileNotFoundError:
        raise VolumeNotFoundError(path, "file does not exist") from None
    except OSError as err:
        raise EMDataError(path, f"cannot read PNG: {err}") from None


def read_tif(path: Path) -> np.ndarray:
    """A TIFF as an array (a single page gives 2D, a multi-page file 3D)."""
    try:
        return np.asarray(tifffile.imread(path))
    except FileNotFoundError:
        raise VolumeNotFoundError(path, "file does not exist") from None
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise EMDataError(path, f"cannot read TIFF: {err}") from None


def read_stack(
    paths: Sequence[Path],
    read: Callable[[Path], np.ndarray] = read_png,
    *,
    allowed: Iterable[int] | None = None,
    convert: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Read 2D images into one preallocated ``(z, y, x)`` array.

    Args:
        paths: the slices in z order.
        read: per-file reader.
        allowed: if given, every value of every (raw) slice must be one of these; a stray value
            means the file is not what the README describes, so fail naming it.
        convert: applied per slice after the check (e.g. ``lambda a: a == 255``), so a bool mask
            never needs the full uint8 stack in memory too.
    """
    if not paths:
        raise ValueError("no slices to read")
    lut = None
    if allowed is not None:
        lut = np.zeros(256, dtype=bool)
        lut[list(allowed)] = True
    out: np.ndarray | None = None
    for z, p in enumerate(paths):
        raw = read(p)
        if raw.ndim != 2:
            raise InvalidVolumeError(p, f"expected a 2D image, got shape {raw.shape}")
        if lut is not None:
            if raw.dtype != np.uint8:
                raise InvalidVolumeError(p, f"expected uint8 labels, got {raw.dtype}")
            bad = ~lut[raw]
            if bad.any():
                values = np.unique(raw[bad])[:8].tolist()
                raise InvalidVolumeError(p, f"unexpected label values {values}")
        sl = convert(raw) if convert is not None else raw
        if out is None:
            out = np.empty((len(paths), *sl.shape), dtype=sl.dtype)
        elif sl.shape != out.shape[1:] or sl.dtype != out.dtype:
            raise InvalidVolumeError(
                p, f"slice is {sl.shape} {sl.dtype}, earlier slices {out.shape[1:]} {out.dtype}"
            )
        out[z] = sl
    assert out is not None
    return out


def _read_h5_keys(f: h5py.File, keys: Sequence[str], path: Path) -> dict[str, np.ndarray]:
    out = {}
    for key in keys:
        if key not in f or not isinstance(f[key], h5py.Dataset):
            raise InvalidVolumeError(path, f"HDF5 dataset {key!r} not found (have {list(f)})")
        out[key] = f[key][()]
    return out


def read_h5(path: Path, key: str = "stack") -> np.ndarray:
    """One dataset of an HDF5 file (lzf/gzip filters are built into h5py)."""
    if not path.is_file():
        raise VolumeNotFoundError(path, "file does not exist")
    try:
        with h5py.File(path, "r") as f:
            return _read_h5_keys(f, [key], path)[key]
    except OSError as err:
        raise EMDataError(path, f"cannot read HDF5: {err}") from None


def read_gzip_h5(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Datasets of a gzipped HDF5 file (``*.h5.gz``), decompressed in memory.

    Decompressing into memory leaves the (read-only, shared) data folder untouched and needs no
    cache; the FlyEM ground truth is about 63 MB uncompressed.
    """
    if not path.is_file():
        raise VolumeNotFoundError(path, "file does not exist")
    try:
        with gzip.open(path, "rb") as g:
            buf = io.BytesIO(g.read())
        with h5py.File(buf, "r") as f:
            return _read_h5_keys(f, keys, path)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise EMDataError(path, f"cannot read gzipped HDF5: {err}") from None
