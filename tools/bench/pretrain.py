"""Benchmark the full DINOv2 pretraining step and its model FLOP utilization (MFU).

Measures, in one run on this machine:

- training throughput (images/s) of the complete step: data loading (real EMSSL_DATA images through
  the DataLoader), teacher forward, student forward on all crops (2 global + N local, iBOT
  masks), DINO + iBOT + KoLeo losses, backward, gradient clipping, AdamW, EMA update;
- FLOPs of one step, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, attention;
  the elementwise work is not counted, as usual for MFU);
- the machine's bf16 matmul rate (square matmuls, same thread count), measured before and after
  the timed steps, so MFU = achieved FLOP/s / measured matmul FLOP/s under the same load;
- a ``torch.profiler`` breakdown of the step: by phase (data, teacher, student forward, backward,
  optimizer, EMA) and by operator family (matmul, attention, norms, elementwise, ...).

Prints one JSON object. Usage::

    EMSSL_DATA=... .venv/bin/python tools/bench/pretrain.py [--config vitt8_cpu] [--steps 8]
        [--threads 2] [--set key=value ...] [--precision bf16|fp32] [--no-profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import torch


def matmul_rate(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Best observed FLOP/s of ``n x n`` matmuls over ~``seconds`` (after warm-up)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2 * n**3 / (time.perf_counter() - t))
    return best


_FAMILIES = (
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax")),
    ("matmul", ("addmm", "aten::mm", "bmm", "aten::linear", "matmul", "mkldnn", "onednn")),
    ("norm", ("layer_norm", "native_layer_norm", "aten::norm", "vector_norm", "normalize")),
    ("conv/patch-embed", ("convolution", "conv2d", "_convolution")),
    ("optimizer", ("adam", "_fused_adamw", "foreach", "clip")),
    ("copy/cast", ("aten::to", "_to_copy", "copy_", "contiguous", "clone", "cat", "index_select")),
    (
        "activation/elementwise",
        (
            "gelu",
            "aten::add",
            "aten::mul",
            "aten::sub",
            "aten::div",
            "where",
            "exp",
            "log",
            "aten::sum",
            "aten::mean",
            "pow",
        ),
    ),
)


def _family(name: str) -> str:
    low = name.lower()
    for fam, keys in _FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def profile_breakdown(prof: Any) -> dict[str, Any]:
    """Self-CPU time by phase (record_function ranges) and by operator family."""
    phases = ("data", "teacher", "student_forward", "backward", "optimizer", "ema")
    phase_t: dict[str, float] = defaultdict(float)
    fam_t: dict[str, float] = defaultdict(float)
    top: list[tuple[str, float]] = []
    for evt in prof.key_averages():
        if evt.key in phases:
            phase_t[evt.key] += evt.cpu_time_total / 1e6  # inclusive time of the range
            continue
        if evt.key.startswith("ProfilerStep"):
            continue
        fam_t[_family(evt.key)] += evt.self_cpu_time_total / 1e6
        top.append((evt.key, evt.self_cpu_time_total / 1e6))
    total_fam = sum(fam_t.values()) or 1.0
    total_phase = sum(phase_t.values()) or 1.0
    top.sort(key=lambda x: -x[1])
    return {
        "by_phase_pct": {k: round(100 * v / total_phase, 1) for k, v in phase_t.items()},
        "by_op_family_pct": {
            k: round(100 * v / total_fam, 1) for k, v in sorted(fam_t.items(), key=lambda x: -x[1])
        },
        "top_ops_self_s": [(k, round(v, 3)) for k, v in top[:12]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="vitt8_cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    p.add_argument("--no-profile", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from torch.utils.flop_counter import FlopCounterMode

    from emdino.ssl.config import load_config
    from emdino.ssl.data import build_dataset, build_loader
    from emdino.ssl.meta_arch import SSLMetaArch
    from emdino.ssl.optim import apply_schedules, build_optimizer, param_groups
    from emdino.ssl.schedules import build_schedules

    overrides = list(args.overrides)
    if args.precision:
        overrides.append(f"train.precision={args.precision}")
    n_total = args.warmup + args.steps + (0 if args.no_profile else 3) + 1
    overrides.append(f"optim.total_steps={max(n_total + 1, 10)}")
    overrides.append("optim.warmup_steps=1")
    cfg = load_config(args.config, overrides)
    torch.manual_seed(cfg.seed)
    meta = SSLMetaArch(cfg)
    groups = param_groups(
        meta.student.named_parameters(),
        cfg.model.depth,
        cfg.optim.layerwise_decay,
        cfg.optim.patch_embed_lr_mult,
    )
    opt = build_optimizer(groups, cfg.optim.betas)
    sched = build_schedules(cfg)
    dataset = build_dataset(cfg)
    loader = iter(build_loader(dataset, cfg))

    def step(i: int, batch: dict) -> None:
        v = sched.at(i)
        apply_schedules(opt, v["lr"], v["wd"], v["last_layer_lr"])
        opt.zero_grad(set_to_none=True)
        meta.forward_backward(batch, v["teacher_temp"])
        with torch.profiler.record_function("optimizer"):
            meta.clip_gradients(cfg.optim.clip_grad)
            opt.step()
        with torch.profiler.record_function("ema"):
            meta.update_teacher(v["momentum"])

    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    peak_before = matmul_rate(dtype)

    i = 0
    batch = next(loader)
    with FlopCounterMode(display=False) as fc:
        step(i, batch)
    flops = int(fc.get_total_flops())
    i += 1
    for _ in range(args.warmup):
        step(i, next(loader))
        i += 1

    times, data_times = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        step(i, batch)
        i += 1
        times.append(time.perf_counter() - t0)
        data_times.append(t1 - t0)
    peak_after = matmul_rate(dtype)
    peak = (peak_before + peak_after) / 2

    breakdown = None
    if not args.no_profile:
        from torch.profiler import ProfilerActivity, profile, record_function

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                with record_function("data"):
                    batch = next(loader)
                step(i, batch)
                i += 1
        breakdown = profile_breakdown(prof)

    bs = cfg.optim.batch_size
    step_s = statistics.median(times)
    achieved = flops / step_s
    out = {
        "benchmark": "pretrain_step",
        "command": "python tools/bench/pretrain.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "config": args.config,
        "model": {
            k: getattr(cfg.model, k) for k in ("patch_size", "embed_dim", "depth", "num_heads")
        },
        "crops": {
            "global": [cfg.crops.n_global, cfg.crops.global_size],
            "local": [cfg.crops.n_local, cfg.crops.local_size],
        },
        "batch_size": bs,
        "precision": cfg.train.precision,
        "threads": torch.get_num_threads(),
        "data_workers": cfg.data.workers,
        "steps_timed": args.steps,
        "step_s_median": round(step_s, 4),
        "step_s_all": [round(t, 3) for t in times],
        "data_wait_s_median": round(statistics.median(data_times), 4),
        "images_per_s": round(bs / step_s, 3),
        "flops_per_step": flops,
        "flops_per_image": flops // bs,
        "achieved_tflops": round(achieved / 1e12, 4),
        "matmul_peak_tflops": {
            "before": round(peak_before / 1e12, 4),
            "after": round(peak_after / 1e12, 4),
            "dtype": str(dtype),
        },
        "mfu": round(achieved / peak, 4),
        "load_average": os.getloadavg(),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "profile": breakdown,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
