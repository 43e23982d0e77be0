"""Group bootstrap, ECE by hand, temperature recovery, slice->patient aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.evaluate.aggregate import aggregate_groups, aggregate_scores
from covidct.evaluate.bootstrap import bootstrap_ci, paired_difference_ci
from covidct.evaluate.calibration import expected_calibration_error, fit_temperature
from covidct.evaluate.metrics import logits_to_probs


def _mean(y, s):
    return float(np.mean(s))


def test_group_bootstrap_is_wider_than_slice_bootstrap_for_correlated_slices():
    # 12 patients x 10 identical slices: slices carry no extra information, so the group bootstrap
    # must be about sqrt(10) ~ 3.2 times wider than a bootstrap that treats slices as independent.
    rng = np.random.default_rng(1)
    patient_values = rng.normal(size=12)
    scores = np.repeat(patient_values, 10)
    groups = np.repeat(np.arange(12), 10)
    y = np.zeros_like(scores)
    by_group = bootstrap_ci(_mean, y, scores, groups=groups, n_bootstrap=400, seed=0)
    by_slice = bootstrap_ci(_mean, y, scores, groups=None, n_bootstrap=400, seed=0)
    assert by_group["value"] == pytest.approx(scores.mean())
    assert by_group["unit"] == "group" and by_group["n_groups"] == 12
    assert by_slice["n_groups"] == 120
    ratio = (by_group["high"] - by_group["low"]) / (by_slice["high"] - by_slice["low"])
    assert 2.2 < ratio < 4.5
    assert by_group["low"] < scores.mean() < by_group["high"]


def test_bootstrap_single_group_collapses_and_drops_undefined_replicates():
    out = bootstrap_ci(_mean, np.zeros(5), np.arange(5.0), groups=["a"] * 5, n_bootstrap=50)
    assert out["low"] == out["high"] == pytest.approx(2.0)
    nan_metric = bootstrap_ci(lambda y, s: float("nan"), np.zeros(3), np.ones(3), n_bootstrap=10)
    assert nan_metric["n_bootstrap"] == 0 and np.isnan(nan_metric["low"])
    with pytest.raises(CovidctError):
        bootstrap_ci(_mean, np.zeros(3), np.ones(4))


def test_ece_hand_computed():
    # Two samples at confidence 0.85 (one right) and two at 0.65 (both right):
    # ECE = 0.5 * |0.5 - 0.85| + 0.5 * |1.0 - 0.65| = 0.175 + 0.175 = 0.35.
    probs = np.array([[0.85, 0.15], [0.85, 0.15], [0.35, 0.65], [0.35, 0.65]])
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.35)
    # A perfectly calibrated bin: confidence 0.75 with 3 of 4 right.
    probs2 = np.tile([[0.75, 0.25]], (4, 1))
    assert expected_calibration_error(np.array([0, 0, 0, 1]), probs2, n_bins=10) == pytest.approx(0.0)


def test_temperature_scaling_recovers_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=(20000, 3))
    probs = logits_to_probs(true_logits)
    y = np.array([rng.choice(3, p=p) for p in probs])
    # An over-confident model: its logits are the calibrated ones times 2.5.
    fitted = fit_temperature(y, true_logits * 2.5)
    assert fitted == pytest.approx(2.5, rel=0.06)


def test_aggregation_hand_computed():
    scores = np.array([0.1, 0.9, 0.8, 0.2])
    assert aggregate_scores(scores, "mean") == pytest.approx(0.5)
    assert aggregate_scores(scores, "max") == pytest.approx(0.9)
    assert aggregate_scores(scores, "topk", k=2) == pytest.approx(0.85)
    assert aggregate_scores(scores, "fraction", threshold=0.5) == pytest.approx(0.5)
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8], [0.6, 0.4]])
    table = aggregate_groups(probs, ["p2", "p1", "p1", "p2"], labels=[0, 1, 1, 0], method="mean")
    assert table["group"].tolist() == ["p1", "p2"]
    np.testing.assert_allclose(table["score_1"], [0.85, 0.25])
    assert table["label"].tolist() == [1, 0]
    with pytest.raises(CovidctError, match="different labels"):
        aggregate_groups(probs, ["a", "a", "b", "b"], labels=[0, 1, 1, 1])
    with pytest.raises(CovidctError, match="Did you mean"):
        aggregate_scores(scores, "maxx")


def _accuracy(y, predicted):
    return float(np.mean(y == predicted))


def test_paired_difference_of_identical_systems_is_exactly_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    predicted = rng.integers(0, 2, 60)
    result = paired_difference_ci(_accuracy, y, predicted, predicted.copy(), groups=np.arange(60) // 6, n_bootstrap=200)
    assert (result["value"], result["low"], result["high"], result["share_b_better"]) == (0.0, 0.0, 0.0, 0.0)
    assert result["n_groups"] == 10 and result["unit"] == "group"


def test_paired_difference_when_b_fixes_one_group():
    """5 groups of 4 rows; b is right on every row, a is wrong on all of group 0 only. On all rows the
    difference is 4/20 = 0.2; in a replicate it is (copies of group 0) / 5 > 0 exactly when group 0 is drawn,
    which happens with probability 1 - (4/5)^5 = 0.672; it is never negative."""
    y = np.zeros(20, dtype=int)
    groups = np.repeat(np.arange(5), 4)
    a = np.where(groups == 0, 1, 0)
    b = np.zeros(20, dtype=int)
    result = paired_difference_ci(_accuracy, y, a, b, groups=groups, n_bootstrap=4000, seed=3)
    assert result["value"] == pytest.approx(0.2)
    assert result["low"] == 0.0 and result["high"] >= 0.4
    assert result["share_b_better"] == pytest.approx(1 - 0.8**5, abs=0.03)
    # unpaired intervals would overlap completely here; the paired one never goes below zero
    assert paired_difference_ci(_accuracy, y, b, a, groups=groups, n_bootstrap=500)["high"] == 0.0


def test_paired_difference_refuses_unpaired_scores():
    with pytest.raises(CovidctError, match="not paired"):
        paired_difference_ci(_accuracy, np.zeros(4), np.zeros(4), np.zeros(5))
