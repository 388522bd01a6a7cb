"""KoLeo regulariser: spread the class tokens of a batch uniformly (Sablayrolles et al. 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """``-mean_i log(min_{j != i} ||x_i - x_j||)`` over L2-normalised vectors.

    As ``dinov2/loss/koleo_loss.py``: nearest neighbours are found by inner product, the distance
    is Euclidean, computed in float32. With ``distributed=True`` the batch is gathered from all
    ranks (with gradients) so the loss equals the single-process loss on the global batch.

    Args:
        eps: added inside the log (and the normalisation) for stability.
        distributed: gather the batch over all ranks first.

    Examples:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> round(KoLeoLoss()(x).item(), 4)  # each nearest neighbour at sqrt(2)
        -0.3466
    """

    def __init__(self, eps: float = 1e-8, distributed: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.distributed = distributed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2:
            raise ValueError(f"KoLeoLoss expects (B, D), got {tuple(x.shape)}")
        x = x.float()
        if self.distributed:
            x = _gather_with_grad(x)
        if x.shape[0] < 2:
            raise ValueError("KoLeoLoss needs at least 2 vectors")
        x = F.normalize(x, p=2, dim=-1, eps=self.eps)
        with torch.no_grad():
            dots = x @ x.t()
            dots.fill_diagonal_(-2.0)  # below any cosine, so a vector is not its own neighbour
            nn_idx = dots.argmax(dim=1)
        dist = torch.linalg.vector_norm(x - x[nn_idx], dim=-1)
        return -torch.log(dist + self.eps).mean()


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)
