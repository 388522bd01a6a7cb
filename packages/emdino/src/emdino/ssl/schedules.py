"""Per-step schedules: learning rate, weight decay, teacher momentum and temperature.

`CosineScheduler` is DINOv2's (``dinov2/utils/utils.py``): optional frozen steps at 0, a linear
warm-up from ``start_warmup_value`` to ``base_value``, then a half cosine to ``final_value``;
past ``total_iters`` it stays at ``final_value``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emdino.ssl.config import PretrainConfig


class CosineScheduler:
    """Warm-up + cosine schedule indexed by step.

    Args:
        base_value: value after warm-up (start of the cosine).
        final_value: value at ``total_iters`` and after.
        total_iters: length of the schedule.
        warmup_iters: linear warm-up steps.
        start_warmup_value: value at step 0 of the warm-up.
        freeze_iters: leading steps at 0 (before the warm-up).

    Examples:
        >>> s = CosineScheduler(1.0, 0.0, total_iters=4, warmup_iters=2)
        >>> [round(s[i], 3) for i in range(5)]
        [0.0, 1.0, 1.0, 0.5, 0.0]
    """

    def __init__(
        self,
        base_value: float,
        final_value: float,
        total_iters: int,
        warmup_iters: int = 0,
        start_warmup_value: float = 0.0,
        freeze_iters: int = 0,
    ) -> None:
        if total_iters < 0 or warmup_iters < 0 or freeze_iters < 0:
            raise ValueError("schedule lengths must be >= 0")
        if warmup_iters + freeze_iters > total_iters:
            raise ValueError("warm-up + freeze steps exceed the schedule length")
        self.final_value = final_value
        self.total_iters = total_iters
        freeze = np.zeros(freeze_iters)
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
        iters = np.arange(total_iters - warmup_iters - freeze_iters)
        n = max(len(iters), 1)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / n))
        self.schedule = np.concatenate((freeze, warmup, cosine))

    def __getitem__(self, it: int) -> float:
        if it >= self.total_iters:
            return float(self.final_value)
        return float(self.schedule[it])


@dataclass
class Schedules:
    """All per-step values of a run."""

    lr: CosineScheduler
    last_layer_lr: CosineScheduler
    wd: CosineScheduler
    momentum: CosineScheduler
    teacher_temp: CosineScheduler

    def at(self, step: int) -> dict[str, float]:
        """Every scheduled value at ``step``."""
        return {
            "lr": self.lr[step],
            "last_layer_lr": self.last_layer_lr[step],
            "wd": self.wd[step],
            "momentum": self.momentum[step],
            "teacher_temp": self.teacher_temp[step],
        }


def build_schedules(cfg: PretrainConfig) -> Schedules:
    """DINOv2's schedules (``dinov2/train/train.py: build_schedulers``), counted in steps."""
    o, t = cfg.optim, cfg.teacher
    total = o.total_steps
    lr = dict(
        base_value=o.lr,
        final_value=o.min_lr,
        total_iters=total,
        warmup_iters=o.warmup_steps,
        start_warmup_value=0.0,
    )
    last_layer = CosineScheduler(**lr)
    # Prototypes stay fixed for the first steps (DINOv2 freeze_last_layer_epochs).
    last_layer.schedule[: min(o.freeze_last_layer_steps, total)] = 0.0
    warm_t = min(t.warmup_temp_steps, total)
    return Schedules(
        lr=CosineScheduler(**lr),
        last_layer_lr=last_layer,
        wd=CosineScheduler(o.weight_decay, o.weight_decay_end, total),
        momentum=CosineScheduler(t.momentum, t.final_momentum, total),
        teacher_temp=CosineScheduler(
            t.temp, t.temp, warm_t, warmup_iters=warm_t, start_warmup_value=t.warmup_temp
        ),
    )
