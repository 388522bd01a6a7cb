"""Scores for segmentation, restoration, instances and neurons (numpy in, python floats out).

Conventions shared by every function here:

- Label arrays are integer (or bool) arrays of any shape; ``pred`` comes first, ground truth
  second, and both must have the same shape. Floats are refused (``ValueError``) so that a
  probability map is never scored as if it were labels by accident.
- A ratio whose denominator is 0 (a class absent from both prediction and target, no instances
  at all) is ``nan``, not 0 or 1: an empty class carries no evidence either way. Average such
  values with `numpy.nanmean`.
- Semantic scores are *pooled*: true/false positives and false negatives are summed over every
  pixel of every image first, and the ratio is taken once at the end (`SegmentationCounts`). This
  differs from the mean of per-image scores, which over-weights images with little foreground.

What comes from where: PSNR, SSIM, variation of information and the adapted Rand error are
scikit-image's (`skimage.metrics`); the instance matching uses `scipy.sparse` for the overlap
table and `scipy.optimize.linear_sum_assignment` where a matching is not unique.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from skimage import metrics as skm

__all__ = [
    "SegmentationCounts",
    "adapted_rand_error",
    "average_precision",
    "binary_scores",
    "psnr",
    "ssim",
    "voi",
]


def _labels(a: object, name: str) -> np.ndarray:
    """``a`` as an integer array, or a ValueError naming ``name``."""
    arr = np.asarray(a)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must be an integer (or bool) label array, got dtype {arr.dtype}; "
            "threshold or argmax probabilities first"
        )
    return arr


def _label_pair(pred: object, target: object, names: tuple[str, str] = ("pred", "target")):
    p, t = _labels(pred, names[0]), _labels(target, names[1])
    if p.shape != t.shape:
        raise ValueError(f"{names[0]} has shape {p.shape} but {names[1]} has shape {t.shape}")
    return p, t


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


class SegmentationCounts:
    """Pooled per-class confusion counts over a whole set of label images.

    Class 0 is background. Every `update` adds one prediction/target pair (any shape, the same
    for both) to a ``(n_classes, n_classes)`` confusion matrix (rows = target, columns =
    prediction); the scores are ratios of the summed counts, so a set of images is scored as if
    it were one large image. A class whose denominator is 0 scores ``nan``.

    Args:
        n_classes: number of classes, background included (2 for a binary task). Labels must lie
            in ``[0, n_classes)``.

    Examples:
        >>> c = SegmentationCounts(2)
        >>> c.update(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]]))
        >>> c.update(np.array([[0, 0], [0, 0]]), np.array([[1, 1], [1, 0]]))
        >>> [round(v, 4) for v in c.iou()]  # class 0: 3 / (3 + 3 + 1); class 1: 1 / (1 + 1 + 3)
        [0.4286, 0.2]
        >>> c.precision()[1], c.recall()[1]
        (0.5, 0.25)
        >>> c.foreground()["dice"]  # 2 TP / (2 TP + FP + FN)
        0.3333333333333333
    """

    def __init__(self, n_classes: int) -> None:
        if int(n_classes) != n_classes or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        self.n_classes = int(n_classes)
        self.confusion = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one image (or volume) pair.

        Args:
            pred: predicted class per pixel, integer or bool.
            target: true class per pixel, same shape.

        Raises:
            ValueError: different shapes, non-integer labels, or a label outside
                ``[0, n_classes)``.
        """
        p, t = _label_pair(pred, target)
        for arr, name in ((p, "pred"), (t, "target")):
            if arr.size and (arr.min() < 0 or arr.max() >= self.n_classes):
                raise ValueError(
                    f"{name} has labels in [{arr.min()}, {arr.max()}], outside "
                    f"[0, {self.n_classes}) for n_classes={self.n_classes}"
                )
        k = self.n_classes
        flat = t.ravel().astype(np.int64) * k + p.ravel()
        self.confusion += np.bincount(flat, minlength=k * k).reshape(k, k)

    def _tp_fp_fn(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cm = self.confusion
        tp = np.diag(cm)
        return tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp

    def iou(self) -> list[float]:
        """Per-class intersection over union, TP / (TP + FP + FN)."""
        tp, fp, fn = self._tp_fp_fn()
        return [_ratio(a, a + b + c) for a, b, c in zip(tp, fp, fn, strict=True)]

    def dice(self) -> list[float]:
        """Per-class Dice (F1), 2 TP / (2 TP + FP + FN)."""
        tp, fp, fn = self._tp_fp_fn()
        return [_ratio(2 * a, 2 * a + b + c) for a, b, c in zip(tp, fp, fn, strict=True)]

    def precision(self) -> list[float]:
        """Per-class precision, TP / (TP + FP)."""
        tp, fp, _ = self._tp_fp_fn()
        return [_ratio(a, a + b) for a, b in zip(tp, fp, strict=True)]

    def recall(self) -> list[float]:
        """Per-class recall, TP / (TP + FN)."""
        tp, _, fn = self._tp_fp_fn()
        return [_ratio(a, a + c) for a, c in zip(tp, fn, strict=True)]

    def foreground(self) -> dict[str, float]:
        """IoU, Dice, precision and recall of foreground (any class > 0) against background.

        For a binary task these equal the class-1 entries of the per-class lists.
        """
        cm = self.confusion
        tp = int(cm[1:, 1:].sum())
        fp = int(cm[0, 1:].sum())
        fn = int(cm[1:, 0].sum())
        return _scores(tp, fp, fn)


def _scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


def binary_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Foreground IoU, Dice, precision and recall of one prediction (non-zero = foreground).

    Args:
        pred: predicted labels or mask (integer or bool).
        target: true labels or mask, same shape.

    Returns:
        ``{"iou", "dice", "precision", "recall"}``; ``nan`` where a denominator is 0.

    Examples:
        >>> binary_scores(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
        {'iou': 0.3333333333333333, 'dice': 0.5, 'precision': 0.5, 'recall': 0.5}
    """
    p, t = _label_pair(pred, target)
    p, t = p != 0, t != 0
    tp = int(np.count_nonzero(p & t))
    return _scores(tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(t)) - tp)


def _images(pred: object, target: object, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred has shape {p.shape} but target has shape {t.shape}")
    if p.ndim != 2:
        raise ValueError(f"expected 2D images, got shape {p.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    return p, t


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``.

    Uses `skimage.metrics.peak_signal_noise_ratio`; identical images give ``inf``.

    Args:
        pred: restored 2D image.
        target: clean 2D image, same shape.
        data_range: the span of possible values (1.0 for [0, 1] images, 255 for uint8).

    Examples:
        >>> t = np.zeros((8, 8))
        >>> round(psnr(t + 0.1, t, data_range=1.0), 6)  # MSE = 0.01
        20.0
    """
    p, t = _images(pred, target, data_range)
    if np.array_equal(p, t):
        return math.inf
    return float(skm.peak_signal_noise_ratio(t, p, data_range=data_range))


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """Mean structural similarity of two 2D images, as defined by Wang et al. (2004).

    `skimage.metrics.structural_similarity` with the settings of the original paper: an 11x11
    Gaussian window with sigma 1.5 (``gaussian_weights=True``), population covariances
    (``use_sample_covariance=False``), K1 = 0.01, K2 = 0.03. Both sides must be at least 11 px.

    Args:
        pred: restored 2D image.
        target: clean 2D image, same shape.
        data_range: the span of possible values (1.0 for [0, 1] images, 255 for uint8).

    Examples:
        >>> t = np.random.default_rng(0).random((32, 32))
        >>> ssim(t, t, data_range=1.0)
        1.0
    """
    p, t = _images(pred, target, data_range)
    if min(p.shape) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 px, got {p.shape}")
    return float(
        skm.structural_similarity(
            t,
            p,
            data_range=data_range,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def _compact_ids(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat ids renumbered 1..N in sorted order, 0 kept as 0 (works for negative ids too)."""
    ids, inv = np.unique(a.ravel(), return_inverse=True)
    rank = np.cumsum(ids != 0)
    n = int(rank[-1]) if ids.size else 0
    return np.where(ids != 0, rank, 0)[inv.ravel()], n


def _instance_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[sparse.coo_matrix, int, int]:
    """Sparse IoU of every overlapping (gt, pred) instance pair; 0 is background in both.

    Returns the ``(n_gt, n_pred)`` matrix (only overlapping pairs stored) and the instance counts.
    """
    g, n_g = _compact_ids(gt)
    p, n_p = _compact_ids(pred)
    n_g, n_p = n_g + 1, n_p + 1  # with background
    ones = np.ones(g.size, dtype=np.int64)
    table = sparse.coo_matrix((ones, (g, p)), shape=(n_g, n_p)).tocsr()
    size_g = np.asarray(table.sum(axis=1)).ravel()
    size_p = np.asarray(table.sum(axis=0)).ravel()
    inter = table[1:, 1:].tocoo()
    rows, cols = inter.row, inter.col
    union = size_g[1:][rows] + size_p[1:][cols] - inter.data
    iou = sparse.coo_matrix((inter.data / union, (rows, cols)), shape=(n_g - 1, n_p - 1))
    return iou, n_g - 1, n_p - 1


def _true_positives(iou: sparse.coo_matrix, threshold: float) -> int:
    """Number of matched pairs with IoU >= threshold under a one-to-one matching.

    Above 0.5 an instance can reach that IoU with at most one partner, so counting the pairs is
    the matching. At or below 0.5 the matching maximises the number of pairs and then their
    total IoU (as in StarDist and cellpose), with `linear_sum_assignment` on the instances that
    have a candidate.
    """
    keep = iou.data >= threshold
    rows, cols, vals = iou.row[keep], iou.col[keep], iou.data[keep]
    if rows.size == 0:
        return 0
    if threshold > 0.5:
        return int(rows.size)
    r_ids, r = np.unique(rows, return_inverse=True)
    c_ids, c = np.unique(cols, return_inverse=True)
    n = min(r_ids.size, c_ids.size)
    cost = np.zeros((r_ids.size, c_ids.size))
    cost[r, c] = -1.0 - vals / (2 * n)
    ri, ci = linear_sum_assignment(cost)
    return int(np.count_nonzero(cost[ri, ci] < 0))


def average_precision(
    pred_instances: np.ndarray,
    gt_instances: np.ndarray,
    thresholds: Iterable[float] = (0.5, 0.75),
) -> dict[float, float]:
    """Instance "average precision" TP / (TP + FP + FN) at each IoU threshold.

    This is the score of the 2018 Data Science Bowl as StarDist (``matching(...).accuracy``) and
    cellpose (``metrics.average_precision``) compute it, not the area under a precision-recall
    curve: predicted and true instances are matched one-to-one, a pair counts as a true positive
    when its IoU is >= the threshold, unmatched predictions are false positives and unmatched true
    instances false negatives. Label 0 is background in both images; ids need not be sequential.
    With no instances on either side the score is ``nan``.

    Args:
        pred_instances: predicted instance ids (integer, 2D or 3D).
        gt_instances: true instance ids, same shape.
        thresholds: IoU thresholds in (0, 1].

    Returns:
        ``{threshold: score}`` for each threshold.

    Examples:
        >>> gt = np.array([[1, 1, 0, 2], [1, 1, 0, 2]])
        >>> pred = np.array([[3, 3, 0, 0], [3, 0, 0, 0]])  # IoU 0.75 with 1; misses 2
        >>> average_precision(pred, gt, thresholds=(0.5, 0.8))
        {0.5: 0.5, 0.8: 0.0}
    """
    p, g = _label_pair(pred_instances, gt_instances, ("pred_instances", "gt_instances"))
    thresholds = tuple(float(t) for t in thresholds)
    for t in thresholds:
        if not 0 < t <= 1:
            raise ValueError(f"IoU thresholds must lie in (0, 1], got {t}")
    iou, n_g, n_p = _instance_iou(p, g)
    out = {}
    for t in thresholds:
        tp = _true_positives(iou, t)
        out[t] = _ratio(tp, n_g + n_p - tp)  # TP + FP + FN = n_pred + n_gt - TP
    return out


def _neuron_ids(pred: object, gt: object) -> tuple[np.ndarray, np.ndarray]:
    """Both segmentations as compact non-negative ids (gt 0 kept as 0, the ignore label)."""
    p, g = _label_pair(pred, gt, ("pred", "gt"))
    return _compact_ids(p)[0].reshape(p.shape), _compact_ids(g)[0].reshape(g.shape)


def voi(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Variation of information split into its split and merge parts, in bits.

    ``split = H(pred | gt)`` grows when true objects are cut into pieces, ``merge = H(gt | pred)``
    when predicted objects join true ones; their sum is the VOI. Computed by
    `skimage.metrics.variation_of_information` (log base 2). Following the CREMI and gala
    convention, voxels where ``gt == 0`` (boundary / unlabelled) are left out; ``pred`` ids are
    all treated as objects, 0 included. Values under 1e-12 bits (floating-point roundoff) are
    returned as exactly 0.

    Args:
        pred: predicted segment ids (integer, any shape).
        gt: true segment ids, same shape; 0 = ignore.

    Returns:
        ``(split, merge)``.

    Examples:
        >>> gt = np.array([1, 1, 2, 2, 0])
        >>> voi(np.array([5, 5, 5, 5, 7]), gt)  # one merge, the gt-0 voxel is ignored
        (0.0, 1.0)
        >>> voi(np.array([1, 3, 2, 4, 0]), gt)  # both objects split in two
        (1.0, 0.0)
    """
    p, g = _neuron_ids(pred, gt)
    split, merge = skm.variation_of_information(g, p, ignore_labels=(0,))
    # Probabilities that should sum to exactly 1 leave ~1e-16 bits of roundoff; report 0.
    split, merge = (0.0 if abs(v) < 1e-12 else float(v) for v in (split, merge))
    return split, merge


def adapted_rand_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Adapted Rand error of SNEMI3D / CREMI, 1 - F-score of the Rand precision and recall.

    `skimage.metrics.adapted_rand_error` with ``ignore_labels=(0,)``: voxels where ``gt == 0``
    (boundary / unlabelled, the CREMI and gala convention) are left out. 0 means identical
    segmentations up to renaming; 1 is the worst.

    Args:
        pred: predicted segment ids (integer, any shape).
        gt: true segment ids, same shape; 0 = ignore.

    Examples:
        >>> gt = np.array([1, 1, 2, 2, 0])
        >>> adapted_rand_error(np.array([7, 7, 3, 3, 3]), gt)
        0.0
        >>> adapted_rand_error(np.array([7, 7, 7, 7, 7]), gt)  # Rand precision 1/3, recall 1
        0.5
    """
    p, g = _neuron_ids(pred, gt)
    if not np.any(g):
        return math.nan
    return float(skm.adapted_rand_error(g, p, ignore_labels=(0,))[0])
