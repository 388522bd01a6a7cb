"""Compute precision: bf16 autocast where the hardware computes bf16, fp32 elsewhere.

bf16 autocast is the faster precision on CPUs with AVX512-BF16 or AMX and on GPUs with bf16
units. On other CPUs (AVX2 only: most laptops and many servers)
PyTorch emulates bf16 and is far slower than fp32: a MONAI UNet training step took 11.3 s in bf16
against 0.43 s in fp32 on a 2-core AVX2 machine (``tools/bench/precision.py``). So the default is
``"auto"``, which resolves to whichever of the two the device runs natively; ``"bf16"`` and
``"fp32"`` are always honoured as given.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

#: Precision names accepted by `resolve_precision`.
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")

Precision = Literal["auto", "bf16", "fp32"]


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bf16 in hardware (CUDA with bf16 support; a CPU with
    AVX512-BF16 or AMX).

    Examples:
        >>> isinstance(native_bf16("cpu"), bool)
        True
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``"bf16"`` or ``"fp32"``: ``precision`` itself, or for ``"auto"`` what ``device`` runs
    natively (see `native_bf16`).

    Raises:
        ValueError: ``precision`` is not one of `PRECISIONS`.

    Examples:
        >>> resolve_precision("fp32"), resolve_precision("bf16")
        ('fp32', 'bf16')
        >>> resolve_precision("auto") == ("bf16" if native_bf16("cpu") else "fp32")
        True
        >>> resolve_precision("fp16")
        Traceback (most recent call last):
        ...
        ValueError: precision must be one of auto, bf16, fp32, got 'fp16'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(
    precision: str, device: torch.device | str = "cpu"
) -> contextlib.AbstractContextManager[object]:
    """The autocast context of ``precision`` on ``device`` (bf16 autocast, or nothing for fp32).

    Examples:
        >>> with autocast("bf16"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
        >>> with autocast("fp32"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.float32
    """
    dev = torch.device(device)
    if resolve_precision(precision, dev) == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
