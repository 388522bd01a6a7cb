"""Early warning of DINO/iBOT collapse from the entropy of the teacher's targets.

Both losses are cross-entropies against centred, sharpened teacher distributions. A healthy run
keeps those targets between the two ways DINO fails:

- uniform collapse: every target is (nearly) uniform, the loss sits at ``log K`` and gives the
  backbone no signal. On the small-batch CPU runs of this project the student learned to put its
  L2-normalised bottleneck nearly orthogonal to every prototype (RMS cosine 0.016, against 0.06
  for a random direction in 256-D), so all scores were equal and centering could not help;
- one-prototype collapse: every target is (nearly) one-hot on the same prototype.

The training loop logs the mean normalised entropy ``H(targets) / log K`` of both heads every
step (``dino_target_entropy``, ``ibot_target_entropy``; 1 = uniform) and `check_collapse` turns a
window of them into a warning once the warm-up is over.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

#: Normalised target entropy at or above which the targets count as uniform.
UNIFORM_ABOVE = 0.99
#: Normalised target entropy at or below which the targets count as one-hot.
ONE_HOT_BELOW = 0.01


class CollapseWarning(RuntimeWarning):
    """The teacher's targets have collapsed (uniform or one-hot): the loss no longer trains."""


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean row entropy of ``(N, K)`` distributions divided by ``log K`` (0 one-hot, 1 uniform).

    Examples:
        >>> round(float(normalized_entropy(torch.full((3, 8), 1 / 8))), 6)
        1.0
        >>> float(normalized_entropy(torch.eye(4)))
        0.0
    """
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (N, K) with K >= 2, got {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        return torch.tensor(float("nan"))
    p = probs.float()
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=1)
    return ent.mean() / math.log(probs.shape[1])


def check_collapse(name: str, entropy: float | None, step: int, after_step: int) -> str | None:
    """A warning message if ``entropy`` (a window mean) shows a collapse, else None.

    Args:
        name: the loss (``dino`` or ``ibot``), for the message.
        entropy: mean normalised target entropy over the last logging window (None: no
            targets in the window).
        step: the current step.
        after_step: no verdict before this step (warm-up, frozen last layer).

    Examples:
        >>> check_collapse("dino", 0.999, step=400, after_step=100)[:40]
        'dino targets are uniform (normalised ent'
        >>> check_collapse("dino", 0.999, step=50, after_step=100) is None
        True
        >>> check_collapse("ibot", 0.6, step=400, after_step=100) is None
        True
    """
    if entropy is None or step < after_step or not math.isfinite(entropy):
        return None
    if entropy >= UNIFORM_ABOVE:
        return (
            f"{name} targets are uniform (normalised entropy {entropy:.4f} at step {step}): "
            f"the {name} head has collapsed and its loss no longer trains the backbone "
            "(seen here with LayerScale's 1e-5 start, which gives every image the same class "
            "token, and with batches of 16 on CPU; see docs/emdino/pretraining.md, 'Collapse')"
        )
    if entropy <= ONE_HOT_BELOW:
        return (
            f"{name} targets are one-hot (normalised entropy {entropy:.4f} at step {step}): "
            f"every image maps to the same prototype (check centering and teacher temperature)"
        )
    return None


def warn_collapse(message: str) -> None:
    """Emit a `CollapseWarning` (shown once per message by Python's default filter)."""
    warnings.warn(message, CollapseWarning, stacklevel=2)


@torch.no_grad()
def head_statistics(net: torch.nn.Module, global_crops: torch.Tensor) -> dict[str, float]:
    """Where a DINO head's scores lose their spread, for one batch of global crops.

    Args:
        net: a `emdino.ssl.meta_arch.StudentNet` (student or teacher).
        global_crops: ``(N, 1, S, S)`` normalised crops, N >= 2.

    Returns:
        ``cls_cosine`` (mean pairwise cosine of the backbone class tokens), ``bottleneck_cosine``
        (the same for the head's L2-normalised bottleneck), ``prototype_cosine`` (mean pairwise
        cosine of the prototypes), ``score_rms`` (RMS cosine between bottleneck and prototypes;
        ``1 / sqrt(bottleneck_dim)`` for unrelated directions, near 0 when the bottleneck has
        moved away from every prototype) and ``score_std_over_prototypes``.
    """
    if global_crops.shape[0] < 2:
        raise ValueError("head_statistics needs at least 2 crops")

    def mean_offdiag(v: torch.Tensor) -> float:
        v = F.normalize(v.float(), dim=-1)
        c = v @ v.T
        n = c.shape[0]
        return float((c.sum() - c.diagonal().sum()) / (n * (n - 1)))

    head = net.dino_head
    cls = net.backbone(global_crops)["cls"].float()
    z = F.normalize(head.mlp(cls), dim=-1)
    protos = F.normalize(head.last_layer.weight.float(), dim=-1)
    scores = z @ protos.T
    return {
        "cls_cosine": mean_offdiag(cls),
        "bottleneck_cosine": mean_offdiag(z),
        "prototype_cosine": mean_offdiag(protos),
        "score_rms": float(scores.pow(2).mean().sqrt()),
        "random_direction_rms": float(z.shape[1] ** -0.5),
        "score_std_over_prototypes": float(head(cls).float().std(dim=1).mean()),
    }
