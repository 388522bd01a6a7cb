"""iBOT masked-patch loss: the student predicts the teacher's targets at masked patches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IBOTPatchLoss(nn.Module):
    """Cross-entropy at masked patches, averaged per image, then over images.

    As ``dinov2/loss/ibot_patch_loss.py`` (``forward_masked``): each masked token is weighted by
    ``1 / (masked tokens of its image)``, and the sum is divided by the number of images in the
    batch, so unmasked images count as zero loss.

    Args:
        student_temp: student temperature.

    Examples:
        >>> loss = IBOTPatchLoss(1.0)
        >>> masks = torch.tensor([[True, False], [False, False]])
        >>> t = torch.tensor([[1.0, 0.0]])
        >>> round(loss(torch.zeros(1, 2), t, masks).item(), 4)  # log(2) / 2 images
        0.3466
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ValueError("student_temp must be > 0")
        self.student_temp = student_temp

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_probs: torch.Tensor,
        masks: torch.Tensor,
    ) -> torch.Tensor:
        """Args:
        student_logits: ``(M, K)`` student outputs at the masked tokens, in the row-major
            order of ``masks.nonzero()``.
        teacher_probs: ``(M, K)`` centred teacher targets at the same tokens.
        masks: ``(B, N)`` bool masks of the student's global views.
        """
        n_masked = int(masks.sum())
        if student_logits.shape[0] != n_masked or teacher_probs.shape != student_logits.shape:
            raise ValueError(
                f"{n_masked} masked tokens but logits {tuple(student_logits.shape)} and targets "
                f"{tuple(teacher_probs.shape)}"
            )
        if masks.shape[0] == 0:
            raise ValueError("masks must cover at least one image")
        per_token = torch.sum(
            teacher_probs * F.log_softmax(student_logits.float() / self.student_temp, dim=-1), -1
        )
        weights = (1.0 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]
        return -(per_token * weights.to(per_token.dtype)).sum() / masks.shape[0]
