"""Look at a curated corpus: counts by modality/species/organ, a pixel-size histogram, a montage.

Both read only the output directory (``manifest.parquet`` and the shards), drawing with PIL so
no plotting library is needed.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from em5m.curate.shards import decode_png, iter_shard

#: Histogram bins: half-octaves centred on 1/4, ..., 4, 5.7, 8, ..., 256 nm.
PIXEL_BINS_NM = 2.0 ** np.arange(-2.25, 8.5, 0.5)


def corpus_stats(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts of a corpus by dataset, modality, species, organ and pixel size.

    Args:
        out: a curation output directory.

    Returns:
        ``{"tiles", "by_dataset", "by_modality", "by_species", "by_organ", "by_licence",
        "pixel_size_nm": {"bin_edges", "counts"}, "axes"}``.
    """
    table = pq.read_table(
        Path(out) / "manifest.parquet",
        columns=["dataset_id", "modality", "species", "organ", "licence", "pixel_size_nm", "axis"],
    )
    cols = {name: table.column(name).to_pylist() for name in table.column_names}

    def count(name: str) -> dict[str, int]:
        c = Counter("unknown" if v is None else str(v) for v in cols[name])
        return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    px = np.asarray([math.sqrt(a * b) for a, b in cols["pixel_size_nm"]], np.float64)
    hist, edges = np.histogram(px, bins=PIXEL_BINS_NM)
    return {
        "tiles": table.num_rows,
        "by_dataset": count("dataset_id"),
        "by_modality": count("modality"),
        "by_species": count("species"),
        "by_organ": count("organ"),
        "by_licence": count("licence"),
        "axes": count("axis"),
        "pixel_size_nm": {
            "bin_edges": [round(float(e), 4) for e in edges],
            "counts": hist.tolist(),
        },
    }


def histogram_png(
    stats: dict[str, Any], path: str | os.PathLike[str], *, width: int = 720, height: int = 360
) -> Path:
    """Draw the pixel-size histogram of `corpus_stats` as a PNG bar chart (log2 axis)."""
    counts = np.asarray(stats["pixel_size_nm"]["counts"])
    edges = stats["pixel_size_nm"]["bin_edges"]
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 20, 30, height - 50
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    draw.text((left, 8), f"pixel size of {stats['tiles']} tiles (nm, log scale)", fill="black")
    peak = max(1, int(counts.max()) if counts.size else 1)
    bar_w = (right - left) / max(1, len(counts))
    for i, c in enumerate(counts.tolist()):
        x0 = left + i * bar_w
        y0 = bottom - (bottom - top) * c / peak
        if c:
            draw.rectangle([x0 + 1, y0, x0 + bar_w - 1, bottom], fill=(0, 114, 178))
            draw.text((x0 + 2, y0 - 12), str(c), fill="black")
        if i % 2 == 0:  # label octave centres
            centre = math.sqrt(edges[i] * edges[i + 1])
            draw.text((x0 + 2, bottom + 6), f"{centre:.3g}", fill="black")
    draw.text((left - 50, top), f"{peak}", fill="black")
    draw.text((left - 20, bottom - 10), "0", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def montage(
    out: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    n: int = 64,
    seed: int = 0,
    tile_px: int = 128,
) -> Path:
    """A grid PNG of ``n`` random tiles of a corpus (seeded), each scaled to ``tile_px``.

    Examples:
        >>> # see tests/test_curate_cli.py for a run on real data
    """
    table = pq.read_table(Path(out) / "manifest.parquet", columns=["key", "shard"])
    n = min(n, table.num_rows)
    if n == 0:
        raise ValueError(f"{out}: the manifest has no tiles")
    rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, n, replace=False))
    keys = table.column("key").to_pylist()
    shards = table.column("shard").to_pylist()
    wanted: dict[str, set[str]] = {}
    for r in rows.tolist():
        wanted.setdefault(shards[r], set()).add(keys[r])
    tiles: dict[str, np.ndarray] = {}
    for shard, names in wanted.items():
        for key, png, _ in iter_shard(Path(out) / "shards" / shard):
            if key in names:
                tiles[key] = decode_png(png)
    cols = int(math.ceil(math.sqrt(n)))
    grid = Image.new("L", (cols * tile_px, int(math.ceil(n / cols)) * tile_px), 0)
    for i, r in enumerate(rows.tolist()):
        im = Image.fromarray(tiles[keys[r]]).resize((tile_px, tile_px), Image.Resampling.BOX)
        grid.paste(im, ((i % cols) * tile_px, (i // cols) * tile_px))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
