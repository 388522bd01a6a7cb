"""Ways of looking at a tile: test-time augmentation and orthoplanes.

Both wrap the engine's tile function (``[B, 1, ...] -> [B, C, ...]`` raw outputs) and average raw
outputs (logits), so the activation, blending and blocks downstream stay as they are.

- `with_tta`: the mean over the 8 flips and 90-degree rotations of each tile in (y, x).
- `orthoplanes`: a 2D model run on a 3D tile ``[B, 1, d, h, w]`` along all three axes (xy
  slices, xz slices, yz slices) and averaged: the 3D tile function the engine's 3D path (z tiles,
  3D blending) then runs like a 3D model's. Meant for (near-)isotropic volumes such as FIB-SEM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TileFn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["orthoplanes", "with_tta"]


def with_tta(fn: TileFn) -> TileFn:
    """``fn`` averaged over the 8 symmetries of the square on the last two axes.

    Examples:
        >>> x = torch.rand(2, 1, 4, 4)
        >>> bool(torch.allclose(with_tta(lambda t: t)(x), x))  # equivariant: unchanged
        True
        >>> y = with_tta(lambda t: t * torch.arange(4.0))(x)  # a column ramp: averaged out
        >>> bool(torch.allclose(y, 1.5 * x))
        True
    """
    from omniem.infer import dihedral_transforms

    transforms = dihedral_transforms()

    def tta(batch: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for do, undo in transforms:
            y = undo(fn(do(batch)))
            # The first term is copied: `y` may be a view of the caller's batch.
            total = y.clone() if total is None else total.add_(y)
        assert total is not None
        return total.div_(len(transforms))

    return tta


def _slices(fn: TileFn, planes: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` over ``[N, 1, a, b]`` planes, ``batch_size`` at a time -> ``[N, C, a, b]``."""
    n = planes.shape[0]
    return torch.cat([fn(planes[i : i + batch_size]) for i in range(0, n, batch_size)])


def orthoplanes(fn: TileFn, batch_size: int) -> TileFn:
    """A 3D tile function from a 2D one: the mean of its xy, xz and yz slice-wise outputs.

    Args:
        fn: 2D tile function ``[B, 1, a, b] -> [B, C, a, b]`` (any ``a, b``).
        batch_size: planes per call of ``fn``.

    Returns:
        ``[B, 1, d, h, w] -> [B, C, d, h, w]``.

    Examples:
        >>> f = orthoplanes(lambda t: torch.cat([t, 2 * t], 1), batch_size=3)
        >>> x = torch.rand(2, 1, 4, 5, 6)
        >>> y = f(x)
        >>> y.shape, bool(torch.allclose(y[:, 1], 2 * x[:, 0]))
        (torch.Size([2, 2, 4, 5, 6]), True)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def run(tiles: torch.Tensor) -> torch.Tensor:
        if tiles.ndim != 5 or tiles.shape[1] != 1:
            raise ValueError(f"orthoplanes expects [B, 1, d, h, w] tiles, got {tuple(tiles.shape)}")
        outs = []
        for v in tiles[:, 0]:  # [d, h, w]
            xy = _slices(fn, v[:, None], batch_size)  # [d, C, h, w]
            acc = xy.permute(1, 0, 2, 3)
            xz = _slices(fn, v.permute(1, 0, 2)[:, None].contiguous(), batch_size)  # [h, C, d, w]
            acc = acc + xz.permute(1, 2, 0, 3)
            yz = _slices(fn, v.permute(2, 0, 1)[:, None].contiguous(), batch_size)  # [w, C, d, h]
            acc = acc + yz.permute(1, 2, 3, 0)
            outs.append(acc / 3.0)
        return torch.stack(outs)

    return run
