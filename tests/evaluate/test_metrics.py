"""Metrics against hand-computed values and scikit-learn's multi-class AUC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from covidct.errors import CovidctError
from covidct.evaluate.metrics import compute_metrics, logits_to_probs, macro_auc


def test_binary_hand_computed():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    m = compute_metrics(y, probs, ["nonCOVID", "COVID"], positive_class="COVID")
    # Pairs (neg, pos): (0.1,0.4) ok, (0.6,0.4) wrong, (0.1,0.9) ok, (0.6,0.9) ok -> 3/4.
    assert m["auc_macro_ovr"] == pytest.approx(0.75)
    # Predictions [0,1,0,1]: one TP, one FN, one TN, one FP.
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    # A threshold of 0.35 makes sample 2 (p=0.4) positive: TP=2, FN=0.
    m2 = compute_metrics(y, probs, ["nonCOVID", "COVID"], threshold=0.35)
    assert m2["positive_class"] == "COVID"
    assert m2["sensitivity"] == pytest.approx(1.0)
    assert m2["specificity"] == pytest.approx(0.5)


def test_multiclass_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=200)
    logits = rng.normal(size=(200, 3)) + 1.5 * np.eye(3)[y]
    probs = logits_to_probs(logits)
    m = compute_metrics(y, probs, ["COV", "Normal", "Other"])
    assert m["auc_macro_ovr"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="weighted"))
    assert "sensitivity" not in m
    assert sum(sum(r) for r in m["confusion_matrix"]) == 200


def test_absent_class_is_reported_not_averaged():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["absent_classes"] == ["c"]
    assert np.isnan(m["per_class"]["c"]["auc"])
    assert m["auc_macro_ovr"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx(1.0)


def test_single_logit_sigmoid_and_errors():
    probs = logits_to_probs(np.array([0.0, np.log(3.0)]))
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.25, 0.75]])
    assert np.isnan(macro_auc(np.array([1, 1]), probs))
    with pytest.raises(CovidctError, match="labels must lie"):
        compute_metrics([0, 5], probs)


def test_choose_threshold_hand_computed():
    from sklearn.metrics import f1_score

    from covidct.evaluate.metrics import choose_threshold

    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.55, 0.7, 0.9])
    chosen = choose_threshold(y, p)
    # Candidates 0.325/0.5 (macro-F1 16/21), 0.575 (7/12), 0.65 (0.8), 0.8 (2/3): 0.65 wins.
    assert chosen["value"] == pytest.approx(0.65)
    assert chosen["score"] == pytest.approx(0.8)
    assert chosen["score_at_0.5"] == pytest.approx(16 / 21)
    assert chosen["score"] == pytest.approx(f1_score(y, p >= chosen["value"], average="macro"))
    # Ties keep the threshold closest to 0.5 (a model whose argmax is best keeps it).
    assert choose_threshold([0, 1], [0.2, 0.9])["value"] == 0.5
    with pytest.raises(CovidctError, match="both classes"):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9])
