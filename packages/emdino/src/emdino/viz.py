"""Pictures of features: PCA of patch features as RGB, and 2D maps of embeddings.

Plots are drawn with Pillow (no matplotlib dependency). `project_2d` uses UMAP when
``umap-learn`` is installed; otherwise it falls back to PCA and says so in the returned label,
which the plots print in their title, so a PCA picture is never mistaken for a UMAP.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Distinct colours for categories (Tableau 10, then a few more).
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (57, 59, 121),
    (99, 121, 57),
    (140, 109, 49),
    (132, 60, 57),
    (123, 65, 115),
]


def pca(x: np.ndarray, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of rows of ``x`` ``[N, D]``: scores ``[N, n]`` and explained ratios.

    Components have a deterministic sign (largest loading positive), so pictures do not flip
    between runs.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> s, r = pca(rng.normal(size=(50, 8)) * np.arange(1, 9), 2)
        >>> s.shape, bool(r[0] > r[1])
        ((50, 2), True)
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"pca needs [N >= 2, D] data, got shape {x.shape}")
    n = min(n, x.shape[1], x.shape[0])
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:n]
    signs = np.sign(comps[np.arange(n), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    var = s**2
    return (xc @ comps.T).astype(np.float32), (var[:n] / var.sum()).astype(np.float32)


def pca_rgb(patch: np.ndarray, *, foreground: np.ndarray | None = None) -> np.ndarray:
    """DINOv2's view of a feature map: its first three principal components as RGB.

    Args:
        patch: ``[D, h, w]`` features.
        foreground: optional ``[h, w]`` bool mask; PCA is fitted on these tokens only and the
            rest is black.

    Returns:
        ``[h, w, 3]`` uint8; each component stretched between its 1st and 99th percentile.
    """
    if patch.ndim != 3:
        raise ValueError(f"patch must be [D, h, w], got {patch.shape}")
    d, h, w = patch.shape
    flat = patch.reshape(d, -1).T
    mask = np.ones(h * w, bool) if foreground is None else np.asarray(foreground).reshape(-1)
    scores = np.zeros((h * w, 3), np.float32)
    s, _ = pca(flat[mask], 3)
    scores[mask, : s.shape[1]] = s
    lo = np.percentile(scores[mask], 1, axis=0)
    hi = np.percentile(scores[mask], 99, axis=0)
    rgb = np.clip((scores - lo) / np.maximum(hi - lo, 1e-8), 0, 1)
    rgb[~mask] = 0
    return (rgb.reshape(h, w, 3) * 255).round().astype(np.uint8)


def pca_figure(
    image: np.ndarray, rgb: np.ndarray, out: str | Path, *, size: int = 512, title: str = ""
) -> Path:
    """Save the grey image and its PCA picture side by side as a PNG.

    Args:
        image: ``[H, W]`` uint8 input.
        rgb: ``[h, w, 3]`` output of `pca_rgb` (shown with nearest-neighbour upscaling).
        out: PNG path.
        size: longest side of each panel in pixels.
        title: caption drawn above the panels.
    """
    from PIL import Image, ImageDraw

    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    h, w = image.shape
    scale = size / max(h, w)
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    left = Image.fromarray(np.asarray(image, np.uint8)).resize((pw, ph), Image.Resampling.BOX)
    # Each token covers p x p pixels: map the token grid onto the same panel, nearest.
    right = Image.fromarray(rgb).resize((pw, ph), Image.Resampling.NEAREST)
    lines = _wrap(title, max(20, (2 * pw + 8) // 6)) if title else []
    top = 6 + 13 * len(lines) if lines else 0
    canvas = Image.new("RGB", (2 * pw + 8, ph + top), (255, 255, 255))
    canvas.paste(left.convert("RGB"), (0, top))
    canvas.paste(right, (pw + 8, top))
    if lines:
        ImageDraw.Draw(canvas).multiline_text((4, 3), "\n".join(lines), fill=(0, 0, 0), spacing=2)
    out = Path(out)
    canvas.save(out, optimize=True)
    return out


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` characters, breaking at ``" | "`` separators and spaces."""
    import textwrap

    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(paragraph, width) or [""]
    return lines


def umap_available() -> bool:
    """True when ``umap-learn`` is importable."""
    return importlib.util.find_spec("umap") is not None


def project_2d(x: np.ndarray, method: str = "auto", *, seed: int = 0) -> tuple[np.ndarray, str]:
    """2D map of embeddings ``[N, D]``.

    Args:
        x: embeddings, one row each.
        method: ``umap`` (needs ``umap-learn``), ``pca``, or ``auto`` (UMAP when installed,
            else PCA).
        seed: random state of UMAP.

    Returns:
        ``([N, 2] coordinates, label)``; the label names the method and, for an automatic PCA
        fallback, that umap-learn was missing.

    Raises:
        ValueError: unknown method, or ``umap`` without umap-learn installed.
    """
    x = np.asarray(x, np.float32)
    if method not in ("auto", "umap", "pca"):
        raise ValueError(f"method must be auto, umap or pca, got {method!r}")
    if method == "umap" and not umap_available():
        raise ValueError(
            "UMAP needs the umap-learn package (pip install umap-learn); or use --method pca"
        )
    if method == "pca" or (method == "auto" and not umap_available()):
        xy, ratio = pca(x, 2)
        label = f"PCA (PC1 {ratio[0]:.0%}, PC2 {ratio[1]:.0%} of variance)"
        if method == "auto":
            label += ", not UMAP: umap-learn is not installed"
        return xy, label
    import umap  # optional dependency

    n_neighbors = max(2, min(15, len(x) - 1))
    xy = umap.UMAP(n_neighbors=n_neighbors, random_state=seed).fit_transform(x)
    return np.asarray(xy, np.float32), "UMAP"


def scatter_png(
    xy: np.ndarray,
    labels: Sequence[str],
    out: str | Path,
    *,
    title: str,
    axis_names: tuple[str, str] = ("1", "2"),
    size: tuple[int, int] = (720, 520),
) -> Path:
    """A scatter plot of ``xy`` coloured by ``labels`` with a legend, saved as PNG.

    Args:
        xy: ``[N, 2]`` coordinates.
        labels: category of each point (up to 15 distinct ones get distinct colours).
        out: PNG path.
        title: drawn at the top (say which projection it is).
        axis_names: names of the horizontal and vertical axis.
        size: picture size (width, height) in pixels.
    """
    from PIL import Image, ImageDraw

    xy = np.asarray(xy, np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(labels) != len(xy):
        raise ValueError("xy must be [N, 2] with one label per point")
    cats = sorted({str(c) for c in labels})
    colour = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(cats)}
    width, height = size
    legend_w = 10 + 7 * max(len(f"{c} (000)") for c in cats) if cats else 0
    plot = (50, 30, width - legend_w - 20, height - 40)  # left, top, right, bottom
    lines = _wrap(title, width // 6)
    plot = (plot[0], plot[1] + 13 * (len(lines) - 1), plot[2], plot[3])
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.multiline_text((10, 8), "\n".join(lines), fill=(0, 0, 0), spacing=2)
    draw.rectangle(plot, outline=(0, 0, 0))
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    px = plot[0] + 6 + (xy[:, 0] - lo[0]) / span[0] * (plot[2] - plot[0] - 12)
    py = plot[3] - 6 - (xy[:, 1] - lo[1]) / span[1] * (plot[3] - plot[1] - 12)
    order = np.random.default_rng(0).permutation(len(xy))  # no category hides another
    for k in order:
        c = colour[str(labels[k])]
        draw.ellipse((px[k] - 2.5, py[k] - 2.5, px[k] + 2.5, py[k] + 2.5), fill=c)
    draw.text(((plot[0] + plot[2]) // 2 - 20, plot[3] + 8), axis_names[0], fill=(0, 0, 0))
    draw.text((8, (plot[1] + plot[3]) // 2), axis_names[1], fill=(0, 0, 0))
    counts = {c: sum(1 for lab in labels if str(lab) == c) for c in cats}
    for i, c in enumerate(cats):
        y = plot[1] + 4 + 16 * i
        draw.rectangle((plot[2] + 12, y + 2, plot[2] + 22, y + 12), fill=colour[c])
        draw.text((plot[2] + 28, y), f"{c} ({counts[c]})", fill=(0, 0, 0))
    out = Path(out)
    img.save(out, optimize=True)
    return out
