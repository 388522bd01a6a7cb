"""Training losses, from MONAI: DiceCE / Dice+BCE / focal for labels, L1 (+SSIM) for images."""

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

    def restoration(y: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
        y, t = y.float(), b["target"].float()
        if "mask" in b:
            m = b["mask"].float()
            return ((y - t).abs() * m).sum() / m.sum().clamp_min(1.0)
        loss = F.l1_loss(y, t)
        if ssim is not None:
            loss = loss + cfg.ssim_weight * ssim(y.clamp(0, 1), t)
        return loss

    return restoration
