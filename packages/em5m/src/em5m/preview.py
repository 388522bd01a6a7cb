"""Small PNG previews of EM slices, optionally with a label overlay, for quick visual checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Distinct, colour-blind-friendly overlay colours (Okabe-Ito) for label values 1, 2, ...
_PALETTE = np.array(
    [[230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178], [213, 94, 0]],
    dtype=np.float32,
)


def save_png(
    image: np.ndarray,
    path: str | Path,
    *,
    overlay: np.ndarray | None = None,
    alpha: float = 0.45,
    max_side: int = 1024,
) -> Path:
    """Write a 2D grey image (any dtype, stretched to its 0.5-99.5 % range) as PNG.

    Args:
        image: 2D array.
        path: output file.
        overlay: optional 2D integer/bool labels; non-zero values are tinted.
        alpha: overlay opacity.
        max_side: down-sample (nearest) so the longest side is at most this.

    Examples:
        >>> import numpy as np, tempfile, os
        >>> p = save_png(np.eye(8), os.path.join(tempfile.mkdtemp(), "eye.png"))
        >>> p.suffix
        '.png'
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"save_png needs a 2D image, got shape {img.shape}")
    step = max(1, int(np.ceil(max(img.shape) / max_side)))
    img = img[::step, ::step]
    lo, hi = np.percentile(img, [0.5, 99.5])
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if overlay is not None:
        lab = np.asarray(overlay)[::step, ::step].astype(np.int64)
        if lab.shape != img.shape:
            raise ValueError(f"overlay shape {overlay.shape} does not match image {image.shape}")
        mask = lab > 0
        colours = _PALETTE[(lab[mask] - 1) % len(_PALETTE)]
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colours
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path
