"""Why is a pretraining run's DINO loss stuck at log K? Head statistics of a checkpoint.

Usage::

    EMSSL_DATA=... python tools/dev/dino_head_stats.py RUN/last.pt [--images 16] [--seed 0]

Draws ``--images`` samples of the run's own data pipeline, runs the teacher and the student on
their global crops, and prints JSON: `emdino.ssl.monitor.head_statistics` of both networks and the
normalised entropy of the teacher's DINO targets (1 = uniform) under the run's centering.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from emdino.ssl.checkpoint import load_checkpoint
from emdino.ssl.config import PretrainConfig
from emdino.ssl.data import build_dataset, collate
from emdino.ssl.meta_arch import SSLMetaArch
from emdino.ssl.monitor import head_statistics, normalized_entropy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    state = load_checkpoint(args.checkpoint)
    cfg = PretrainConfig.model_validate(state["config"])
    meta = SSLMetaArch(cfg)
    meta.student.load_state_dict(state["student"])
    meta.teacher.load_state_dict(state["teacher"])
    meta.cls_center.center.copy_(state["centers"]["cls"])
    meta.eval()
    dataset = build_dataset(cfg)
    picks = np.random.default_rng(args.seed).choice(len(dataset), args.images, replace=False)
    batch = collate([dataset[(int(i), args.seed, k)] for k, i in enumerate(picks)])
    crops = batch["global_crops"]
    with torch.no_grad():
        logits = meta.teacher.dino_head(meta.teacher.backbone(crops)["cls"])
        temp = cfg.teacher.temp
        targets = meta._center(logits, temp, meta.cls_center)
        report = {
            "checkpoint": args.checkpoint,
            "step": state["step"],
            "centering": cfg.loss.centering,
            "teacher_temp": temp,
            "global_crops": int(crops.shape[0]),
            "dino_target_entropy": float(normalized_entropy(targets)),
            "teacher": head_statistics(meta.teacher, crops),
            "student": head_statistics(meta.student, crops),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
