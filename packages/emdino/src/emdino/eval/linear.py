"""Linear (multinomial logistic regression) probe on frozen image-level features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearClassifier(nn.Module):
    """Standardise with the training statistics, then a linear layer."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float().clamp(min=1e-6))
        self.linear = nn.Linear(mean.numel(), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x.float() - self.mean) / self.std)


def fit_linear(
    feats: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> LinearClassifier:
    """Full-batch L-BFGS logistic regression with L2 penalty ``weight_decay * ||W||^2 / 2``.

    Examples:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> clf = fit_linear(x, torch.tensor([0, 0, 1, 1]), 2)
        >>> linear_accuracy(clf, x, torch.tensor([0, 0, 1, 1]))
        1.0
    """
    if feats.ndim != 2 or labels.shape != (feats.shape[0],):
        raise ValueError("feats must be (N, D) with one label each")
    if n_classes < 2:
        raise ValueError("n_classes must be >= 2")
    feats = feats.float()
    clf = LinearClassifier(feats.mean(0), feats.std(0), n_classes)
    opt = torch.optim.LBFGS(
        clf.linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(clf(feats), labels)
        loss = loss + 0.5 * weight_decay * clf.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return clf.eval()


@torch.no_grad()
def linear_accuracy(clf: LinearClassifier, feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of correctly classified samples."""
    return float((clf(feats).argmax(1) == labels).float().mean())
