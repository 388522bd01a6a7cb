"""Teacher centering: Sinkhorn-Knopp (DINOv2/SwAV) or an EMA mean center (DINO v1).

Both turn teacher prototype scores into target distributions that do not collapse onto one
prototype. Batch statistics are all-reduced, so a multi-process run centres exactly like one
process holding the whole global batch.
"""

from __future__ import annotations

import torch
from torch import nn

from emdino.ssl import distributed


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
) -> torch.Tensor:
    """Sinkhorn-Knopp targets (``dinov2/loss/dino_clstoken_loss.py``), over all ranks.

    ``Q = exp(logits / T)`` is alternately rescaled so that every prototype gets the same total
    mass (``B / K`` per prototype) and every sample a distribution (rows sum to 1); the last step
    normalises samples, so rows sum to 1 exactly and prototype sums approach ``B / K``.

    Args:
        teacher_logits: ``(B, K)`` teacher scores of this rank (any float dtype).
        teacher_temp: temperature T > 0.
        n_iterations: number of (prototype, sample) normalisation rounds.

    Returns:
        ``(B, K)`` float32 targets.

    Raises:
        ValueError: bad shape, temperature or iteration count.

    Examples:
        >>> q = sinkhorn_knopp(torch.randn(6, 4), 0.1, n_iterations=50)
        >>> torch.allclose(q.sum(1), torch.ones(6)), torch.allclose(q.sum(0), torch.full((4,), 1.5))
        (True, True)
    """
    if teacher_logits.ndim != 2:
        raise ValueError(f"teacher_logits must be (B, K), got {tuple(teacher_logits.shape)}")
    if teacher_temp <= 0 or n_iterations < 1:
        raise ValueError("teacher_temp must be > 0 and n_iterations >= 1")
    # The same iterations as DINOv2, in the log domain: exp(logits / T) underflows to 0 (and the
    # normalisations to 0/0) for sharp temperatures; log-sum-exp does not.
    log_q = teacher_logits.float().t() / teacher_temp  # (K, B)
    k = log_q.shape[0]
    n_samples = distributed.all_reduce_(torch.tensor([float(log_q.shape[1])]))
    log_q = log_q - _logsumexp(log_q.reshape(1, -1))
    for _ in range(n_iterations):
        log_q = log_q - _logsumexp(log_q) - torch.log(torch.tensor(float(k)))
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - torch.log(n_samples)
    return torch.exp(log_q + torch.log(n_samples)).t()


def _logsumexp(x: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp of ``(R, N)`` over the columns of all ranks -> ``(R, 1)``."""
    if x.shape[1]:
        top = x.max(dim=1, keepdim=True).values
    else:
        top = torch.full((x.shape[0], 1), -torch.inf, dtype=x.dtype, device=x.device)
    top = distributed.all_reduce_(top.clone(), "max")
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = distributed.all_reduce_(torch.exp(x - top).sum(dim=1, keepdim=True))
    return top + torch.log(total)


class MeanCenter(nn.Module):
    """EMA center of the teacher scores (DINO v1 / DINOv2 ``centering``).

    ``softmax`` uses the current center; ``update`` then folds in this batch's mean (over all
    ranks): ``c <- m c + (1 - m) mean(batch)``. The center is a buffer, so it is checkpointed.

    Args:
        dim: number of prototypes.
        momentum: EMA momentum ``m`` in [0, 1).

    Examples:
        >>> c = MeanCenter(3, momentum=0.5)
        >>> c.update(torch.tensor([[2.0, 0.0, 4.0]]))
        >>> c.center.tolist()
        [[1.0, 0.0, 2.0]]
    """

    center: torch.Tensor

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if dim < 1 or not 0 <= momentum < 1:
            raise ValueError("MeanCenter needs dim >= 1 and 0 <= momentum < 1")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def softmax(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``softmax((logits - center) / T)`` in float32."""
        return torch.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """Fold the mean of ``(N, K)`` scores (over all ranks) into the center."""
        total = distributed.all_reduce_(teacher_logits.float().sum(dim=0, keepdim=True))
        count = distributed.all_reduce_(torch.tensor([float(teacher_logits.shape[0])]))
        if count.item() == 0:
            return
        self.center.mul_(self.momentum).add_(total / count, alpha=1 - self.momentum)
