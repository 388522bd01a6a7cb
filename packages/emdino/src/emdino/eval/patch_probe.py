"""Patch-level linear probe for semantic segmentation on frozen features.

The probe is a multinomial logistic regression applied to each patch feature (standardised with
the training features' mean and std). Its class scores on the patch grid are upsampled
bilinearly to pixels and compared with the full-resolution labels. Because both the linear map
and bilinear interpolation are linear, this is exactly logistic regression on features
upsampled bilinearly to pixels, at the cost of upsampling C scores instead of D features.

Training: AdamW on the per-pixel cross-entropy, minibatches of images, a fixed recipe (no
tuning on validation data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PatchLinearProbe(nn.Module):
    """Standardise -> linear -> (bilinear) upsample.

    Args:
        dim: feature size D.
        n_classes: number of classes C.
        mean: per-dimension feature mean (of the training features).
        std: per-dimension feature std.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int, n_classes: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError("a probe needs at least 2 classes")
        self.register_buffer("mean", mean.float().reshape(dim))
        self.register_buffer("std", std.float().reshape(dim).clamp(min=1e-6))
        self.linear = nn.Linear(dim, n_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def grid_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """``(N, h, w, D)`` features -> ``(N, C, h, w)`` scores on the patch grid."""
        z = (feats.float() - self.mean) / self.std
        return self.linear(z).permute(0, 3, 1, 2)

    def forward(
        self, feats: torch.Tensor, size: tuple[int, int], crop: tuple[int, int]
    ) -> torch.Tensor:
        """Pixel scores ``(N, C, crop_h, crop_w)``.

        Args:
            feats: ``(N, h, w, D)`` features of images padded to ``size``.
            size: padded image size the grid covers (``h * p, w * p``).
            crop: the original image size (top-left part of the padded image).
        """
        logits = F.interpolate(
            self.grid_logits(feats), size=size, mode="bilinear", align_corners=False
        )
        return logits[:, :, : crop[0], : crop[1]]


@dataclass(frozen=True)
class ProbeRecipe:
    """Training recipe of the patch probe (fixed in advance, the same for every backbone)."""

    epochs: int = 40
    batch_images: int = 4
    lr: float = 1e-2
    weight_decay: float = 1e-4
    seed: int = 0


#: The recipe every reported probe uses.
DEFAULT_RECIPE = ProbeRecipe()


def fit_patch_probe(
    feats: torch.Tensor,
    labels: np.ndarray,
    n_classes: int,
    patch_size: int,
    recipe: ProbeRecipe = DEFAULT_RECIPE,
    ignore_index: int = -100,
) -> PatchLinearProbe:
    """Train a patch probe.

    Args:
        feats: ``(N, h, w, D)`` training features (images padded to ``h*p x w*p``).
        labels: ``(N, H, W)`` integer class per pixel (H <= h*p, W <= w*p).
        n_classes: number of classes.
        patch_size: the backbone's patch size p.
        recipe: optimisation settings.
        ignore_index: label value excluded from the loss.

    Raises:
        ValueError: mismatched shapes.

    Examples:
        >>> f = torch.randn(2, 4, 4, 8)
        >>> y = np.zeros((2, 32, 32), np.int64); y[:, :16] = 1
        >>> probe = fit_patch_probe(f, y, 2, 8, ProbeRecipe(epochs=2))
        >>> predict(probe, f, 8, (32, 32)).shape
        (2, 32, 32)
    """
    n, h, w, d = feats.shape
    if labels.shape[0] != n or labels.shape[1] > h * patch_size or labels.shape[2] > w * patch_size:
        raise ValueError(f"labels {labels.shape} do not fit features {tuple(feats.shape)}")
    flat = feats.reshape(-1, d).float()
    probe = PatchLinearProbe(d, n_classes, flat.mean(0), flat.std(0))
    del flat
    g = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    n_iter = recipe.epochs * int(np.ceil(n / recipe.batch_images))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(n_iter, 1))
    size = (h * patch_size, w * patch_size)
    crop = (labels.shape[1], labels.shape[2])
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=g)
        for b in range(0, n, recipe.batch_images):
            idx = order[b : b + recipe.batch_images]
            target = torch.from_numpy(labels[idx.numpy()].astype(np.int64))
            logits = probe(feats[idx], size, crop)
            loss = F.cross_entropy(logits, target, ignore_index=ignore_index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return probe.eval()


@torch.no_grad()
def predict(
    probe: PatchLinearProbe,
    feats: torch.Tensor,
    patch_size: int,
    crop: tuple[int, int],
    batch_images: int = 4,
) -> np.ndarray:
    """``(N, H, W)`` uint8 arg-max class of each pixel."""
    n, h, w, _ = feats.shape
    size = (h * patch_size, w * patch_size)
    out = np.empty((n, *crop), dtype=np.uint8)
    for b in range(0, n, batch_images):
        out[b : b + batch_images] = probe(feats[b : b + batch_images], size, crop).argmax(1).numpy()
    return out


def iou_per_class(pred: np.ndarray, target: np.ndarray, n_classes: int) -> list[float]:
    """Intersection over union of each class over all pixels (NaN for a class absent in both).

    Examples:
        >>> iou_per_class(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
        [0.5, 0.5]
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
    out = []
    for c in range(n_classes):
        p, t = pred == c, target == c
        union = np.logical_or(p, t).sum()
        out.append(float(np.logical_and(p, t).sum() / union) if union else float("nan"))
    return out
