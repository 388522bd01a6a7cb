"""JSON-lines metrics and a PNG of the training curves (matplotlib if installed, else PIL)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Panels of the curves figure, in order (missing keys are skipped).
DEFAULT_KEYS = (
    "loss",
    "dino",
    "ibot",
    "koleo",
    "dino_target_entropy",
    "ibot_target_entropy",
    "lr",
    "teacher_temp",
    "images_per_s",
)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON record as a line (flushed, so a crash loses at most that line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file (a torn last line is ignored)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_curves(
    records: Sequence[dict[str, Any]], out: str | Path, keys: Sequence[str] = DEFAULT_KEYS
) -> Path:
    """Draw one panel per metric against ``step`` and save a PNG.

    Args:
        records: metric records with a ``step`` key.
        out: PNG path.
        keys: metrics to draw (those absent from every record are skipped).

    Raises:
        ValueError: no record has a step and one of the keys.
    """
    series = {}
    for k in keys:
        pts = [
            (r["step"], float(r[k]))
            for r in records
            if "step" in r and isinstance(r.get(k), int | float) and math.isfinite(r[k])
        ]
        if pts:
            series[k] = pts
    if not series:
        raise ValueError("nothing to plot")
    try:
        return _plot_matplotlib(series, Path(out))
    except ImportError:
        return _plot_pil(series, Path(out))


def _plot_matplotlib(series: dict[str, list[tuple[float, float]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(series)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (k, pts) in zip(axes.flat, series.items(), strict=False):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        ax.set_title(k)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _plot_pil(series: dict[str, list[tuple[float, float]]], out: Path) -> Path:
    from PIL import Image, ImageDraw

    pw, ph, margin = 360, 220, 40
    n = len(series)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    img = Image.new("RGB", (cols * pw, rows * ph), "white")
    draw = ImageDraw.Draw(img)
    for i, (k, pts) in enumerate(series.items()):
        x0, y0 = (i % cols) * pw, (i // cols) * ph
        left, top = x0 + margin + 10, y0 + 22
        right, bottom = x0 + pw - 12, y0 + ph - margin + 10
        draw.rectangle([left, top, right, bottom], outline="black")
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        xmin, xmax = min(xs), max(xs)
        ymin, ymax = min(ys), max(ys)
        if xmax == xmin:
            xmax = xmin + 1
        if ymax == ymin:
            ymax = ymin + abs(ymin) * 0.01 + 1e-12
        coords = [
            (
                left + (x - xmin) / (xmax - xmin) * (right - left),
                bottom - (y - ymin) / (ymax - ymin) * (bottom - top),
            )
            for x, y in pts
        ]
        if len(coords) > 1:
            draw.line(coords, fill=(31, 119, 180), width=2)
        else:
            cx, cy = coords[0]
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=(31, 119, 180))
        draw.text((x0 + pw // 2 - 4 * len(k), y0 + 4), k, fill="black")
        draw.text((x0 + 2, top), f"{ymax:.3g}", fill="black")
        draw.text((x0 + 2, bottom - 10), f"{ymin:.3g}", fill="black")
        draw.text((left, bottom + 4), f"{xmin:g}", fill="black")
        draw.text((right - 40, bottom + 4), f"{xmax:g}", fill="black")
        draw.text((x0 + pw // 2 - 12, bottom + 16), "step", fill="black")
    img.save(out)
    return out
