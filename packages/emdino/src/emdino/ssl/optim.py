"""AdamW parameter groups with layer-wise lr decay, as DINOv2 (``dinov2/train/ssl_meta_arch.py``).

Each parameter gets an ``lr_multiplier`` (layer-wise decay ``d^(L + 1 - layer)``, times
``patch_embed_lr_mult`` for the patch embedding), a ``wd_multiplier`` (0 for biases, norms and
LayerScale gammas) and ``is_last_layer`` (the prototypes, which follow their own lr schedule).
Parameters sharing all three are fused into one group.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

_EMBED = (".pos_embed", ".patch_embed", ".mask_token", ".cls_token", ".reg_token")


def vit_layer_id(name: str, num_blocks: int) -> int:
    """0 for embeddings, ``i + 1`` for block ``i``, ``num_blocks + 1`` for the rest (norm, heads).

    Examples:
        >>> vit_layer_id("backbone.vit.blocks.3.attn.qkv.weight", 12)
        4
        >>> vit_layer_id("backbone.mask_token", 12), vit_layer_id("dino_head.mlp.0.weight", 12)
        (0, 13)
    """
    dotted = "." + name
    if dotted.startswith(".backbone."):
        if any(k in dotted for k in _EMBED):
            return 0
        if ".blocks." in dotted:
            return int(dotted.split(".blocks.")[1].split(".")[0]) + 1
    return num_blocks + 1


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    num_blocks: int,
    layerwise_decay: float = 1.0,
    patch_embed_lr_mult: float = 1.0,
) -> list[dict]:
    """AdamW parameter groups (trainable parameters only).

    Args:
        named_params: ``(name, parameter)`` pairs; backbone names start with ``backbone.``.
        num_blocks: ViT depth.
        layerwise_decay: per-block lr decay factor d (1 = none).
        patch_embed_lr_mult: extra lr factor of the patch embedding.

    Raises:
        ValueError: a factor outside (0, 1] (decay) or negative (patch multiplier).
    """
    if not 0 < layerwise_decay <= 1 or patch_embed_lr_mult < 0:
        raise ValueError("layerwise_decay must be in (0, 1] and patch_embed_lr_mult >= 0")
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        lr_mult = layerwise_decay ** (num_blocks + 1 - vit_layer_id(name, num_blocks))
        if "patch_embed" in name:
            lr_mult *= patch_embed_lr_mult
        no_wd = name.endswith(".bias") or "norm" in name or "gamma" in name
        wd_mult = 0.0 if no_wd else 1.0
        last = "last_layer" in name
        key = (lr_mult, wd_mult, last)
        g = groups.setdefault(
            key,
            {
                "params": [],
                "lr_multiplier": lr_mult,
                "wd_multiplier": wd_mult,
                "is_last_layer": last,
            },
        )
        g["params"].append(p)
    return list(groups.values())


def build_optimizer(groups: list[dict], betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over the groups; lr and weight decay are set every step by `apply_schedules`."""
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, betas=betas, fused=fused)


def apply_schedules(
    optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float
) -> None:
    """Set each group's lr and weight decay from the step's scheduled values."""
    for g in optimizer.param_groups:
        g["weight_decay"] = wd * g["wd_multiplier"]
        g["lr"] = (last_layer_lr if g["is_last_layer"] else lr) * g["lr_multiplier"]
