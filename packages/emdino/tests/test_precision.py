"""`emdino.precision`: "auto" picks bf16 only where the hardware computes it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from emdino.precision import PRECISIONS, autocast, native_bf16, resolve_precision


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_native_bf16_matches_the_cpu_flags():
    flags = _cpu_flags()
    assert native_bf16("cpu") == bool({"avx512_bf16", "amx_tile", "amx_bf16"} & flags)


def test_auto_resolves_to_the_native_precision_and_names_are_honoured():
    want = "bf16" if native_bf16("cpu") else "fp32"
    assert resolve_precision("auto", "cpu") == want
    assert resolve_precision("auto", torch.device("cpu")) == want
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert PRECISIONS == ("auto", "bf16", "fp32")
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32, got 'half'"):
        resolve_precision("half")


def test_autocast_computes_in_the_resolved_precision():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast("auto", "cpu"):
        y = a @ b
    assert y.dtype == (torch.bfloat16 if native_bf16("cpu") else torch.float32)
    with autocast("bf16", "cpu"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (a @ b).dtype == torch.float32
