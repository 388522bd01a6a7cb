"""Score membrane-2d / organelle-2d style models on their held-out slices.

Usage::

    python tools/bench/segmentation_val.py membrane --model membrane-2d [--out result.json]
    python tools/bench/segmentation_val.py organelle --model organelle-2d [--out result.json]

- ``membrane``: ISBI 2012, the 5 held-out labelled slices (em5m ``isbi2012/val``, slices 25-29).
  Pixel scores of the membrane class (foreground F1 = Dice, IoU, precision, recall, pooled over
  the slices), and the ISBI 2012 challenge's V_Rand (foreground-restricted Rand F-score,
  ``1 - omniem.metrics.adapted_rand_error``) and VOI of the cells: predicted cells are
  `omniem.instances.neurons_from_boundaries` of the membrane probability (default settings,
  not tuned), true cells the connected components of the non-membrane pixels.
- ``organelle``: Drosophila VNC ssTEM, the 4 held-out sections (``drosophila_vnc/val``,
  sections 16-19): per-class IoU and Dice and their means, pooled over the sections.

Inference: `omniem.infer.predict_image` (256 px tiles, overlap 0.25, precision ``auto``). Prints
one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _probabilities(net, images: np.ndarray) -> list[np.ndarray]:  # noqa: ANN001
    from omniem.infer import predict_image

    return [predict_image(net, img, dtype="auto").numpy() for img in images]


def membrane(net) -> dict:  # noqa: ANN001
    from skimage.measure import label

    import em5m.datasets
    from omniem import metrics
    from omniem.instances import neurons_from_boundaries

    ds = em5m.datasets.load("isbi2012", split="val")
    assert ds.labels is not None
    images, truth = np.asarray(ds.image), np.asarray(ds.labels["membrane"])
    probs = _probabilities(net, images)
    counts = metrics.SegmentationCounts(2)
    vrand, voi_split, voi_merge = [], [], []
    for p, t in zip(probs, truth, strict=True):
        counts.update(p.argmax(0), t.astype(np.int64))
        cells = neurons_from_boundaries(p[1])
        true_cells = label(~t, connectivity=1)  # 0 on membranes: ignored by the Rand score
        vrand.append(1.0 - metrics.adapted_rand_error(cells, true_cells))
        s, m = metrics.voi(cells, true_cells)
        voi_split.append(s)
        voi_merge.append(m)
    return {
        "data": "isbi2012/val (slices 25-29 of the 30 labelled)",
        "membrane_f1": counts.dice()[1],
        "membrane_iou": counts.iou()[1],
        "membrane_precision": counts.precision()[1],
        "membrane_recall": counts.recall()[1],
        "v_rand": float(np.mean(vrand)),
        "v_rand_per_slice": [round(v, 4) for v in vrand],
        "voi_split": float(np.mean(voi_split)),
        "voi_merge": float(np.mean(voi_merge)),
        "cells_from": "omniem.instances.neurons_from_boundaries (defaults) of P(membrane)",
    }


def organelle(net) -> dict:  # noqa: ANN001
    import em5m.datasets
    from omniem import metrics

    ds = em5m.datasets.load("drosophila_vnc", split="val")
    assert ds.labels is not None and ds.class_names
    names = list(ds.class_names)
    counts = metrics.SegmentationCounts(len(names))
    for p, t in zip(_probabilities(net, np.asarray(ds.image)), ds.labels["classes"], strict=True):
        counts.update(p.argmax(0), np.asarray(t, dtype=np.int64))
    iou, dice = counts.iou(), counts.dice()
    return {
        "data": "drosophila_vnc/val (sections 16-19)",
        "iou": dict(zip(names, iou, strict=True)),
        "dice": dict(zip(names, dice, strict=True)),
        "miou": float(np.mean(iou)),
        "mdice": float(np.mean(dice)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=["membrane", "organelle"])
    ap.add_argument("--model", required=True, help="registry name or model file")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from omniem import registry

    t0 = time.perf_counter()
    net = registry.load(args.model)
    from emdino.precision import resolve_precision

    res = {
        "benchmark": f"segmentation_val/{args.task}",
        "model": args.model,
        "precision": resolve_precision("auto", "cpu"),
    }
    res.update(membrane(net) if args.task == "membrane" else organelle(net))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
