"""Tile storage: a fast PNG encoder, per-unit blobs and deterministic WebDataset tar shards.

**PNG.** Tiles are written by a small encoder instead of PIL: "Up" row filter (computed for a
whole batch in numpy) and zlib's Huffman-only strategy. On noisy EM tiles this is 3-5x faster
than PIL at ``compress_level=1`` and the files are smaller (EM noise defeats LZ77 matching, the
entropy coding is what pays). Any PNG reader decodes them; ``level`` selects ordinary deflate.

**Unit blobs.** A work unit appends the PNGs of its kept tiles to one ``.bin`` file and records
offset and length per tile in its parquet part, so the final shards are assembled by copying
bytes.

**Shards.** `ShardWriter` writes ``shard-000000.tar``, ... in the WebDataset layout: each tile is
``<key>.png`` + ``<key>.json`` (keys contain no dots). Tar headers carry fixed mtime, owner and
mode, so the same tiles always give byte-identical shards. Each shard is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHARD_PATTERN = "shard-{:06d}.tar"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_pngs(tiles: np.ndarray, *, level: int | None = None) -> list[bytes]:
    """Encode a batch of 2D uint8 tiles as greyscale PNG files.

    Args:
        tiles: ``(N, H, W)`` uint8.
        level: None for the fast Huffman-only mode, else a zlib level 0-9.

    Returns:
        One ``bytes`` per tile.

    Examples:
        >>> import numpy as np
        >>> t = np.arange(48, dtype=np.uint8).reshape(1, 6, 8)
        >>> bool((decode_png(encode_pngs(t)[0]) == t[0]).all())
        True
    """
    t = np.asarray(tiles)
    if t.dtype != np.uint8 or t.ndim != 3:
        raise ValueError(f"encode_pngs needs uint8 (N, H, W), got {t.dtype} {t.shape}")
    n, h, w = t.shape
    raw = np.empty((n, h, w + 1), np.uint8)
    raw[:, :, 0] = 2  # filter type "Up" on every row (row 0's "up" neighbour is zero)
    raw[:, 0, 1:] = t[:, 0]
    np.subtract(t[:, 1:], t[:, :-1], out=raw[:, 1:, 1:])  # uint8 wrap-around is PNG's modulo
    header = _PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    end = _chunk(b"IEND", b"")
    out = []
    for i in range(n):
        if level is None:
            comp = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
            data = comp.compress(raw[i].tobytes()) + comp.flush()
        else:
            data = zlib.compress(raw[i].tobytes(), level)
        out.append(header + _chunk(b"IDAT", data) + end)
    return out


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to a numpy array."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename (never a partial file)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_blob(path: str | os.PathLike[str], items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``items`` into one file atomically; return (offsets, lengths)."""
    lengths = np.array([len(b) for b in items], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    atomic_write_bytes(path, b"".join(items))
    return offsets, lengths


def read_blob_items(
    path: str | os.PathLike[str], offsets: np.ndarray, lengths: np.ndarray
) -> list[bytes]:
    """The items at ``offsets``/``lengths`` of a blob file."""
    with open(path, "rb") as f:
        data = f.read()
    return [data[int(o) : int(o) + int(n)] for o, n in zip(offsets, lengths, strict=True)]


class ShardWriter:
    """Write tiles into WebDataset tar shards of at most ``maxcount`` tiles / ``maxsize`` bytes.

    Args:
        directory: where the shards go.
        maxcount: tiles per shard.
        maxsize: approximate bytes per shard.

    Examples:
        >>> import tempfile, numpy as np
        >>> d = tempfile.mkdtemp()
        >>> with ShardWriter(d, maxcount=2) as w:
        ...     for k in ("a", "b", "c"):
        ...         _ = w.add(k, encode_pngs(np.zeros((1, 4, 4), np.uint8))[0], {"key": k})
        >>> w.shards
        ['shard-000000.tar', 'shard-000001.tar']
        >>> [k for k, _, _ in iter_shard(f"{d}/shard-000001.tar")]
        ['c']
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, maxcount: int = 10_000, maxsize: int = 2**30
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.maxcount = int(maxcount)
        self.maxsize = int(maxsize)
        self.shards: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._size = 0

    def _open_next(self) -> None:
        self._close_current()
        name = SHARD_PATTERN.format(len(self.shards))
        self.shards.append(name)
        self._tmp = self.directory / f".tmp-{name}"
        self._tar = tarfile.open(  # noqa: SIM115 - closed in _close_current / __exit__
            self._tmp, "w", format=tarfile.USTAR_FORMAT
        )
        self._count = 0
        self._size = 0

    def _close_current(self) -> None:
        if self._tar is not None and self._tmp is not None:
            self._tar.close()
            os.replace(self._tmp, self.directory / self.shards[-1])
            self._tar = None

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, png: bytes, meta: dict[str, Any]) -> str:
        """Add one tile; returns the name of the shard it went into."""
        if "." in key or "/" in key:
            raise ValueError(f"WebDataset keys must not contain '.' or '/': {key!r}")
        meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
        size = len(png) + len(meta_bytes) + 2048
        if (
            self._tar is None
            or self._count >= self.maxcount
            or (self._count and self._size + size > self.maxsize)
        ):
            self._open_next()
        self._member(f"{key}.png", png)
        self._member(f"{key}.json", meta_bytes)
        self._count += 1
        self._size += size
        return self.shards[-1]

    def close(self) -> None:
        self._close_current()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self._tar is not None:  # failed: leave no half-written shard behind
            self._tar.close()
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)


def iter_shard(path: str | os.PathLike[str]) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """Yield ``(key, png bytes, json dict)`` for each tile of a shard, in order."""
    pending: dict[str, dict[str, Any]] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            pending.setdefault(key, {})[ext] = data
            if {"png", "json"} <= pending[key].keys():
                item = pending.pop(key)
                yield key, item["png"], json.loads(item["json"])


def read_tiles(path: str | os.PathLike[str], keys: set[str] | None = None) -> dict[str, np.ndarray]:
    """Decode the tiles of one shard (only ``keys`` when given)."""
    out = {}
    for key, png, _ in iter_shard(path):
        if keys is None or key in keys:
            out[key] = decode_png(png)
    return out
