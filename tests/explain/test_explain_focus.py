"""Lung-focus score, its chance level and the shortcut warning, on hand-made heatmaps and masks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.explain.focus import (
    LUNG_FOCUS_FALLBACK_THRESHOLD,
    LUNG_FOCUS_MARGIN,
    LungFocusWarning,
    lung_area_fractions,
    lung_focus_score,
    lung_focus_scores,
    lung_focus_summary,
    lung_focus_threshold,
)


def test_score_is_the_mass_fraction_inside_the_mask():
    heatmap = np.array([[1.0, 0.0, 0.5], [0.0, 2.0, 0.5]])
    mask = np.array([[1, 0, 0], [0, 2, 0]], np.uint8)  # lung labels 1 and 2 both count
    # inside: 1 + 2 = 3; total: 4 -> 0.75
    assert lung_focus_score(heatmap, mask) == pytest.approx(0.75)
    assert lung_focus_score(heatmap, mask[..., None]) == pytest.approx(0.75)
    assert np.isnan(lung_focus_score(np.zeros((2, 3)), mask))


def test_uniform_heatmap_scores_the_area_fraction():
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 5:20] = 1
    area = 20 * 15 / (40 * 50)
    assert lung_focus_score(np.full((40, 50), 0.3), mask) == pytest.approx(area)
    assert lung_area_fractions(mask)[0] == pytest.approx(area)


def test_mask_is_resized_to_the_heatmap():
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 1  # top half
    heatmap = np.zeros((4, 4))
    heatmap[:2] = 1.0
    heatmap[2:] = 3.0
    assert lung_focus_score(heatmap, mask) == pytest.approx(2 / 8)


def test_threshold_is_relative_to_chance():
    assert lung_focus_threshold(0.2) == pytest.approx(0.2 + LUNG_FOCUS_MARGIN * 0.8)
    assert lung_focus_threshold(0.6, margin=0.5) == pytest.approx(0.8)
    assert lung_focus_threshold(None) == LUNG_FOCUS_FALLBACK_THRESHOLD
    with pytest.raises(CovidctError):
        lung_focus_threshold(0.2, margin=1.5)


def test_summary_per_class_and_warning():
    scores = [0.9, 0.8, 0.7, np.nan, 0.1, 0.2, 0.05]
    labels = ["COV", "COV", "COV", "COV", "Normal", "Normal", "Normal"]
    areas = [0.2] * 7
    with pytest.warns(LungFocusWarning, match="Normal: median 0.10 < 0.40"):
        summary = lung_focus_summary(scores, labels, area_fractions=areas)
    cov, normal = summary["per_class"]["COV"], summary["per_class"]["Normal"]
    assert cov["n"] == 3 and cov["n_empty"] == 1 and cov["median"] == pytest.approx(0.8)
    assert cov["q25"] == pytest.approx(0.75) and cov["mean"] == pytest.approx(0.8)
    assert cov["threshold"] == pytest.approx(0.4) and cov["low_focus"] is False
    assert normal["median"] == pytest.approx(0.1) and normal["low_focus"] is True
    assert summary["warning"] is True and summary["low_focus_classes"] == ["Normal"]
    assert summary["overall"]["n"] == 6 and summary["overall"]["median"] == pytest.approx((0.2 + 0.7) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = lung_focus_summary(scores, labels, area_fractions=areas, warn=False)
    assert quiet["warning"] is True  # the flag is set even when the warning is silenced


def test_summary_without_areas_uses_the_fallback():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = lung_focus_summary([0.55, 0.6], ["a", "a"])
    assert summary["per_class"]["a"]["threshold"] == LUNG_FOCUS_FALLBACK_THRESHOLD
    assert "unknown" in summary["rule"]


def test_bad_inputs():
    with pytest.raises(CovidctError, match="non-negative"):
        lung_focus_score(np.array([[-1.0, 1.0]]), np.ones((1, 2)))
    with pytest.raises(CovidctError, match="2 heatmaps but 1"):
        lung_focus_scores(np.ones((2, 3, 3)), np.ones((1, 3, 3)))
    with pytest.raises(CovidctError, match="3 scores but 2 labels"):
        lung_focus_summary([0.1, 0.2, 0.3], ["a", "b"])
