"""A minimal reader for Gatan Digital Micrograph files (DM4, and DM3), image data only.

EMPIAR holds many ``.dm4``/``.dm3`` files. This reader walks the tag tree, records where the
largest image's ``Data`` array lies in the file (without reading it), its ``DataType``,
``Dimensions`` and ``Calibrations``, and memory-maps the pixels, so opening is cheap and reading
is lazy. No dependency beyond numpy.

Format (per the public descriptions of the DM3/DM4 tag file format):

- header: version (big-endian int32; 3 or 4), root size (uint32 in DM3, uint64 in DM4),
  byte order of tag data (int32; 1 = little endian);
- tag directory: sorted (uint8), open (uint8), tag count (uint32/uint64);
- tag: kind (uint8: 20 directory, 21 data), label length (uint16), label, then in DM4 only the
  tag's size (uint64); a data tag has ``%%%%``, an info count and that many info words
  (uint32/uint64, big-endian) describing the type, then the values in the header's byte order;
- info: ``[type]`` for a scalar, ``[20, type, n]`` for an array, ``[15, 0, fields, (0, type)*]``
  for a struct, ``[20, 15, 0, fields, (0, type)*, n]`` for an array of structs, ``[18, n]`` for
  a string.

Images live in ``ImageList``: one directory per image (the first is usually a thumbnail), with
``ImageData/Data``, ``ImageData/DataType``, ``ImageData/Dimensions`` (x first) and
``ImageData/Calibrations/Dimension/<i>/{Scale, Units}``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from em5m.errors import InvalidVolumeError, UnsupportedFormatError
from em5m.io._build import build_volume
from em5m.io._lazy import SliceableReader, file_state
from em5m.io._units import to_nm
from em5m.volume import Volume

#: Tag value types: code -> (struct format, size).
SCALAR_TYPES: dict[int, tuple[str, int]] = {
    2: ("h", 2),
    3: ("i", 4),
    4: ("H", 2),
    5: ("I", 4),
    6: ("f", 4),
    7: ("d", 8),
    8: ("?", 1),
    9: ("b", 1),
    10: ("B", 1),
    11: ("q", 8),
    12: ("Q", 8),
}
#: ``ImageData/DataType`` codes -> numpy dtype (complex, RGB and packed types are not read).
IMAGE_DTYPES: dict[int, str] = {
    1: "i2",
    2: "f4",
    6: "u1",
    7: "i4",
    9: "i1",
    10: "u2",
    11: "u4",
    12: "f8",
    14: "u1",
    39: "i8",
    40: "u8",
}
_MAX_DEPTH = 64


@dataclass
class ArrayRef:
    """Where an array's values lie in the file (not read)."""

    offset: int
    count: int
    element: int


@dataclass
class DMImage:
    """The image of a DM file that `read_dm` found.

    Args:
        shape: C order (``(z,) y, x``).
        dtype: numpy dtype with the file's byte order.
        offset: byte offset of the pixel data.
        scale_nm: calibration per C-order axis in nm (None where unknown).
        version: 3 or 4.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    scale_nm: tuple[float | None, ...]
    version: int
    tags: dict[str, Any] = field(default_factory=dict)


class _Parser:
    def __init__(self, fh: BinaryIO, path: str) -> None:
        self.fh = fh
        self.path = path
        head = fh.read(16)
        if len(head) < 12:
            raise InvalidVolumeError(path, "file is too short to be a DM3/DM4 file")
        self.version = struct.unpack(">i", head[:4])[0]
        if self.version == 4:
            self.n, self.nsize = ">Q", 8
            order = struct.unpack(">i", head[12:16])[0]
            fh.seek(16)
        elif self.version == 3:
            self.n, self.nsize = ">I", 4
            order = struct.unpack(">i", head[8:12])[0]
            fh.seek(12)
        else:
            raise UnsupportedFormatError(
                path, f"not a DM3/DM4 file (version field {self.version}, expected 3 or 4)"
            )
        self.endian = "<" if order == 1 else ">"

    def _num(self) -> int:
        raw = self.fh.read(self.nsize)
        if len(raw) < self.nsize:
            raise InvalidVolumeError(self.path, "DM file is truncated inside its tag tree")
        return struct.unpack(self.n, raw)[0]

    def _read(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        raw = self.fh.read(size)
        if len(raw) < size:
            raise InvalidVolumeError(self.path, "DM file is truncated inside its tag tree")
        return struct.unpack(fmt, raw)

    def directory(self, depth: int = 0) -> dict[str, Any]:
        """A tag directory as a dict; unnamed tags get keys ``"0"``, ``"1"``, ..."""
        if depth > _MAX_DEPTH:
            raise InvalidVolumeError(self.path, "DM tag tree is nested too deeply")
        self._read("BB")  # sorted, open
        out: dict[str, Any] = {}
        for i in range(self._num()):
            kind, length = self._read(">BH")
            label = self.fh.read(length).decode("latin-1") or str(i)
            if self.version == 4:
                self._num()  # tag size: not needed when walking in order
            if kind == 20:
                out[label] = self.directory(depth + 1)
            elif kind == 21:
                out[label] = self.data(label)
            elif kind == 0:
                break
            else:
                raise InvalidVolumeError(self.path, f"unknown DM tag kind {kind} at {label!r}")
        return out

    def data(self, label: str) -> Any:
        if self.fh.read(4) != b"%%%%":
            raise InvalidVolumeError(self.path, "DM data tag without its '%%%%' marker")
        info = [self._num() for _ in range(self._num())]
        if not info:
            raise InvalidVolumeError(self.path, "DM data tag with empty type info")
        kind = info[0]
        if kind in SCALAR_TYPES:
            fmt, _ = SCALAR_TYPES[kind]
            return self._read(self.endian + fmt)[0]
        if kind == 18:  # string of info[1] bytes
            return self.fh.read(info[1]).decode("latin-1", "replace")
        if kind == 15:  # struct: [15, name len, n fields, (name len, type)*]
            types = info[4::2][: info[2]]
            return tuple(self._read(self.endian + SCALAR_TYPES[t][0])[0] for t in types)
        if kind == 20:
            return self.array(info, label)
        raise InvalidVolumeError(self.path, f"unknown DM value type {kind}")

    def array(self, info: list[int], label: str) -> Any:
        elem, count = info[1], info[-1]
        if elem == 15:  # array of structs: [20, 15, name len, n fields, (name len, type)*, n]
            types = info[5:-1:2][: info[3]]
            size = sum(SCALAR_TYPES[t][1] for t in types)
            self.fh.seek(size * count, os.SEEK_CUR)
            return None
        if elem not in SCALAR_TYPES:
            raise InvalidVolumeError(self.path, f"DM array of unknown element type {elem}")
        offset = self.fh.tell()
        size = SCALAR_TYPES[elem][1]
        if elem == 4 and label != "Data" and count <= 4096:  # UTF-16 text (units, names)
            raw = self.fh.read(size * count)
            return raw.decode("utf-16-le" if self.endian == "<" else "utf-16-be", "replace")
        self.fh.seek(size * count, os.SEEK_CUR)
        return ArrayRef(offset, count, elem)


def read_dm(path: str | os.PathLike[str]) -> DMImage:
    """Find the main image of a DM3/DM4 file: shape, dtype, data offset, calibration.

    The largest image of ``ImageList`` is taken (the first is usually a small thumbnail).

    Raises:
        UnsupportedFormatError: not a DM file, or an image type this reader does not handle.
        InvalidVolumeError: truncated or inconsistent file.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        parser = _Parser(fh, path)
        tags = parser.directory()
    images = [
        im
        for im in (tags.get("ImageList") or {}).values()
        if isinstance(im, dict) and isinstance(im.get("ImageData"), dict)
    ]
    best: tuple[int, dict[str, Any]] | None = None
    for im in images:
        data = im["ImageData"].get("Data")
        if isinstance(data, ArrayRef) and (best is None or data.count > best[0]):
            best = (data.count, im["ImageData"])
    if best is None:
        raise InvalidVolumeError(path, "DM file has no image data (ImageList/*/ImageData/Data)")
    image = best[1]
    code = int(image.get("DataType", -1))
    if code not in IMAGE_DTYPES:
        raise UnsupportedFormatError(
            path, f"DM image DataType {code} (complex, RGB or packed) is not supported"
        )
    dims = [
        int(v)
        for _, v in sorted(
            (image.get("Dimensions") or {}).items(),
            key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0,
        )
    ]
    data: ArrayRef = image["Data"]
    dtype = np.dtype(IMAGE_DTYPES[code]).newbyteorder(parser.endian)
    if (
        not dims
        or int(np.prod(dims)) != data.count * SCALAR_TYPES[data.element][1] // dtype.itemsize
    ):
        raise InvalidVolumeError(
            path, f"DM image dimensions {dims} do not match its {data.count} data values"
        )
    if data.offset + int(np.prod(dims)) * dtype.itemsize > size:
        raise InvalidVolumeError(path, "DM file is truncated: image data runs past the end")
    cal = (image.get("Calibrations") or {}).get("Dimension") or {}
    scales: list[float | None] = []
    for i in range(len(dims)):
        entry = cal.get(str(i)) if isinstance(cal, dict) else None
        scale = entry.get("Scale") if isinstance(entry, dict) else None
        unit = entry.get("Units") if isinstance(entry, dict) else None
        scales.append(to_nm(scale, unit) if scale and isinstance(unit, str) and unit else None)
    return DMImage(
        tuple(reversed(dims)), dtype, data.offset, tuple(reversed(scales)), parser.version, tags
    )


def open_dm(path: str | os.PathLike[str]) -> Volume:
    """Open the main image of a DM3/DM4 file as a lazy `Volume` (memory-mapped).

    Args:
        path: the ``.dm4``/``.dm3`` file.

    Examples:
        >>> open_dm("/nonexistent.dm4")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: ...
    """
    path = os.fspath(path)
    image = read_dm(path)
    array = np.memmap(path, dtype=image.dtype, mode="r", offset=image.offset, shape=image.shape)
    axes = ["y", "x"] if len(image.shape) == 2 else ["z", "y", "x"][-len(image.shape) :]
    if len(image.shape) > 3:
        raise UnsupportedFormatError(path, f"DM image with {len(image.shape)} dimensions")
    voxel = dict(zip(axes, image.scale_nm, strict=True))
    reader = SliceableReader(path, array, image.shape, state=file_state(path))
    metadata = {
        "format": f"dm{image.version}",
        "voxel_size_source": "dm-calibrations" if all(voxel.values()) else "none",
    }
    return build_volume(reader, stored_axes=axes, voxel_size=voxel, metadata=metadata)
