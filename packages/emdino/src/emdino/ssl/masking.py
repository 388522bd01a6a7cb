"""iBOT block masks (BEiT's ``MaskingGenerator`` as used by DINOv2), driven by a numpy Generator.

Masks are drawn per sample from the sample's own generator, so they do not depend on the batch
composition, the number of data-loader workers or the number of ranks.
"""

from __future__ import annotations

import math

import numpy as np


class BlockMaskGenerator:
    """Rectangular blocks of patches until (about) ``n`` patches are masked.

    Args:
        grid: ``(h, w)`` patch grid of a global crop.
        min_patches: smallest block, in patches.
        max_patches: largest block (default: half the grid, as in DINOv2).
        min_aspect: smallest block aspect ratio (the largest is its inverse).

    Examples:
        >>> gen = BlockMaskGenerator((8, 8))
        >>> m = gen(20, np.random.default_rng(0))
        >>> m.shape, 4 <= int(m.sum()) <= 20
        ((8, 8), True)
    """

    def __init__(
        self,
        grid: tuple[int, int],
        min_patches: int = 4,
        max_patches: int | None = None,
        min_aspect: float = 0.3,
    ) -> None:
        h, w = grid
        if h < 1 or w < 1 or min_patches < 1 or not 0 < min_aspect <= 1:
            raise ValueError(
                "BlockMaskGenerator needs a positive grid, min_patches >= 1, 0 < aspect"
            )
        self.height, self.width = h, w
        self.min_patches = min_patches
        self.max_patches = max_patches if max_patches is not None else int(0.5 * h * w)
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def _add_block(self, mask: np.ndarray, max_new: int, rng: np.random.Generator) -> int:
        for _ in range(10):
            area = rng.uniform(self.min_patches, max_new)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h < self.height and 0 < w < self.width:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_new:
                    block[...] = True
                    return new
        return 0

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A ``(h, w)`` bool mask with at most ``n`` patches set (0 gives an empty mask)."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < n:
            max_new = min(n - count, self.max_patches)
            if max_new < self.min_patches:
                break
            added = self._add_block(mask, max_new, rng)
            if added == 0:
                break
            count += added
        return mask


def sample_mask(
    gen: BlockMaskGenerator,
    rng: np.random.Generator,
    probability: float,
    ratio: tuple[float, float],
) -> np.ndarray:
    """One view's flat mask: with ``probability``, a ratio drawn uniformly from ``ratio``.

    DINOv2 spreads the ratios of a batch evenly (``linspace``) over its masked half; drawing per
    sample instead keeps masks independent of how samples are batched or split over ranks.
    """
    n_tokens = gen.height * gen.width
    n = int(n_tokens * rng.uniform(*ratio)) if rng.uniform() < probability else 0
    return gen(n, rng).reshape(-1)
