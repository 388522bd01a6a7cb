"""Recognise file formats by their magic bytes, so a misnamed file gets a useful error.

A PNG renamed ``.tif`` or a TIFF saved as ``.mrc`` would otherwise fail deep inside a reader
library with a message about tags or header fields; here we say what the file looks like instead.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from em5m.errors import UnsupportedFormatError

#: Human-readable names of the kinds `sniff` returns.
DESCRIPTIONS: dict[str, str] = {
    "tiff": "a TIFF image",
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "gif": "a GIF image",
    "bmp": "a BMP image",
    "hdf5": "an HDF5 file",
    "mrc": "an MRC file",
    "gzip": "a gzip-compressed file",
    "zip": "a ZIP archive",
    "npy": "a NumPy .npy file",
    "json": "a JSON/text file",
    "empty": "an empty file",
}


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The kind of file ``path`` is, from its first bytes; None when unrecognised.

    Args:
        path: a regular file.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> _ = p.write_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(100))
        >>> sniff(p)
        'png'
    """
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        return "empty"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    # MRC2014: the map id "MAP " sits at byte 208 of the 1024-byte header.
    if len(head) >= 212 and head[208:212] == b"MAP ":
        return "mrc"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return None


def describe(kind: str | None) -> str:
    """Words for a sniffed kind (``"an unrecognised format"`` for None)."""
    return DESCRIPTIONS.get(kind or "", "an unrecognised format")


def require_kind(path: str, kinds: Collection[str], expected_words: str) -> str | None:
    """Raise if ``path``'s content is clearly not one of ``kinds``.

    Args:
        path: the file.
        kinds: acceptable results of `sniff`.
        expected_words: what the extension promised, e.g. ``"TIFF"``.

    Returns:
        The sniffed kind (None when unrecognised; readers such as MRC then try their library,
        since old MRC files have no magic bytes).
    """
    kind = sniff(path)
    if kind in kinds:
        return kind
    if kind == "empty":
        raise UnsupportedFormatError(path, "file is empty (0 bytes)")
    if kind is not None:
        raise UnsupportedFormatError(
            path,
            f"the extension says {expected_words} but the content looks like {describe(kind)}; "
            "rename the file to match its content",
        )
    return None
