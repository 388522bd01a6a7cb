"""The student/teacher backbone: a timm ViT that accepts iBOT masks.

timm's ``VisionTransformer`` has no mask token, so `MaskedViT` runs its parts itself: patch
embedding, substitution of a learned mask token at masked positions, class token + position
embedding (resampled for any crop size), the blocks (optionally gradient-checkpointed), final norm.
The wrapped ViT keeps timm's parameter names, so ``backbone.vit.state_dict()`` is a plain timm
state dict (what `emdino.ssl.export` writes).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from emdino.ssl.config import ModelConfig


class MaskedViT(nn.Module):
    """A timm ViT with DINOv2's mask token.

    Args:
        vit: a timm ``VisionTransformer`` built with ``dynamic_img_size=True`` and a class token.
        grad_checkpointing: recompute each block in the backward pass (less memory, ~30 % slower).

    Examples:
        >>> from emdino.ssl.config import ModelConfig
        >>> m = build_backbone(ModelConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2), 32)
        >>> out = m(torch.zeros(2, 1, 32, 32), masks=torch.zeros(2, 16, dtype=torch.bool))
        >>> out["cls"].shape, out["patch"].shape
        (torch.Size([2, 32]), torch.Size([2, 16, 32]))
    """

    def __init__(self, vit: VisionTransformer, grad_checkpointing: bool = False) -> None:
        super().__init__()
        if not vit.dynamic_img_size:
            raise ValueError("MaskedViT needs a ViT built with dynamic_img_size=True")
        if vit.cls_token is None:
            raise ValueError("MaskedViT needs a ViT with a class token")
        self.vit = vit
        self.embed_dim = int(vit.embed_dim)
        self.patch_size = int(vit.patch_embed.patch_size[0])
        # DINOv2 initialises the mask token to zeros.
        self.mask_token = nn.Parameter(torch.zeros(1, self.embed_dim))
        self.grad_checkpointing = grad_checkpointing

    @property
    def num_blocks(self) -> int:
        return len(self.vit.blocks)

    def tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Embedded tokens (class token first) before the blocks.

        Args:
            x: ``(B, C, H, W)`` images, H and W multiples of the patch size.
            masks: ``(B, N)`` bool, True where the patch embedding is replaced by the mask token.
        """
        vit = self.vit
        t = vit.patch_embed(x)  # (B, h, w, D) with dynamic_img_size
        if masks is not None:
            b, h, w, d = t.shape
            if masks.shape != (b, h * w):
                raise ValueError(f"masks {tuple(masks.shape)} do not match {b} x {h * w} patches")
            # torch.where keeps mask_token in the graph even with no mask set, so DDP always
            # sees a gradient for it.
            t = torch.where(masks.view(b, h, w, 1), self.mask_token.to(t.dtype).view(1, 1, 1, d), t)
        t = vit._pos_embed(t)
        t = vit.patch_drop(t)
        return vit.norm_pre(t)

    def _run_block(self, blk: nn.Module, t: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, t, use_reentrant=False)
        return blk(t)

    def forward(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Normalised class and patch tokens.

        Returns:
            ``{"cls": (B, D), "patch": (B, N, D)}`` after the final LayerNorm.
        """
        t = self.tokens(x, masks)
        for blk in self.vit.blocks:
            t = self._run_block(blk, t)
        t = self.vit.norm(t)
        n_prefix = self.vit.num_prefix_tokens
        return {"cls": t[:, 0], "patch": t[:, n_prefix:]}

    def last_blocks(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Outputs of the last ``n`` blocks, each through the final norm, as ``(B, h, w, D)``.

        Used by the probes (DINOv2's ``get_intermediate_layers(..., norm=True)``).
        """
        if not 1 <= n <= self.num_blocks:
            raise ValueError(f"n must be in 1..{self.num_blocks}, got {n}")
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        t = self.tokens(x)
        outs = []
        for i, blk in enumerate(self.vit.blocks):
            t = self._run_block(blk, t)
            if i >= self.num_blocks - n:
                o = self.vit.norm(t)[:, self.vit.num_prefix_tokens :]
                outs.append(o.reshape(x.shape[0], h, w, -1))
        return outs


def build_vit(
    cfg: ModelConfig, img_size: int, drop_path_rate: float | None = None
) -> VisionTransformer:
    """The bare timm ViT of a `ModelConfig` (no classifier, dynamic image size).

    Args:
        cfg: model section of the config.
        img_size: crop size the position embedding is made for (other sizes are resampled).
        drop_path_rate: overrides ``cfg.drop_path_rate`` (the teacher uses 0).
    """
    if img_size % cfg.patch_size:
        raise ValueError(f"img_size {img_size} is not a multiple of patch {cfg.patch_size}")
    return VisionTransformer(
        img_size=img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=0,
        global_pool="token",
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        init_values=cfg.layerscale,
        dynamic_img_size=True,
        drop_path_rate=cfg.drop_path_rate if drop_path_rate is None else drop_path_rate,
    )


def build_backbone(
    cfg: ModelConfig, img_size: int, drop_path_rate: float | None = None
) -> MaskedViT:
    """A `MaskedViT` for a `ModelConfig`.

    Args:
        cfg: model section of the config.
        img_size: the global crop size (position embedding grid = img_size / patch_size).
        drop_path_rate: overrides ``cfg.drop_path_rate`` (the teacher uses 0).
    """
    return MaskedViT(build_vit(cfg, img_size, drop_path_rate), cfg.grad_checkpointing)
