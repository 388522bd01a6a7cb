"""Parse the URIs `open_volume` accepts into a local path, a format hint and an inner path.

Conventions (documented in docs/em5m/io.md):

- a plain path or ``file:///abs/path``;
- ``<container>::<inner path>`` names an array inside a container file or directory, e.g.
  ``stack.h5::/volumes/raw``, ``data.zarr::recon-1/em``, ``cell.n5::em/fibsem-uint16``;
- ``<format>://<path or file:// URL>`` forces a reader, e.g. ``precomputed://file:///data/em``,
  ``n5:///data/cell.n5``, ``zarr://...``. Neuroglancer writes URLs this way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from em5m.errors import UnsupportedFormatError

#: Format prefixes that force a reader (the neuroglancer-style ``precomputed://`` form).
FORMAT_PREFIXES: dict[str, str] = {
    "precomputed": "precomputed",
    "n5": "n5",
    "zarr": "zarr",
    "zarr2": "zarr",
    "zarr3": "zarr",
    "tif": "tiff",
    "tiff": "tiff",
    "mrc": "mrc",
    "h5": "hdf5",
    "hdf5": "hdf5",
    "slices": "slices",
}

#: Separator between a container path and the array path inside it.
INNER_SEPARATOR = "::"


@dataclass(frozen=True)
class ParsedURI:
    """A URI broken into parts.

    Args:
        uri: the text the user passed (kept for error messages).
        path: absolute local filesystem path of the file or directory.
        format: reader forced by a ``<format>://`` prefix, or None to detect.
        inner: array path inside a container (HDF5, Zarr, N5), or None.
    """

    uri: str
    path: str
    format: str | None = None
    inner: str | None = None


def parse_uri(uri: str | os.PathLike[str]) -> ParsedURI:
    """Split ``uri`` into local path, forced format and inner array path.

    Args:
        uri: path or URI (see module docstring).

    Examples:
        >>> p = parse_uri("precomputed://file:///data/em")
        >>> p.path, p.format
        ('/data/em', 'precomputed')
        >>> parse_uri("/d/stack.h5::/raw").inner
        '/raw'
    """
    text = os.fspath(uri)
    fmt: str | None = None
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() in FORMAT_PREFIXES:
        fmt = FORMAT_PREFIXES[scheme.lower()]
        text = rest
        # ``n5:///abs/path`` leaves ``/abs/path``; ``precomputed://file:///x`` leaves a file URL.
    inner: str | None = None
    if INNER_SEPARATOR in text:
        text, _, inner = text.partition(INNER_SEPARATOR)
        inner = inner or None
    path = _local_path(text, original=os.fspath(uri))
    return ParsedURI(uri=os.fspath(uri), path=path, format=fmt, inner=inner)


def _local_path(text: str, *, original: str) -> str:
    """A ``file://`` URL or plain path as an absolute local path; other schemes are refused."""
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme != "file":
            raise UnsupportedFormatError(
                original,
                f"remote URLs ({parsed.scheme}://) are not read by open_volume; "
                "open remote data through em5m.sources, or download it first",
            )
        if parsed.netloc not in ("", "localhost"):
            raise UnsupportedFormatError(original, f"file URL with a host ({parsed.netloc!r})")
        text = unquote(parsed.path)
    return os.path.abspath(os.path.expanduser(text))
