"""Frozen features for the probes: tiled patch-grid features and pooled image features.

An image is padded (reflect) to a multiple of the tile size, cut into non-overlapping tiles,
normalised like the pretraining data, embedded, and the tiles' patch grids are stitched back. The
features of a tile therefore see only that tile (no context across tile borders).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emdino.precision import autocast

#: ``(B, 1, T, T)`` normalised tiles -> ``(B, T/p, T/p, D)`` patch features.
Embedder = Callable[[torch.Tensor], torch.Tensor]


def vit_embedder(vit: nn.Module, n_last_blocks: int = 1) -> tuple[Embedder, int]:
    """An `Embedder` of a timm ViT or `emdino.ssl.backbone.MaskedViT`, and its patch size.

    The features are the final-norm outputs of the last ``n_last_blocks`` blocks, concatenated
    (DINOv2's ``get_intermediate_layers(norm=True)``); 1 = the final patch tokens.

    Examples:
        >>> from emdino.ssl.backbone import build_backbone
        >>> from emdino.ssl.config import ModelConfig
        >>> m = build_backbone(ModelConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2), 32)
        >>> embed, p = vit_embedder(m, n_last_blocks=2)
        >>> embed(torch.zeros(1, 1, 32, 16)).shape, p
        (torch.Size([1, 4, 2, 64]), 8)
    """
    from emdino.ssl.backbone import MaskedViT

    model = vit if isinstance(vit, MaskedViT) else MaskedViT(vit)
    model.eval()

    @torch.no_grad()
    def embed(x: torch.Tensor) -> torch.Tensor:
        return torch.cat(model.last_blocks(x, n_last_blocks), dim=-1)

    return embed, model.patch_size


def _to_unit(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    from emdino.ssl.data import to_unit

    return np.stack([to_unit(im) for im in images])


@torch.no_grad()
def patch_features(
    embed: Embedder,
    images: np.ndarray,
    *,
    patch_size: int,
    tile: int = 128,
    mean: float = 0.595446,
    std: float = 0.211906,
    batch_size: int = 16,
    precision: str = "auto",
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Patch-grid features of a stack of 2D images.

    Args:
        embed: the feature extractor (see `vit_embedder`).
        images: ``(N, H, W)`` uint8 (or any dtype, mapped to [0, 1] per image).
        patch_size: ViT patch size; ``tile`` must be a multiple of it.
        tile: tile side in pixels.
        mean: normalisation mean of the [0, 1] image.
        std: normalisation std.
        batch_size: tiles per forward pass.
        precision: ``auto`` (bf16 autocast where the CPU computes bf16 natively, else fp32;
            `emdino.precision`), ``bf16`` or ``fp32``.
        out_dtype: dtype of the returned features (float16 halves memory).

    Returns:
        ``(N, ceil(H / tile) * tile / p, ceil(W / tile) * tile / p, D)`` features of the padded
        image (crop the logits back to ``(H, W)`` after upsampling).

    Raises:
        ValueError: bad shapes or a tile that is not a multiple of the patch size.
    """
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got {images.shape}")
    if tile % patch_size:
        raise ValueError(f"tile {tile} is not a multiple of patch {patch_size}")
    n, h, w = images.shape
    ph, pw = -h % tile, -w % tile
    g = tile // patch_size
    rows, cols = (h + ph) // tile, (w + pw) // tile
    ctx = autocast(precision, "cpu")
    out: torch.Tensor | None = None
    for i in range(n):
        x = torch.from_numpy(_to_unit(images[i : i + 1]))[:, None]
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        x = (x - mean) / std
        tiles = (
            x.unfold(2, tile, tile)
            .unfold(3, tile, tile)  # (1, 1, rows, cols, tile, tile)
            .reshape(rows * cols, 1, tile, tile)
        )
        feats = []
        for b in range(0, tiles.shape[0], batch_size):
            with ctx:
                feats.append(embed(tiles[b : b + batch_size]).to(out_dtype))
        f = torch.cat(feats).reshape(rows, cols, g, g, -1).permute(0, 2, 1, 3, 4)
        f = f.reshape(rows * g, cols * g, -1)
        if out is None:
            out = torch.empty((n, *f.shape), dtype=out_dtype)
        out[i] = f
    assert out is not None
    return out


def pooled_features(patch: torch.Tensor) -> torch.Tensor:
    """Average of patch features per image: ``(N, h, w, D)`` -> ``(N, D)`` float32."""
    return patch.float().mean(dim=(1, 2))
