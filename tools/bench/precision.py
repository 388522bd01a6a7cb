"""fp32 against bf16 autocast on this machine, and what ``precision="auto"`` picks.

Usage::

    python tools/bench/precision.py [--batch 2] [--size 256] [--reps 3]

Times, in fp32 (the baseline) and under bf16 autocast, one training step (forward, DiceCE,
backward) of the MONAI UNet of ``tools/bench/mito_baseline.py`` and of the ``mito_2d`` recipe's
OmniEM network (random ViT-T/8: the cost does not depend on the weights), and one inference
forward of the same OmniEM. Prints one JSON object: seconds per call per precision,
``bf16_speedup`` (fp32 time / bf16 time; above 1: bf16 is faster) and ``auto`` (what
`emdino.precision.resolve_precision` picks here) with ``auto_is_faster`` (whether that pick is the
faster of the two for every workload).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from emdino.precision import autocast, native_bf16, resolve_precision  # noqa: E402


def _networks(size: int) -> dict[str, torch.nn.Module]:
    sys.path.insert(0, str(Path(__file__).parent))
    from mito_baseline import baseline_unet  # the UNet of the mito-2d comparison

    from omniem.nets import build
    from omniem.train import load_config

    net = load_config("mito_2d", ["net.backbone=vit_tiny_patch8.random"]).net
    return {"unet": baseline_unet(), "omniem": build(net, img_size=size)}


def _seconds(fn, reps: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, args.size, args.size)
    y = (torch.rand(args.batch, 1, args.size, args.size) > 0.5).long()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    workloads = {}
    for name, net in _networks(args.size).items():

        def step(net=net, precision="fp32") -> None:  # noqa: ANN001
            net.zero_grad(set_to_none=True)
            with autocast(precision):
                out = net(x)
            loss_fn(out.float(), y).backward()

        workloads[f"{name}_train_step"] = step
        if name == "omniem":

            def infer(net=net, precision="fp32") -> None:  # noqa: ANN001
                with torch.inference_mode(), autocast(precision):
                    net.eval()(x)
                net.train()

            workloads["omniem_inference"] = infer
    auto = resolve_precision("auto", "cpu")
    result: dict = {
        "benchmark": "precision",
        "batch": args.batch,
        "size": args.size,
        "native_bf16": native_bf16("cpu"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "auto": auto,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "workloads": {},
    }
    faster = []
    for name, fn in workloads.items():
        fp32 = _seconds(lambda fn=fn: fn(precision="fp32"), args.reps)
        bf16 = _seconds(lambda fn=fn: fn(precision="bf16"), args.reps)
        result["workloads"][name] = {
            "fp32_s": round(fp32, 4),
            "bf16_s": round(bf16, 4),
            "bf16_speedup": round(fp32 / bf16, 3),
        }
        faster.append((auto == "bf16") == (bf16 < fp32))
        print(json.dumps({name: result["workloads"][name]}), flush=True)
    result["auto_is_faster"] = all(faster)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
