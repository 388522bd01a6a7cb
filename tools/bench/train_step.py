"""Seconds per training step of OmniEM layouts against the plain MONAI UNet, same run.

Usage::

    python tools/bench/train_step.py [--backbone vit_tiny_patch8.random] [--steps 4]
        [--layout vit] [--layout hybrid] ...

One step = forward in the precision ``auto`` picks here (bf16 autocast where the CPU computes
bf16, else fp32; recorded as ``precision``), DiceCE, backward and AdamW on a batch of 8 crops of
256 x 256 (random values: the cost does not depend on them), after one warm-up step. The
baseline is the UNet of ``tools/bench/mito_baseline.py`` (channels 32-512, 2 residual units).
Layouts (``--layout``, repeatable; default: all):

- ``vit``: OmniEM's ViT layout (tokens at full resolution, ``feature_size`` 32, full
  fine-tuning);
- ``hybrid``: the ``mito_2d`` recipe's network (``conv_encoder``, ``stem_stride: 2``,
  ``backbone_bin: 4``, ``feature_size: 32``, backbone frozen);
- ``hybrid_full_backbone``: the same with the backbone fine-tuned too;
- ``hybrid_bin2``: the same with the ViT on the image binned 2x;
- ``hybrid_bottleneck``: the same with ``bottleneck_units: 2`` (the UNet's bottom layer);
- ``hybrid_full_res_stem``: the earlier recipe (git 263c079): full-resolution stem,
  ``backbone_bin: 2``, ``feature_size: 16``, full fine-tuning.

Prints one JSON object: seconds per step and ``ratio_vs_unet`` (OmniEM / UNet; lower is better).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from emdino.precision import autocast, resolve_precision  # noqa: E402

#: The precision of the timed steps: what "auto" picks on this machine.
PRECISION = resolve_precision("auto", "cpu")

#: Changes to the ``mito_2d`` recipe's network (the hybrid layout) per measured layout.
LAYOUTS = {
    "vit": {
        "conv_encoder": False,
        "stem_stride": 1,
        "backbone_bin": 1,
        "feature_size": 32,
        "backbone_mode": "full",
    },
    "hybrid": {},
    "hybrid_full_backbone": {"backbone_mode": "full"},
    "hybrid_bin2": {"backbone_bin": 2},
    "hybrid_bottleneck": {"bottleneck_units": 2},
    "hybrid_full_res_stem": {
        "stem_stride": 1,
        "backbone_bin": 2,
        "feature_size": 16,
        "backbone_mode": "full",
    },
}


def seconds_per_step(net: torch.nn.Module, steps: int, *, unit_range: bool) -> float:
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    x = torch.rand(8, 1, 256, 256)
    y = (torch.rand(8, 1, 256, 256) > 0.5).long()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with autocast(PRECISION):
            out = net(x if unit_range else x * 2 - 1)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return sum(times[1:]) / steps


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backbone", default="vit_tiny_patch8.random")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--layout", action="append", choices=sorted(LAYOUTS))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    from mito_baseline import baseline_unet  # tools/bench/, this script's folder

    from omniem.nets import NetConfig, build
    from omniem.train.config import load_config

    unet = baseline_unet()
    base = seconds_per_step(unet, args.steps, unit_range=False)
    result: dict = {
        "benchmark": "train_step",
        "batch": "8 x 256 x 256, DiceCE, AdamW",
        "precision": PRECISION,
        "cpus": os.cpu_count(),
        "unet_s_per_step": round(base, 3),
        "layouts": {},
    }
    for name in args.layout or list(LAYOUTS):
        recipe = load_config("mito_2d").net.model_dump()
        cfg = NetConfig(**{**recipe, "backbone": args.backbone, **LAYOUTS[name]})
        s = seconds_per_step(build(cfg, img_size=256), args.steps, unit_range=True)
        result["layouts"][name] = {"s_per_step": round(s, 3), "ratio_vs_unet": round(s / base, 2)}
        print(json.dumps({name: result["layouts"][name]}), flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
