"""One embedding (class token) per image, slice or tile, with where it came from, as a table.

`embed_sources` reads each input with `em5m.open_volume` (a 2D image is one slice; a volume gives
one row per z slice), optionally cuts slices into non-overlapping tiles, and returns a pyarrow
table with one row per unit: ``source``, ``dataset``, ``z``, ``y0``, ``x0``, ``height``,
``width``, ``model`` and ``embedding`` (a fixed-size list of float32). `write_parquet` saves it
with the model configuration in the file's metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emdino import __version__

if TYPE_CHECKING:  # torch is imported only to embed, not to read or plot a table
    from emdino.backbone import Backbone

#: Largest whole image embedded in one pass (tokens); larger ones need ``tile``.
MAX_WHOLE_TOKENS = 8192


def dataset_of(source: str) -> str:
    """A dataset name for a source: the registered em5m dataset when it lies under
    ``EMSSL_DATA``, else the input's own name (file stem or folder name).

    Examples:
        >>> dataset_of("/somewhere/my_stack.tif")
        'my_stack'
    """
    path = Path(source).resolve()
    try:
        from em5m import datasets

        root = datasets.data_root()
        if root is not None and path.is_relative_to(Path(root).resolve()):
            folder = path.relative_to(Path(root).resolve()).parts[0]
            try:
                return datasets.info(folder).name
            except ValueError:
                return folder
    except ImportError:  # pragma: no cover - em5m is a dependency
        pass
    return path.name if path.is_dir() else path.stem


def _units(
    slices: Any, tile: int | None, source: str, patch: int
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Yield ``(z, y0, x0, pixels)`` for each slice or tile."""
    n_z, h, w = (int(s) for s in slices.shape)
    for z in range(n_z):
        img = np.asarray(slices[z].compute())
        if tile is None:
            tokens = -(-h // patch) * -(-w // patch)
            if tokens > MAX_WHOLE_TOKENS:
                raise ValueError(
                    f"{source}: slice of {h} x {w} pixels is too large to embed whole "
                    f"({tokens} tokens > {MAX_WHOLE_TOKENS}); pass a tile size"
                )
            yield z, 0, 0, img
            continue
        if h <= tile or w <= tile:
            ys = [0] if h <= tile else range(0, h - tile + 1, tile)
            xs = [0] if w <= tile else range(0, w - tile + 1, tile)
        else:  # whole tiles only: a sliver at the edge is not an image of its own
            ys, xs = range(0, h - tile + 1, tile), range(0, w - tile + 1, tile)
        for y0 in ys:
            for x0 in xs:
                yield z, y0, x0, img[y0 : y0 + tile, x0 : x0 + tile]


def embed_sources(
    model: Backbone,
    sources: Sequence[str | os.PathLike[str]],
    *,
    tile: int | None = None,
    batch_size: int = 8,
    progress: Callable[[str, int, int, dict[str, Any]], None] | None = None,
) -> Any:
    """Class-token embeddings of every slice (or tile) of the given inputs.

    Args:
        model: a loaded backbone.
        sources: paths/URIs `em5m.open_volume` reads.
        tile: cut slices into ``tile x tile`` pixel tiles (whole tiles only) instead of
            embedding each whole slice.
        batch_size: units per forward pass (units of equal size are batched).
        progress: ``progress("sources", done, total, info)`` after each input.

    Returns:
        A ``pyarrow.Table`` (columns in the module docstring).

    Raises:
        em5m.EMDataError: an input cannot be read (the message names it).
        ValueError: bad arguments, or a slice too large to embed whole.
    """
    import pyarrow as pa
    import torch

    import em5m
    from emdino.features import grey_slices

    if tile is not None and tile < model.patch_size:
        raise ValueError(f"tile must be at least the patch size {model.patch_size}, got {tile}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cols: dict[str, list[Any]] = {
        k: [] for k in ("source", "dataset", "z", "y0", "x0", "height", "width")
    }
    vectors: list[np.ndarray] = []

    def flush(batch: list[tuple[dict[str, Any], np.ndarray]]) -> None:
        if not batch:
            return
        x = torch.from_numpy(np.stack([img for _, img in batch]))[:, None]
        emb = model.features(x, levels=()).cls.cpu().numpy()
        for (meta, _), e in zip(batch, emb, strict=True):
            for k, v in meta.items():
                cols[k].append(v)
            vectors.append(e)

    # Open every input first (lazy, cheap) so a bad one fails before any compute.
    volumes = [(os.fspath(src), em5m.open_volume(src)) for src in sources]
    for n, (src, volume) in enumerate(volumes):
        slices, _ = grey_slices(volume)
        name = dataset_of(src)
        batch: list[tuple[dict[str, Any], np.ndarray]] = []
        for z, y0, x0, img in _units(slices, tile, src, model.patch_size):
            if batch and (img.shape != batch[0][1].shape or len(batch) == batch_size):
                flush(batch)
                batch = []
            meta = {
                "source": src,
                "dataset": name,
                "z": z,
                "y0": y0,
                "x0": x0,
                "height": img.shape[0],
                "width": img.shape[1],
            }
            batch.append((meta, np.ascontiguousarray(img)))
        flush(batch)
        if progress is not None:
            progress("sources", n + 1, len(sources), {"rows": len(vectors)})
    if not vectors:
        raise ValueError("no slice or tile to embed (inputs smaller than the tile?)")
    dim = model.embed_dim
    flat = pa.array(np.concatenate(vectors).astype(np.float32))
    table = pa.table(
        {
            "source": pa.array(cols["source"], pa.string()),
            "dataset": pa.array(cols["dataset"], pa.string()),
            **{k: pa.array(cols[k], pa.int32()) for k in ("z", "y0", "x0", "height", "width")},
            "model": pa.array([model.name] * len(vectors), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )
    meta = {
        "emdino": json.dumps({"version": __version__, "model": model.cfg.as_dict(), "tile": tile})
    }
    return table.replace_schema_metadata(meta)


def write_parquet(table: Any, out: str | os.PathLike[str]) -> Path:
    """Write an embeddings table as Parquet (atomically: temp file, then rename)."""
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return out


def read_embeddings(path: str | os.PathLike[str]) -> tuple[np.ndarray, Any]:
    """``(embeddings [N, D] float32, table)`` from a Parquet file written by `write_parquet`.

    Raises:
        ValueError: the file has no ``embedding`` column.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "embedding" not in table.column_names:
        raise ValueError(f"{path}: no 'embedding' column (not written by emdino embed?)")
    col = table.column("embedding").combine_chunks()
    emb = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32)
    return emb.reshape(len(table), -1), table
