"""Position-embedding resampling, bit-compatible with DINOv2's ``interpolate_pos_encoding``.

DINOv2 (and EM-DINO v1, trained with its code) resample the learned patch-position grid with
bicubic interpolation given a *scale factor* ``(n + 0.1) / M`` and no antialias; the register
models use an explicit size with antialias; timm uses an explicit size with antialias. The three
differ by a few percent when the grid shrinks (e.g. 37 -> 16 for 224-pixel input), so each
pretrained configuration records which one its weights were trained with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_grid(
    grid: torch.Tensor,
    new_hw: tuple[int, int],
    *,
    offset: float = 0.0,
    antialias: bool = True,
) -> torch.Tensor:
    """Resample a position grid ``(1, H, W, D)`` to ``(1, h, w, D)``.

    Args:
        grid: patch position embeddings laid out on their grid.
        new_hw: target grid (rows, columns).
        offset: DINOv2's interpolation offset; > 0 uses ``scale_factor=(n + offset) / M`` as
            DINOv2 does, 0 an explicit output size (timm, DINOv2 with registers).
        antialias: antialias (matters only when the grid shrinks).

    Returns:
        The resampled grid in the input dtype (computed in float32).

    Examples:
        >>> g = torch.randn(1, 4, 4, 8)
        >>> resample_grid(g, (4, 4)) is g
        True
        >>> resample_grid(g, (6, 2), offset=0.1).shape
        torch.Size([1, 6, 2, 8])
    """
    if grid.ndim != 4 or grid.shape[0] != 1:
        raise ValueError(f"grid must be (1, H, W, D), got {tuple(grid.shape)}")
    old_hw = (int(grid.shape[1]), int(grid.shape[2]))
    new_hw = (int(new_hw[0]), int(new_hw[1]))
    if min(new_hw) < 1:
        raise ValueError(f"new grid {new_hw} must be at least 1 x 1")
    if old_hw == new_hw:
        return grid
    x = grid.float().permute(0, 3, 1, 2)
    if offset:
        scale = ((new_hw[0] + offset) / old_hw[0], (new_hw[1] + offset) / old_hw[1])
        x = F.interpolate(x, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        x = F.interpolate(x, size=new_hw, mode="bicubic", antialias=antialias)
    if tuple(x.shape[-2:]) != new_hw:  # scale_factor rounding; DINOv2 asserts the same
        raise RuntimeError(f"position grid resampled to {tuple(x.shape[-2:])}, not {new_hw}")
    return x.permute(0, 2, 3, 1).to(grid.dtype)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_hw: tuple[int, int],
    old_hw: tuple[int, int],
    *,
    num_prefix: int,
    offset: float = 0.0,
    antialias: bool = True,
) -> torch.Tensor:
    """Resample a ``(1, num_prefix + H*W, D)`` position embedding to a new grid.

    Prefix entries (class-token position) are kept as they are.

    Args:
        pos_embed: the embedding, prefix entries first.
        new_hw: target grid (rows, columns).
        old_hw: grid of ``pos_embed`` (rows, columns).
        num_prefix: number of leading non-grid entries (1 with a class position, else 0).
        offset: see `resample_grid`.
        antialias: see `resample_grid`.

    Examples:
        >>> pe = torch.randn(1, 1 + 16, 8)
        >>> resample_pos_embed(pe, (3, 5), (4, 4), num_prefix=1).shape
        torch.Size([1, 16, 8])
    """
    n_grid = pos_embed.shape[1] - num_prefix
    if n_grid != old_hw[0] * old_hw[1]:
        raise ValueError(
            f"pos_embed has {n_grid} grid entries, not {old_hw[0]} x {old_hw[1]} = "
            f"{old_hw[0] * old_hw[1]}"
        )
    if tuple(new_hw) == tuple(old_hw):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    grid = grid.reshape(1, old_hw[0], old_hw[1], -1)
    grid = resample_grid(grid, new_hw, offset=offset, antialias=antialias)
    return torch.cat([prefix, grid.reshape(1, new_hw[0] * new_hw[1], -1)], dim=1)
