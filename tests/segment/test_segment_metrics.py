"""Dice, IoU and Hausdorff against hand-computed values and independent libraries."""

import numpy as np
import pandas as pd
import pytest
from skimage.metrics import hausdorff_distance
from sklearn.metrics import f1_score, jaccard_score

from covidct.errors import CovidctError
from covidct.segment.metrics import boundary, dice, hausdorff, hausdorff95, iou, per_image_metrics, summarize


def square(top, left, side, shape=(20, 20)):
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_dice_and_iou_by_hand():
    a, b = square(0, 0, 4), square(0, 2, 4)  # 16 px each, overlap 8
    assert dice(a, b) == pytest.approx(2 * 8 / 32)
    assert iou(a, b) == pytest.approx(8 / 24)
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0 and iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_dice_and_iou_match_sklearn():
    rng = np.random.default_rng(0)
    pred, true = rng.random((32, 32)) > 0.6, rng.random((32, 32)) > 0.5
    assert dice(pred, true) == pytest.approx(f1_score(true.ravel(), pred.ravel()))
    assert iou(pred, true) == pytest.approx(jaccard_score(true.ravel(), pred.ravel()))


def test_hausdorff_by_hand_and_against_skimage():
    a, b = square(2, 2, 6), square(2, 5, 6)  # shifted right by 3 px
    assert hausdorff(a, b, percentile=100) == pytest.approx(3.0)
    rng = np.random.default_rng(1)
    for _ in range(3):
        pred = square(*rng.integers(0, 8, 2), 7) | square(*rng.integers(8, 14, 2), 5)
        true = square(*rng.integers(0, 10, 2), 8)
        expected = hausdorff_distance(boundary(pred), boundary(true))
        assert hausdorff(pred, true, percentile=100) == pytest.approx(expected)
        assert hausdorff95(pred, true) <= expected + 1e-9
    assert hausdorff95(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0
    assert np.isnan(hausdorff95(a, np.zeros_like(a)))
    assert hausdorff(a, b, 100, spacing=(1.0, 0.5)) == pytest.approx(1.5)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(CovidctError, match="shape"):
        dice(np.zeros((4, 4)), np.zeros((5, 5)))


def test_summary_means_and_group_bootstrap():
    preds = np.stack([square(0, 0, 4), square(0, 0, 4), square(0, 0, 4), np.zeros((20, 20), bool)])
    trues = np.stack([square(0, 0, 4), square(0, 2, 4), square(0, 0, 4), square(0, 0, 4)])
    table = per_image_metrics(preds, trues, groups=["p1", "p1", "p2", "p3"])
    assert table["dice"].tolist() == pytest.approx([1.0, 0.5, 1.0, 0.0])
    summary = summarize(table, n_bootstrap=200)
    assert summary["dice"]["mean"] == pytest.approx(0.625)
    assert summary["n_groups"] == 3 and summary["hausdorff95"]["n_undefined"] == 1
    assert summary["dice"]["low"] <= 0.625 <= summary["dice"]["high"]
    assert isinstance(table, pd.DataFrame) and table["true_fraction"].iloc[0] == pytest.approx(16 / 400)
