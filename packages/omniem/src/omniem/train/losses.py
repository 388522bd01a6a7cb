"""Training losses, from MONAI: DiceCE / Dice+BCE / focal for labels, L1 (+SSIM) / L2 for images."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, FocalLoss, SSIMLoss

from omniem.train.config import LossConfig

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def build_loss(cfg: LossConfig, task: str, out_channels: int) -> LossFn:
    """The loss of ``cfg.kind`` as ``fn(output, batch) -> scalar`` (computed in float32).

    ``batch["target"]`` is ``[B, 1, H, W]`` class ids for ``semantic``, ``[B, C, H, W]`` 0/1 maps
    for ``instances``, or the clean image for ``restoration`` (with ``batch["mask"]`` for blind-spot
    training: the loss then only counts the masked pixels).
    """
    weight = torch.tensor(cfg.class_weights) if cfg.class_weights else None
    if cfg.kind == "dice_ce":
        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, weight=weight)
        return lambda y, b: dice_ce(y.float(), b["target"])
    if cfg.kind == "focal":
        focal = FocalLoss(
            to_onehot_y=task == "semantic", use_softmax=task == "semantic", weight=weight
        )
        return lambda y, b: focal(y.float(), b["target"])
    if cfg.kind == "dice_bce":
        dice = DiceLoss(sigmoid=True)

        def dice_bce(y: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
            t = b["target"].float()
            return dice(y.float(), t) + F.binary_cross_entropy_with_logits(y.float(), t)

        return dice_bce
    ssim = SSIMLoss(spatial_dims=2, data_range=1.0) if cfg.kind == "l1_ssim" else None

    def pixel_error(d: torch.Tensor) -> torch.Tensor:
        return d.square() if cfg.kind == "l2" else d.abs()

    def restoration(y: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
        y, t = y.float(), b["target"].float()
        if "mask" in b:  # blind spot: the masked pixels only; each sample weighs the same
            m = b["mask"].float()
            per_sample = (pixel_error(y - t) * m).flatten(1).sum(1)
            loss = (per_sample / m.flatten(1).sum(1).clamp_min(1.0)).mean()
            full = m.flatten(1).amin(1) > 0  # supervised samples in a mixed batch
            if ssim is not None and bool(full.any()):
                share = full.float().mean()
                loss = loss + cfg.ssim_weight * share * ssim(y[full].clamp(0, 1), t[full])
            return loss
        loss = pixel_error(y - t).mean()
        if ssim is not None:
            loss = loss + cfg.ssim_weight * ssim(y.clamp(0, 1), t)
        return loss

    return restoration
