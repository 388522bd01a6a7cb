"""Label efficiency of mito-2d-style training: 2, 8 and all training slices, EM-DINO vs random
backbone initialization, the same wall-clock budget for every run.

Usage::

    python tools/bench/label_efficiency.py --budget-min 7 [--val-step 3] [--out DIR]

Every run is the ``mito_2d`` recipe (``omniem train``) with ``data.train_slices`` set to

- 2 slices: ``33:132:66`` (slices 33 and 99 of ``lucchi_pp/train``),
- 8 slices: ``8:132:16`` (8, 24, ..., 120),
- all 132 slices,

and ``net.backbone`` either the bundled EM-DINO ViT-T/8 (``default``) or the same architecture
randomly initialized (``vit_tiny_patch8.random``); nothing else changes. No validation during
training. Scored like ``tools/bench/mito_baseline.py`` (foreground IoU pooled over the slices,
256 px tiles, overlap 0.25, precision ``auto``) on every ``--val-step``-th of the 33 held-out
slices 132-164 (``lucchi_pp/val``). Runs go one after the other, each alone on the machine.

Prints one JSON object (also written to OUT/label_efficiency.json) and writes the table as
markdown to OUT/label_efficiency.md (``--from-json FILE`` renders that table again, no runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SLICES = {"2": "33:132:66", "8": "8:132:16", "all": "all"}
INITS = {"emdino": "default", "random": "vit_tiny_patch8.random"}


def markdown(result: dict) -> str:
    """The IoU table: rows = training slices, columns = initialization."""
    runs = {(r["train_slices"], r["init"]): r for r in result["runs"]}
    lines = [
        f"Budget {result['budget_s'] / 60:g} min per run; IoU on {result['val']}.",
        "",
        "| training slices | EM-DINO init: IoU (steps) | random init: IoU (steps) |",
        "|---|---|---|",
    ]
    for n in SLICES:
        cells = []
        for init in INITS:
            r = runs.get((n, init))
            cells.append(f"{r['iou']:.3f} ({r['steps']})" if r else "-")
        count = next((r["n_slices"] for (k, _), r in runs.items() if k == n), n)
        lines.append(f"| {count} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget-min", type=float, default=7.0)
    ap.add_argument("--val-step", type=int, default=3, help="score every n-th val slice")
    ap.add_argument("--out", default="bench-out/label_efficiency")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-json", help="only render the markdown table of an earlier result")
    args = ap.parse_args()
    if args.from_json:
        print(markdown(json.loads(Path(args.from_json).read_text())), end="")
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from mito_baseline import score  # the same scoring as the UNet comparison

    import em5m.datasets
    from omniem.registry import load
    from omniem.train import load_config, train
    from omniem.train.config import parse_slices

    torch.set_num_threads(os.cpu_count() or 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    val = em5m.datasets.load("lucchi_pp", split="val")
    images = np.asarray(val.image)[:: args.val_step]
    labels = np.asarray(val.labels["mitochondria"])[:: args.val_step]
    result: dict = {
        "benchmark": "label_efficiency",
        "budget_s": args.budget_min * 60,
        "val": f"lucchi_pp/val every {args.val_step} ({len(images)} of 33 slices)",
        "runs": [],
    }
    for n, slices in SLICES.items():
        for init, backbone in INITS.items():
            run = out / f"{n}-{init}"
            cfg = load_config(
                "mito_2d",
                [
                    f"train.time_budget_s={args.budget_min * 60}",
                    "train.val_every=1000000",
                    "data.val_split=null",
                    f"data.train_slices={slices}",
                    f"net.backbone={backbone}",
                    f"seed={args.seed}",
                ],
            )
            t0 = time.perf_counter()
            path = train(cfg, run, resume=(run / "last.pt").exists())
            train_s = time.perf_counter() - t0
            net = load(path)
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            losses = [r["loss"] for r in rows if "loss" in r]
            rec = {
                "train_slices": n,
                "slice_selection": slices,
                "n_slices": len(parse_slices(slices, 132)),
                "init": init,
                "backbone": backbone,
                "steps": max(r["step"] for r in rows),
                "train_s": round(train_s, 1),
                "loss_first": losses[0],
                "loss_last": losses[-1],
                **score(lambda b, net=net: net(b), images, labels),
            }
            result["runs"].append(rec)
            print(json.dumps(rec), flush=True)
    (out / "label_efficiency.json").write_text(json.dumps(result, indent=2))
    (out / "label_efficiency.md").write_text(markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
