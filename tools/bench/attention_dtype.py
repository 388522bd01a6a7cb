"""Does attention gain from bf16 on this CPU? ViT attention at the engine's tile shape.

Usage::

    python tools/bench/attention_dtype.py [--batch 8] [--heads 3] [--tokens 1024] [--head-dim 64]

Times ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's fused CPU kernel, what timm
calls) and the explicit ``softmax(q k^T / sqrt(d)) v`` matmul path, each in fp32 (the baseline)
and bf16, on the default shape of mito-2d's ViT-T/8 over a batch of 8 tiles of 256 px. Prints
one JSON object: seconds per call, GFLOP/s (4 N^2 d per head) and ``bf16_speedup`` per path.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F


def _explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v


def _time(fn, q, k, v, reps: int) -> float:  # noqa: ANN001
    with torch.inference_mode():
        fn(q, k, v)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(q, k, v)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    shape = (a.batch, a.heads, a.tokens, a.head_dim)
    flops = 4 * a.batch * a.heads * a.tokens**2 * a.head_dim
    g = torch.Generator().manual_seed(0)
    qkv32 = [torch.randn(shape, generator=g) for _ in range(3)]
    result: dict = {"benchmark": "attention_dtype", "shape": list(shape), "threads": os.cpu_count()}
    for name, fn in (("sdpa", F.scaled_dot_product_attention), ("explicit", _explicit)):
        row = {}
        for dtype in ("fp32", "bf16"):
            qkv = qkv32 if dtype == "fp32" else [t.bfloat16() for t in qkv32]
            s = _time(fn, *qkv, a.reps)
            row[dtype] = {"s": s, "gflops": flops / s / 1e9}
        row["bf16_speedup"] = row["fp32"]["s"] / row["bf16"]["s"]
        result[name] = row
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
