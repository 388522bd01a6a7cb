"""The ViT family: DINOv2-style Vision Transformers on timm, tiny to giant, patch 8/14/16.

`EMViT` is timm's ``VisionTransformer`` (same parameter names, so timm state dicts load as they
are, and timm's ``forward_intermediates`` works) with one change: the position embedding is
resampled the way the weights were trained (`emdino.models.pos_embed`), so DINOv2 and EM-DINO
weights give the official features at every input size.

Registered architectures (``emdino list`` shows them with their weights)::

    vit_{tiny,small,base,large,giant}_patch{8,14,16}[_reg4]

``_reg4`` adds DINOv2's four register tokens. Giant uses DINOv2's SwiGLU feed-forward.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from timm.layers import Mlp, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from emdino.models.pos_embed import resample_pos_embed
from emdino.models.registry import register_arch

#: Width, depth and heads per size name (DINOv2's ViT-S/B/L/g and timm's tiny).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "giant": {"embed_dim": 1536, "depth": 40, "num_heads": 24, "ffn": "swiglu"},
}
PATCH_SIZES = (8, 14, 16)
#: Position grid of the ``.random`` configurations: DINOv2's 518 for patch 14, else 224.
DEFAULT_IMG_SIZE = {8: 224, 14: 518, 16: 224}


class EMViT(VisionTransformer):
    """timm ``VisionTransformer`` whose position embedding is resampled as in training.

    Args:
        pos_interp_offset: DINOv2's interpolation offset (0.1 for DINOv2/EM-DINO v1 weights); 0
            resamples to an explicit size as timm does.
        pos_interp_antialias: antialias when the position grid shrinks.
        kwargs: passed to timm's ``VisionTransformer`` (``dynamic_img_size`` is forced on).

    Examples:
        >>> m = build_vit(img_size=56, in_chans=1, patch_size=14, embed_dim=32, depth=2,
        ...               num_heads=2).eval()
        >>> final, inter = m.forward_intermediates(torch.zeros(1, 1, 70, 42), indices=[0])
        >>> final.shape, inter[0].shape
        (torch.Size([1, 16, 32]), torch.Size([1, 32, 5, 3]))
    """

    def __init__(
        self, *, pos_interp_offset: float = 0.0, pos_interp_antialias: bool = True, **kwargs: Any
    ) -> None:
        kwargs["dynamic_img_size"] = True
        super().__init__(**kwargs)
        self.pos_interp_offset = float(pos_interp_offset)
        self.pos_interp_antialias = bool(pos_interp_antialias)

    @property
    def patch_size(self) -> int:
        return int(self.patch_embed.patch_size[0])

    @property
    def num_registers(self) -> int:
        return int(self.num_reg_tokens)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        # timm's version with the training-time resampling (timm always uses size + antialias).
        b, h, w, c = x.shape
        prefix = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(b, -1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(b, -1, -1))
        pos = resample_pos_embed(
            self.pos_embed,
            (h, w),
            tuple(self.patch_embed.grid_size),
            num_prefix=0 if self.no_embed_class else self.num_prefix_tokens,
            offset=self.pos_interp_offset,
            antialias=self.pos_interp_antialias,
        )
        x = x.reshape(b, h * w, c)
        if self.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        return self.pos_drop(x)


def build_vit(
    *,
    img_size: int,
    in_chans: int = 1,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    reg_tokens: int = 0,
    ffn: str = "mlp",
    layerscale: float | None = 1e-5,
    pos_interp_offset: float = 0.0,
    pos_interp_antialias: bool = True,
) -> EMViT:
    """Build an `EMViT` without classifier (DINOv2 layout: class token, optional registers).

    Args:
        img_size: side (pixels) of the position-embedding grid; other sizes are resampled.
        in_chans: input channels (1 for EM).
        patch_size: patch side in pixels.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: hidden/width ratio of the MLP (DINOv2's 4; SwiGLU derives its own).
        reg_tokens: register tokens (DINOv2 uses 4; 0 = none).
        ffn: ``"mlp"`` (GELU MLP) or ``"swiglu"`` (DINOv2 giant's fused SwiGLU).
        layerscale: LayerScale init value (None disables LayerScale).
        pos_interp_offset: see `EMViT`.
        pos_interp_antialias: see `EMViT`.

    Raises:
        ValueError: sizes that do not fit together.
    """
    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    if in_chans < 1 or reg_tokens < 0:
        raise ValueError(f"in_chans must be >= 1 and reg_tokens >= 0 ({in_chans}, {reg_tokens})")
    kwargs: dict[str, Any] = {}
    if ffn == "swiglu":
        # DINOv2's SwiGLUFFNFused hidden width: (int(4 * d * 2 / 3) + 7) // 8 * 8, packed x2.
        hidden = (int(embed_dim * mlp_ratio * 2 / 3) + 7) // 8 * 8
        kwargs.update(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=2 * hidden / embed_dim)
    elif ffn == "mlp":
        kwargs.update(mlp_layer=Mlp, mlp_ratio=mlp_ratio)
    else:
        raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {ffn!r}")
    return EMViT(
        pos_interp_offset=pos_interp_offset,
        pos_interp_antialias=pos_interp_antialias,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=0,
        global_pool="token",
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        qkv_bias=True,
        init_values=layerscale,
        class_token=True,
        reg_tokens=reg_tokens,
        # timm folds the class position into the class token when registers exist (as it does
        # for DINOv2-reg weights); the converters do the same.
        no_embed_class=reg_tokens > 0,
        **kwargs,
    )


def _register_all() -> None:
    for (size, dims), patch, reg in itertools.product(SIZES.items(), PATCH_SIZES, (0, 4)):
        name = f"vit_{size}_patch{patch}" + (f"_reg{reg}" if reg else "")
        register_arch(
            name,
            build_vit,
            family="vit",
            default_img_size=DEFAULT_IMG_SIZE[patch],
            patch_size=patch,
            reg_tokens=reg,
            **dims,
        )


_register_all()
