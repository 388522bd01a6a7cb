"""Frozen-feature evaluation of EM-DINO backbones: k-NN, linear and patch-level probes.

Examples:
    >>> from emdino.eval import FeatureSpec, run_tasks, vit_embedder
    >>> embed, p = vit_embedder(vit)  # doctest: +SKIP
    >>> run_tasks(embed, FeatureSpec(patch_size=p), ("lucchi_mito",))  # doctest: +SKIP
    {'lucchi_mito': {'mito_iou': 0.7..., ...}}
"""

from emdino.eval.features import patch_features, pooled_features, vit_embedder
from emdino.eval.knn import knn_classify
from emdino.eval.linear import fit_linear, linear_accuracy
from emdino.eval.patch_probe import (
    PatchLinearProbe,
    ProbeRecipe,
    fit_patch_probe,
    iou_per_class,
    predict,
)
from emdino.eval.tasks import TASKS, FeatureSpec, lucchi_mito, run_tasks, vnc_organelles

__all__ = [
    "TASKS",
    "FeatureSpec",
    "PatchLinearProbe",
    "ProbeRecipe",
    "fit_linear",
    "fit_patch_probe",
    "iou_per_class",
    "knn_classify",
    "linear_accuracy",
    "lucchi_mito",
    "patch_features",
    "pooled_features",
    "predict",
    "run_tasks",
    "vit_embedder",
    "vnc_organelles",
]
