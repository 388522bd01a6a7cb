"""Probe tasks on the reference EM datasets (em5m.datasets splits; probe trained on ``train``,
scored on ``val``).

- ``lucchi_mito``: Lucchi++ mitochondria, patch probe, 2 classes; reports the mitochondrion IoU.
  Train = slices 0..131 (every ``train_stride``-th), val = slices 132..164 (all 33).
- ``vnc_organelles``: Drosophila VNC ssTEM, 5 classes (membrane, mitochondrion, synapse,
  glia/extracellular, intracellular), patch probe; per-class IoU and their mean.
  Train = sections 0..15, val = sections 16..19.
- ``lucchi_mito_dev``: the same probe inside the training half only (train = slices 0..65, val =
  slices 66..131, every ``train_stride``-th of each): for development decisions (config choices,
  is a run learning?) that must not look at the reported validation slices.
- ``lucchi_tiles``: image-level probes (k-NN and logistic regression on pooled features) of
  "tile contains a mitochondrion" on 128-px Lucchi++ tiles (positive: >= 5 % mitochondrion
  pixels, negative: none; tiles in between are dropped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emdino.eval.features import Embedder, patch_features, pooled_features
from emdino.eval.knn import knn_classify
from emdino.eval.linear import fit_linear, linear_accuracy
from emdino.eval.patch_probe import (
    DEFAULT_RECIPE,
    ProbeRecipe,
    fit_patch_probe,
    iou_per_class,
    predict,
)

TASKS = ("lucchi_mito", "vnc_organelles", "lucchi_tiles", "lucchi_mito_dev")


@dataclass(frozen=True)
class FeatureSpec:
    """How features are taken (the same for every backbone compared)."""

    patch_size: int
    tile: int = 128
    mean: float = 0.595446
    std: float = 0.211906
    precision: str = "auto"


def _feats(embed: Embedder, images: np.ndarray, spec: FeatureSpec) -> torch.Tensor:
    return patch_features(
        embed,
        images,
        patch_size=spec.patch_size,
        tile=spec.tile,
        mean=spec.mean,
        std=spec.std,
        precision=spec.precision,
    )


def segmentation_probe(
    embed: Embedder,
    spec: FeatureSpec,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    class_names: tuple[str, ...],
    recipe: ProbeRecipe = DEFAULT_RECIPE,
) -> dict[str, Any]:
    """Fit a patch probe on train images, return per-class IoU on val images."""
    t0 = time.perf_counter()
    f_train = _feats(embed, train_images, spec)
    f_val = _feats(embed, val_images, spec)
    t1 = time.perf_counter()
    probe = fit_patch_probe(f_train, train_labels, len(class_names), spec.patch_size, recipe)
    pred = predict(probe, f_val, spec.patch_size, val_labels.shape[1:])
    ious = iou_per_class(pred, val_labels, len(class_names))
    return {
        "iou": dict(zip(class_names, ious, strict=True)),
        "miou": float(np.nanmean(ious)),
        "n_train_images": int(train_images.shape[0]),
        "n_val_images": int(val_images.shape[0]),
        "feature_s": t1 - t0,
        "probe_s": time.perf_counter() - t1,
    }


def lucchi_mito(
    embed: Embedder, spec: FeatureSpec, train_stride: int = 4, recipe: ProbeRecipe = DEFAULT_RECIPE
) -> dict[str, Any]:
    """Lucchi++ mitochondria patch probe (see module docstring).

    Returns:
        ``{"mito_iou", "iou", "miou", ...}`` measured on the 33 val slices.
    """
    from em5m import datasets

    if train_stride < 1:
        raise ValueError("train_stride must be >= 1")
    train = datasets.load("lucchi_pp", split="train")
    val = datasets.load("lucchi_pp", split="val")
    assert train.labels is not None and val.labels is not None
    res = segmentation_probe(
        embed,
        spec,
        train.image[::train_stride],
        train.labels["mitochondria"][::train_stride].astype(np.uint8),
        val.image,
        val.labels["mitochondria"].astype(np.uint8),
        ("background", "mitochondrion"),
        recipe,
    )
    res["mito_iou"] = res["iou"]["mitochondrion"]
    res["split"] = (
        f"train = lucchi_pp/train slices 0..131 every {train_stride}; "
        "val = lucchi_pp/val slices 132..164 (last 33 of the training volume)"
    )
    return res


def lucchi_mito_dev(
    embed: Embedder, spec: FeatureSpec, train_stride: int = 4, recipe: ProbeRecipe = DEFAULT_RECIPE
) -> dict[str, Any]:
    """Lucchi++ mitochondria probe within ``lucchi_pp/train`` (0..65 -> 66..131); never val."""
    from em5m import datasets

    if train_stride < 1:
        raise ValueError("train_stride must be >= 1")
    train = datasets.load("lucchi_pp", split="train")
    assert train.labels is not None
    image, mito = train.image, train.labels["mitochondria"].astype(np.uint8)
    half = image.shape[0] // 2
    res = segmentation_probe(
        embed,
        spec,
        image[:half:train_stride],
        mito[:half:train_stride],
        image[half::train_stride],
        mito[half::train_stride],
        ("background", "mitochondrion"),
        recipe,
    )
    res["mito_iou"] = res["iou"]["mitochondrion"]
    res["split"] = f"dev: lucchi_pp/train slices 0..{half - 1} -> {half}..131, every {train_stride}"
    return res


def vnc_organelles(
    embed: Embedder, spec: FeatureSpec, recipe: ProbeRecipe = DEFAULT_RECIPE
) -> dict[str, Any]:
    """Drosophila VNC 5-class patch probe (train sections 0..15, val 16..19)."""
    from em5m import datasets

    train = datasets.load("drosophila_vnc", split="train")
    val = datasets.load("drosophila_vnc", split="val")
    assert train.labels is not None and val.labels is not None and train.class_names
    res = segmentation_probe(
        embed,
        spec,
        train.image,
        train.labels["classes"],
        val.image,
        val.labels["classes"],
        tuple(train.class_names),
        recipe,
    )
    res["split"] = "train = drosophila_vnc sections 0..15; val = sections 16..19"
    return res


def _tiles(image: np.ndarray, mask: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    n, h, w = image.shape
    ims, fracs = [], []
    for z in range(n):
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                ims.append(image[z, y : y + tile, x : x + tile])
                fracs.append(mask[z, y : y + tile, x : x + tile].mean())
    return np.stack(ims), np.asarray(fracs)


def lucchi_tiles(
    embed: Embedder, spec: FeatureSpec, train_stride: int = 4, k: int = 20
) -> dict[str, Any]:
    """k-NN and linear probes of 'tile contains a mitochondrion' on pooled tile features."""
    from em5m import datasets

    out: dict[str, Any] = {}
    feats, labels = {}, {}
    for split, stride in (("train", train_stride), ("val", 1)):
        ds = datasets.load("lucchi_pp", split=split)
        assert ds.labels is not None
        tiles, frac = _tiles(ds.image[::stride], ds.labels["mitochondria"][::stride], spec.tile)
        keep = (frac >= 0.05) | (frac == 0)
        f = pooled_features(_feats(embed, tiles[keep], spec))
        feats[split], labels[split] = f, torch.from_numpy((frac[keep] >= 0.05).astype(np.int64))
    out["knn_accuracy"] = float(
        (knn_classify(feats["train"], labels["train"], feats["val"], 2, k=k) == labels["val"])
        .float()
        .mean()
    )
    clf = fit_linear(feats["train"], labels["train"], 2)
    out["linear_accuracy"] = linear_accuracy(clf, feats["val"], labels["val"])
    out["n_train_tiles"] = int(labels["train"].numel())
    out["n_val_tiles"] = int(labels["val"].numel())
    out["val_positive_fraction"] = float(labels["val"].float().mean())
    return out


def run_tasks(
    embed: Embedder,
    spec: FeatureSpec,
    tasks: tuple[str, ...] = TASKS,
    train_stride: int = 4,
    recipe: ProbeRecipe = DEFAULT_RECIPE,
) -> dict[str, Any]:
    """Run the named tasks; returns ``{task: results}``.

    Raises:
        ValueError: an unknown task name.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; known: {list(TASKS)}")
    out: dict[str, Any] = {}
    for t in tasks:
        if t == "lucchi_mito":
            out[t] = lucchi_mito(embed, spec, train_stride, recipe)
        elif t == "lucchi_mito_dev":
            out[t] = lucchi_mito_dev(embed, spec, train_stride, recipe)
        elif t == "vnc_organelles":
            out[t] = vnc_organelles(embed, spec, recipe)
        else:
            out[t] = lucchi_tiles(embed, spec, train_stride)
    return out
