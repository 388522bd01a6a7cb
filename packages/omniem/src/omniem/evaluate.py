"""`evaluate`: score a model on labelled images (pixels pooled over the whole set).

Segmentation: ``iou``, ``dice``, ``precision``, ``recall`` of the foreground (for a binary task
any non-zero label is foreground; for a multi-class task also per-class IoU and their mean).
Restoration: ``psnr`` and ``ssim`` of the output against the given targets.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from omniem.infer import model_tiling, predict_image


def evaluate(
    model: Any,
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    json_out: str | os.PathLike[str] | None = None,
    tile: int | None = None,
    overlap: float | None = None,
    dtype: str = "auto",
    tta: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run ``model`` (name, file or `OmniEM`) on image/label pairs and score it.

    Args:
        model: a registered name (``omniem list``), a model file, or a loaded network.
        images: a directory of 2D images, a TIFF stack or a Zarr array (see `omniem.pairs`).
        labels: the same for labels (or restoration targets), paired by sorted order / slice.
        json_out: also write the result here (atomically).
        tile: sliding-window tile side (input pixels); default: the model's
            (`omniem.infer.model_tiling`: its card's, else 256).
        overlap: tile overlap fraction; default: the model's (else 0.25).
        dtype: ``auto`` (bf16 where the device computes it natively, else fp32: see
            `emdino.precision`), ``bf16`` or ``fp32``.
        tta: average each image's raw output over its 8 flips and 90-degree rotations (8x the
            time; see `omniem.infer.predict_image`).
        progress: called with ``(done, total)`` after each image.

    Returns:
        The scores plus ``n_images``, ``model``, ``task``, the ``tile`` and ``overlap`` used and
        ``seconds``.
    """
    from emdino.precision import resolve_precision
    from omniem import metrics
    from omniem.pairs import read_pairs
    from omniem.registry import load

    t0 = time.perf_counter()
    net = load(model) if isinstance(model, str | os.PathLike) else model
    pairs = read_pairs(images, labels)
    task = net.config.task
    tile, overlap = model_tiling(net, tile, overlap)
    dtype = resolve_precision(dtype, net.backbone.device)

    def predict(img: np.ndarray) -> Any:
        return predict_image(net, img, tile=tile, overlap=overlap, dtype=dtype, tta=tta)

    result: dict[str, Any] = {
        "model": str(model) if not hasattr(model, "config") else "<in memory>",
        "task": task,
        "images": str(images),
        "labels": str(labels),
        "tta": bool(tta),
        "tile": tile,
        "overlap": overlap,
        "dtype": dtype,
    }
    if task == "restoration":
        psnrs, ssims = [], []
        for k, (img, target, _name) in enumerate(pairs):
            out = predict(img)[0].cpu().numpy()
            t = _unit(target)
            out = out[: t.shape[0], : t.shape[1]]
            psnrs.append(metrics.psnr(out, t, data_range=1.0))
            ssims.append(metrics.ssim(out, t, data_range=1.0))
            if progress:
                progress(k + 1, len(pairs))
        result.update(psnr=float(np.mean(psnrs)), ssim=float(np.mean(ssims)))
    else:
        n_classes = net.config.out_channels
        binary = task == "instances" or n_classes == 2
        counts = metrics.SegmentationCounts(2 if binary else n_classes)
        for k, (img, lab, _name) in enumerate(pairs):
            prob = predict(img)
            if task == "instances":
                pred = (prob[0] > 0.5).cpu().numpy()
            else:
                pred = prob.argmax(0).cpu().numpy()
            if binary:
                counts.update((pred > 0).astype(np.int64), (np.asarray(lab) > 0).astype(np.int64))
            else:
                counts.update(pred.astype(np.int64), np.asarray(lab).astype(np.int64))
            if progress:
                progress(k + 1, len(pairs))
        iou, dice = counts.iou(), counts.dice()
        prec, rec = counts.precision(), counts.recall()
        if binary:
            result.update(
                iou=float(iou[1]),
                dice=float(dice[1]),
                precision=float(prec[1]),
                recall=float(rec[1]),
            )
        else:
            fg = slice(1, None)
            result.update(
                iou=float(np.nanmean(iou[fg])),
                dice=float(np.nanmean(dice[fg])),
                precision=float(np.nanmean(prec[fg])),
                recall=float(np.nanmean(rec[fg])),
                per_class_iou=[float(v) for v in iou],
                miou=float(np.nanmean(iou)),
            )
    result["n_images"] = len(pairs)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if json_out:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, path)
    return result


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    return a.astype(np.float32)
