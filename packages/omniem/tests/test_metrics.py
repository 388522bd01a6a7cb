"""omniem.metrics: hand-computed cases and checks on real EM labels (Lucchi++, gala)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.measure import label as connected_components
from skimage.metrics import structural_similarity

from omniem import metrics

# Two 4x4 binary images, counts worked out by hand (class 1 = foreground):
#   image A: TP 3, FP 1, FN 1, TN 11        image B: TP 1, FP 0, FN 5, TN 10
#   pooled:  TP 4, FP 1, FN 6, TN 21
A_PRED = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
A_TRUE = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
B_PRED = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
B_TRUE = np.array([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])


def test_pooled_counts_match_hand_computed_values():
    c = metrics.SegmentationCounts(2)
    c.update(A_PRED, A_TRUE)
    c.update(B_PRED, B_TRUE)
    assert c.confusion.tolist() == [[21, 1], [6, 4]]
    iou, dice = c.iou(), c.dice()
    prec, rec = c.precision(), c.recall()
    assert iou[1] == pytest.approx(4 / 11)
    assert dice[1] == pytest.approx(8 / 15)
    assert prec[1] == pytest.approx(4 / 5)
    assert rec[1] == pytest.approx(4 / 10)
    # Background: TP 21, FP 6 (true fg called bg), FN 1.
    assert iou[0] == pytest.approx(21 / 28)
    assert prec[0] == pytest.approx(21 / 27)
    assert rec[0] == pytest.approx(21 / 22)
    assert c.foreground() == pytest.approx(
        {"iou": 4 / 11, "dice": 8 / 15, "precision": 4 / 5, "recall": 4 / 10}
    )
    assert all(isinstance(v, float) for v in iou + dice + prec + rec)


def test_pooling_differs_from_mean_of_per_image_scores():
    a = metrics.binary_scores(A_PRED, A_TRUE)
    b = metrics.binary_scores(B_PRED, B_TRUE)
    assert a["iou"] == pytest.approx(3 / 5)
    assert b["iou"] == pytest.approx(1 / 6)
    c = metrics.SegmentationCounts(2)
    c.update(A_PRED, A_TRUE)
    c.update(B_PRED, B_TRUE)
    mean_iou = (a["iou"] + b["iou"]) / 2  # 0.383
    assert c.iou()[1] == pytest.approx(4 / 11)  # 0.364
    assert abs(c.iou()[1] - mean_iou) > 0.01
    assert c.recall()[1] != pytest.approx((a["recall"] + b["recall"]) / 2)


def test_multiclass_counts_and_empty_class_is_nan():
    pred = np.array([[0, 1, 1], [3, 3, 0]])
    true = np.array([[0, 1, 3], [3, 3, 3]])
    c = metrics.SegmentationCounts(4)  # class 2 occurs nowhere
    c.update(pred, true)
    iou = c.iou()
    assert iou[1] == pytest.approx(1 / 2)  # TP 1, FP 1 (the 3 called 1)
    assert iou[3] == pytest.approx(2 / 4)  # TP 2, FN 2
    assert math.isnan(iou[2]) and math.isnan(c.dice()[2])
    assert math.isnan(c.precision()[2]) and math.isnan(c.recall()[2])
    # Foreground = any class > 0: TP 4 (1->1, 3->1, 3->3 x2), FN 1 (3->0), FP 0.
    assert c.foreground()["iou"] == pytest.approx(4 / 5)


def test_binary_scores_nonzero_labels_are_foreground_and_empty_is_nan():
    s = metrics.binary_scores(np.array([0, 7, 7, 2]), np.array([0, 1, 0, 5]))
    assert s == pytest.approx({"iou": 2 / 3, "dice": 0.8, "precision": 2 / 3, "recall": 1.0})
    empty = metrics.binary_scores(np.zeros(4, int), np.zeros(4, bool))
    assert all(math.isnan(v) for v in empty.values())


def test_label_errors_are_clear():
    c = metrics.SegmentationCounts(2)
    with pytest.raises(ValueError, match=r"shape \(4, 4\).*shape \(2, 2\)"):
        c.update(A_PRED, np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="integer.*float64"):
        c.update(A_PRED.astype(float), A_TRUE)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        c.update(A_PRED * 2, A_TRUE)
    with pytest.raises(ValueError, match="n_classes"):
        metrics.SegmentationCounts(1)
    with pytest.raises(ValueError, match="gt_instances"):
        metrics.average_precision(A_PRED, A_TRUE.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        metrics.voi(A_PRED, B_TRUE[:2])
    with pytest.raises(ValueError, match="2D"):
        metrics.psnr(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), data_range=1.0)


@pytest.fixture(scope="module")
def lucchi(emssl_data):
    import em5m.datasets

    return em5m.datasets.load("lucchi_pp", split="val")


def test_psnr_of_known_noise_on_a_real_image(lucchi):
    clean = lucchi.image[5, :256, :256].astype(np.float64) / 255.0
    rng = np.random.default_rng(0)
    sigma = 0.05
    noisy = clean + rng.normal(0.0, sigma, clean.shape)  # not clipped: MSE = sigma^2
    expected = 10 * math.log10(1.0 / sigma**2)  # 26.02 dB
    assert metrics.psnr(noisy, clean, data_range=1.0) == pytest.approx(expected, abs=0.1)
    # A constant offset of 0.1 on a [0, 255] scale image: MSE = (0.1 * 255)^2.
    assert metrics.psnr(clean * 255 + 25.5, clean * 255, data_range=255) == pytest.approx(20.0)
    assert metrics.psnr(clean, clean, data_range=1.0) == math.inf


def test_ssim_is_one_for_identical_images_and_uses_gaussian_window(lucchi):
    clean = lucchi.image[5, :128, :128].astype(np.float64) / 255.0
    assert metrics.ssim(clean, clean, data_range=1.0) == pytest.approx(1.0)
    noisy = clean + np.random.default_rng(1).normal(0.0, 0.1, clean.shape)
    value = metrics.ssim(noisy, clean, data_range=1.0)
    assert 0.05 < value < 0.95
    wang = structural_similarity(
        clean, noisy, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert value == pytest.approx(wang)
    assert value != pytest.approx(structural_similarity(clean, noisy, data_range=1.0))
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(clean[:8, :8], clean[:8, :8], data_range=1.0)
    with pytest.raises(ValueError, match="data_range"):
        metrics.ssim(clean, clean, data_range=0)


def _square(shape, y, x, side, value=1):
    a = np.zeros(shape, dtype=np.int32)
    a[y : y + side, x : x + side] = value
    return a


def test_average_precision_perfect_shifted_missing_and_extra():
    gt = _square((32, 32), 2, 2, 10, 1) + _square((32, 32), 18, 18, 10, 2)
    renamed = np.where(gt == 1, 40, np.where(gt == 2, 7, 0))
    assert metrics.average_precision(renamed, gt) == {0.5: 1.0, 0.75: 1.0}
    assert metrics.average_precision(-renamed, gt.astype(np.uint8)) == {0.5: 1.0, 0.75: 1.0}
    # Object 1 shifted 2 px in x: IoU = 80 / 120 = 0.67, a match at 0.5 but not at 0.75.
    shifted = _square((32, 32), 2, 4, 10, 1) + _square((32, 32), 18, 18, 10, 2)
    ap = metrics.average_precision(shifted, gt, thresholds=(0.5, 0.6, 0.7, 0.75))
    assert ap == {0.5: 1.0, 0.6: 1.0, 0.7: pytest.approx(1 / 3), 0.75: pytest.approx(1 / 3)}
    # One object missing and one spurious: TP 1, FN 1, FP 1.
    other = _square((32, 32), 2, 2, 10, 1) + _square((32, 32), 18, 2, 6, 9)
    assert metrics.average_precision(other, gt)[0.5] == pytest.approx(1 / 3)
    # Nothing on either side: no evidence.
    assert math.isnan(metrics.average_precision(np.zeros((4, 4), int), np.zeros((4, 4), int))[0.5])


def test_average_precision_below_half_is_one_to_one():
    gt = _square((8, 8), 0, 0, 4, 1) + _square((8, 8), 0, 4, 4, 2)  # two 4x4 side by side
    pred = np.zeros((8, 8), int)
    pred[0:4, 1:7] = 5  # covers 12 px of each: IoU 12/28 = 0.43 with both
    ap = metrics.average_precision(pred, gt, thresholds=(0.4, 0.5))
    # At 0.4 one prediction may match only one of the two: TP 1, FN 1.
    assert ap == {0.4: pytest.approx(1 / 2), 0.5: 0.0}


def test_voi_and_adapted_rand_identical_merged_split():
    gt = np.repeat(np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0]]), 2, axis=1)
    renamed = np.where(gt > 0, gt + 10, 99)  # different ids, the gt-0 voxels given an id
    assert metrics.voi(renamed, gt) == (0.0, 0.0)
    assert metrics.adapted_rand_error(renamed, gt) == 0.0
    merged = np.where(gt == 2, 1, gt)
    split, merge = metrics.voi(merged, gt)
    assert split == 0.0 and merge > 0.3
    assert metrics.adapted_rand_error(merged, gt) > 0.1
    cut = gt.copy()
    cut[:, :2][cut[:, :2] == 1] = 5  # object 1 cut into two halves
    split, merge = metrics.voi(cut, gt)
    assert split > 0.1 and merge == 0.0
    assert metrics.adapted_rand_error(cut, gt) > 0.1


def test_lucchi_label_against_itself_shifted(lucchi):
    masks = lucchi.labels["mitochondria"][::8]  # 5 slices of 768 x 1024
    assert masks.dtype == bool and masks.mean() > 0.01
    c = metrics.SegmentationCounts(2)
    for m in masks:
        c.update(m[:, 2:], m[:, :-2])  # the label against itself shifted by 2 px in x
    iou = c.iou()[1]
    assert 0.7 < iou < 0.99
    assert c.precision()[1] == pytest.approx(c.recall()[1], rel=0.01)
    inst = connected_components(masks[0])
    ap = metrics.average_precision(inst[:, 2:], inst[:, :-2], thresholds=(0.5, 0.95))
    assert ap[0.5] > 0.8 and ap[0.95] < ap[0.5]


def test_voi_on_real_neurons_merge_and_ignore(emssl_data):
    import em5m.datasets

    gt = em5m.datasets.load("gala", split="train").labels["neurons"]
    assert (gt == 0).any()
    # Filling the gt-0 boundary voxels with any id changes nothing: they are ignored.
    filled = np.where(gt == 0, gt.max() + 1, gt)
    assert metrics.voi(filled, gt) == (0.0, 0.0)
    assert metrics.adapted_rand_error(filled, gt) == 0.0
    ids, sizes = np.unique(gt[gt > 0], return_counts=True)
    a, b = ids[np.argsort(sizes)[-2:]]  # merge the two largest neurons
    merged = np.where(gt == b, a, gt)
    split, merge = metrics.voi(merged, gt)
    assert split == 0.0 and merge > 0.1
    assert metrics.adapted_rand_error(merged, gt) > 0.05
