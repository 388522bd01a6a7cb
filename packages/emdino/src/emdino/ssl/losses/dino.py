"""DINO class-token loss: cross-entropy between teacher targets and student predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOLoss(nn.Module):
    """Mean cross-entropy ``-sum_k t_k log softmax(s / T_s)_k`` over all cross-view pairs.

    Student view ``i`` and teacher view ``j`` are paired for every ``i != j``; the first
    ``len(teacher_probs)`` student views are the same crops as the teacher views (the global
    crops), so a view is never compared with itself. This is DINOv2's global + local loss with its
    normalisation: the sum over pairs of the batch-mean cross-entropy, divided by the number of
    pairs.

    Args:
        student_temp: student temperature T_s.

    Examples:
        >>> loss = DINOLoss(0.1)
        >>> t = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
        >>> s = [torch.zeros(1, 2)] * 3
        >>> round(loss(s, t).item(), 4)  # every pair: -log(1/2)
        0.6931
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ValueError("student_temp must be > 0")
        self.student_temp = student_temp

    def forward(
        self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]
    ) -> torch.Tensor:
        """Args:
        student_logits: per view ``(B, K)`` student head outputs (global views first).
        teacher_probs: per global view ``(B, K)`` centred teacher distributions.
        """
        if not teacher_probs or not student_logits:
            raise ValueError("DINOLoss needs at least one student and one teacher view")
        total = student_logits[0].new_zeros((), dtype=torch.float32)
        n_pairs = 0
        for i, s in enumerate(student_logits):
            log_p = F.log_softmax(s.float() / self.student_temp, dim=-1)
            for j, t in enumerate(teacher_probs):
                if i == j:
                    continue
                total = total - torch.sum(t * log_p, dim=-1).mean()
                n_pairs += 1
        if n_pairs == 0:
            raise ValueError("no cross-view pair: need 2 teacher views or a local view")
        return total / n_pairs
