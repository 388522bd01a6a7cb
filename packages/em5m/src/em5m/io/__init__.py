"""Read EM volumes from any supported format as lazy `Volume` objects.

One module per format, each with ``can_open(path) -> bool`` and ``open(path, ...) -> Volume``:

========================  ==============================================================
module                    reads
========================  ==============================================================
`em5m.io.precomputed`     neuroglancer precomputed directories (``info`` + scales)
`em5m.io.zarr`            Zarr v2/v3 arrays, OME-Zarr 0.4 (v2) and 0.5 (v3) images
`em5m.io.n5`              N5 arrays and multiscale groups (COSEM / neuroglancer metadata)
`em5m.io.hdf5`            HDF5 datasets (``file.h5::/path``)
`em5m.io.mrc`             MRC/CCP4 (``.mrc``, ``.rec``, ``.st``, ``.ali``, ``.map``)
`em5m.io.tiff`            TIFF, BigTIFF, ImageJ and OME-TIFF
`em5m.io.slices`          directories of 2D PNG/TIFF/JPEG slices; single PNG/JPEG images
========================  ==============================================================

See docs/em5m/io.md for URIs, voxel-size rules and errors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType

from em5m.errors import (
    EMDataError,
    InvalidVolumeError,
    UnsupportedFormatError,
    VolumeNotFoundError,
)
from em5m.io import hdf5, mrc, n5, precomputed, slices, tiff
from em5m.io import zarr as zarr_io
from em5m.io._sniff import describe, sniff
from em5m.io._uri import ParsedURI, parse_uri
from em5m.volume import Volume

__all__ = ["READERS", "can_open", "open_volume", "parse_uri", "reader_for"]

#: Readers in detection order: directory formats with explicit markers first, then files by
#: extension/content, and the catch-all slice directory last.
READERS: dict[str, ModuleType] = {
    "precomputed": precomputed,
    "zarr": zarr_io,
    "n5": n5,
    "hdf5": hdf5,
    "mrc": mrc,
    "tiff": tiff,
    "slices": slices,
}

#: Marker of an incomplete `em5m.save_volume` output (see em5m.write).
PARTIAL_MARKER = ".partial-"


def reader_for(parsed: ParsedURI) -> ModuleType:
    """The reader module for a parsed URI (forced by a prefix, else detected).

    Raises:
        VolumeNotFoundError: the path does not exist.
        UnsupportedFormatError: no reader recognises it.
        InvalidVolumeError: it is an interrupted write.
    """
    path = parsed.path
    if not os.path.exists(path):
        parent = os.path.dirname(path)
        hint = "" if os.path.isdir(parent) else f" (directory {parent} does not exist either)"
        raise VolumeNotFoundError(path, f"no such file or directory{hint}")
    if PARTIAL_MARKER in os.path.basename(path.rstrip("/")):
        raise InvalidVolumeError(
            path,
            "is an incomplete output of an interrupted save_volume; delete it and write "
            "the volume again",
        )
    if parsed.format is not None:
        return READERS[parsed.format]
    # A directory with a Zarr, N5 or precomputed marker must not fall through to slices, and a
    # file named .tif must be judged by the TIFF reader even when its content is something else.
    for module in READERS.values():
        if module.can_open(path):
            return module
    if os.path.isdir(path):
        raise UnsupportedFormatError(
            path,
            "directory is not a recognised volume: no zarr.json/.zarray/.zgroup (Zarr), "
            "attributes.json (N5), info (precomputed) or image slices (PNG/TIFF/JPEG)",
        )
    kind = sniff(path)
    ext = os.path.splitext(path)[1] or "(none)"
    raise UnsupportedFormatError(
        path,
        f"unsupported file: extension {ext}, content looks like {describe(kind)}; "
        "supported: TIFF, PNG/JPEG, MRC, HDF5, Zarr, N5, neuroglancer precomputed",
    )


def can_open(uri: str | os.PathLike[str]) -> bool:
    """Whether some reader recognises ``uri`` (cheap: metadata and magic bytes only).

    For plugin hosts such as napari that must decide before opening; errors mean "no".

    Examples:
        >>> can_open("/no/such/file.tif")
        False
    """
    try:
        reader_for(parse_uri(os.fspath(uri)))
    except EMDataError:
        return False
    return True


def open_volume(
    uri: str | os.PathLike[str],
    *,
    level: int = 0,
    dataset: str | None = None,
    axes: str | Sequence[str] | None = None,
    check_finite: bool = True,
) -> Volume:
    """Open an EM image or volume lazily: nothing but metadata is read until you compute.

    Args:
        uri: a path, ``file://`` URL, ``<container>::<inner path>`` (``a.h5::/raw``,
            ``b.zarr::recon-1/em``, ``c.n5::em/fibsem-uint16``) or ``<format>://...``
            (``precomputed://file:///data/em``). See docs/em5m/io.md.
        level: multiscale level, 0 = full resolution (``metadata["levels"]`` lists them).
        dataset: inner path of an array/group (same as the ``::`` suffix; wins over it).
        axes: axis names in stored order when the file lacks them or has others, e.g.
            ``"czyx"``; needed for 4D/5D files without axis metadata.
        check_finite: for float data, check a sample at open and every block on compute for
            NaN/inf, raising `InvalidVolumeError` (set False for maps that use NaN on purpose).

    Returns:
        A `Volume`: dask array in canonical axis order (subset of c, z, y, x), voxel size in nm
        (or None if the file does not say), ``source`` and ``metadata`` (``format``,
        ``levels``, ``level``, ``original_dtype``, ``stored_axes``, ``voxel_size_source``...).

    Raises:
        VolumeNotFoundError: the file, directory or inner dataset does not exist.
        UnsupportedFormatError: unknown format, or extension and content disagree.
        InvalidVolumeError: unreadable, truncated, empty, NaN/inf, unknown axes, bad level.

    Examples:
        >>> import tempfile, numpy as np, tifffile
        >>> p = tempfile.mkdtemp() + "/stack.tif"
        >>> tifffile.imwrite(p, np.zeros((5, 64, 64), np.uint8), imagej=True,
        ...                  resolution=(0.25, 0.25),
        ...                  metadata={"axes": "ZYX", "spacing": 40, "unit": "nm"})
        >>> v = open_volume(p)
        >>> v.axes, v.shape, v.voxel_size, v.metadata["format"]
        (('z', 'y', 'x'), (5, 64, 64), (40.0, 4.0, 4.0), 'tiff')
    """
    parsed = parse_uri(uri)
    module = reader_for(parsed)
    inner = dataset if dataset is not None else parsed.inner
    volume = module.open(
        parsed.path, level=level, dataset=inner, axes=axes, check_finite=check_finite
    )
    return volume.replace(source=parsed.uri, metadata={**volume.metadata, "path": parsed.path})
