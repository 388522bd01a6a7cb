"""``python -m emdino.eval``: probe a pretraining checkpoint, an exported backbone or a random init.

Examples::

    python -m emdino.eval --checkpoint /work/ckpt/emdino-bundled/run/last.pt --out probe.json
    python -m emdino.eval --export vit.safetensors --tasks lucchi_mito vnc_organelles
    python -m emdino.eval --random vitt8_cpu --seed 0        # same architecture, untrained

The probe protocol (identical for every backbone): features = concatenation of the final-norm
patch tokens of the last ``--n-last-blocks`` blocks (default 4, DINOv2's linear protocol), on
non-overlapping ``--tile`` px tiles at the data's native pixel size; see `emdino.eval.tasks`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from emdino.eval.features import vit_embedder
from emdino.eval.patch_probe import ProbeRecipe
from emdino.eval.tasks import TASKS, FeatureSpec, run_tasks
from emdino.precision import resolve_precision


def load_backbone(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The ViT to probe and a description of where it came from."""
    if args.checkpoint:
        from emdino.ssl.backbone import build_vit
        from emdino.ssl.checkpoint import backbone_state_dict, load_checkpoint
        from emdino.ssl.config import PretrainConfig

        state = load_checkpoint(args.checkpoint)
        cfg = PretrainConfig.model_validate(state["config"])
        vit = build_vit(cfg.model, cfg.crops.global_size, drop_path_rate=0.0)
        vit.load_state_dict(backbone_state_dict(state, args.network))
        desc = {"checkpoint": str(args.checkpoint), "step": state["step"], "network": args.network}
        return vit, {**desc, "mean": cfg.data.mean, "std": cfg.data.std}
    if args.export:
        from emdino.ssl.checkpoint import load_exported

        vit, meta = load_exported(args.export)
        norm = json.loads(meta["normalization"])
        return vit, {"export": str(args.export), "mean": norm["mean"], "std": norm["std"]}
    from emdino.ssl.backbone import build_vit
    from emdino.ssl.config import load_config

    cfg = load_config(args.random)
    torch.manual_seed(args.seed)
    vit = build_vit(cfg.model, cfg.crops.global_size, drop_path_rate=0.0)
    desc = {"random_init": args.random, "seed": args.seed}
    return vit, {**desc, "mean": cfg.data.mean, "std": cfg.data.std}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probes and print (and optionally save) a JSON report."""
    p = argparse.ArgumentParser(
        prog="python -m emdino.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="pretraining checkpoint (.pt)")
    src.add_argument("--export", help="exported backbone (.safetensors)")
    src.add_argument("--random", metavar="CONFIG", help="random init of a config's architecture")
    p.add_argument("--network", default="teacher", choices=["teacher", "student"])
    p.add_argument("--seed", type=int, default=0, help="init seed of --random")
    p.add_argument("--tasks", nargs="+", default=["lucchi_mito"], choices=list(TASKS))
    p.add_argument("--n-last-blocks", type=int, default=4)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--train-stride", type=int, default=4, help="use every k-th train slice")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--out", help="write the JSON report here too")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        vit, desc = load_backbone(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"emdino.eval: {err}", file=sys.stderr)
        return 2
    embed, patch = vit_embedder(vit, args.n_last_blocks)
    spec = FeatureSpec(
        patch_size=patch,
        tile=args.tile,
        mean=desc["mean"],
        std=desc["std"],
        precision=resolve_precision(args.precision, "cpu"),
    )
    t0 = time.perf_counter()
    results = run_tasks(embed, spec, tuple(args.tasks), args.train_stride, ProbeRecipe())
    report = {
        "backbone": desc,
        "protocol": {
            "n_last_blocks": args.n_last_blocks,
            "tile": args.tile,
            "train_stride": args.train_stride,
            "precision": spec.precision,
            "recipe": ProbeRecipe().__dict__,
        },
        "results": results,
        "wall_s": time.perf_counter() - t0,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
