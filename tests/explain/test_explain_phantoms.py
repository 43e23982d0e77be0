"""Grad-CAM on models trained in the test: it must point at the lesion, and expose a shortcut.

Pointing game (Zhang et al. 2016): a hit when the heatmap's peak pixel lies inside the lesion or inside
a lung that holds lesion pixels. Chance level is the area of those lungs, about 0.14 of a 64 px slice.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from covidct.explain.focus import LungFocusWarning, lung_area_fractions, lung_focus_scores, lung_focus_summary
from covidct.explain.gradcam import compute_cams


def pointing_hits(heatmaps, lesions, lung_labels) -> np.ndarray:
    hits = []
    for heatmap, lesion, lungs in zip(heatmaps, lesions, lung_labels):
        row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        lesion_lungs = set(np.unique(lungs[lesion]).tolist()) - {0}
        hits.append(bool(lesion[row, col]) or int(lungs[row, col]) in lesion_lungs)
    return np.array(hits)


def test_lesion_model_learned_the_task(lesion_task):
    logits = np.asarray(lesion_task["model"].predict(lesion_task["images"], verbose=0))
    accuracy = float(np.mean(logits.argmax(axis=1) == lesion_task["labels"]))
    assert accuracy >= 0.85, f"the lesion model should separate COV from Normal phantoms (accuracy {accuracy:.2f})"


@pytest.mark.parametrize("method", ["gradcam", "guided", "gradcam++"])
def test_pointing_game_on_positive_slices(lesion_task, method):
    positive = lesion_task["labels"] == 1
    assert positive.sum() >= 20
    result = compute_cams(lesion_task["model"], lesion_task["images"][positive], class_index=1, method=method)
    hits = pointing_hits(result.heatmaps, lesion_task["lesions"][positive], lesion_task["lung_labels"][positive])
    assert hits.mean() >= 0.8, f"{method}: peak in lesion or its lung in {hits.mean():.0%} of COV slices"
    lungs = lesion_task["lung_labels"][positive]
    scores = lung_focus_scores(result.heatmaps, lungs)
    areas = lung_area_fractions(lungs)
    # Well above chance (a uniform heatmap scores the area fraction, ~0.14) and no warning.
    assert np.median(scores) >= 2.5 * np.median(areas)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LungFocusWarning)
        summary = lung_focus_summary(scores, ["COV"] * len(scores), area_fractions=areas)
    assert summary["warning"] is False and summary["per_class"]["COV"]["median"] > summary["per_class"]["COV"]["threshold"]


def test_shortcut_model_gets_low_lung_focus_and_a_warning(shortcut_task):
    model, images, labels = shortcut_task["model"], shortcut_task["images"], shortcut_task["labels"]
    accuracy = float(np.mean(np.asarray(model.predict(images, verbose=0)).argmax(axis=1) == labels))
    assert accuracy >= 0.95, f"the marker should be learned (accuracy {accuracy:.2f})"
    marked = labels == 1
    result = compute_cams(model, images[marked], class_index=1)
    # The peak sits on (or next to) the corner marker, far from the lungs.
    peaks = np.array([np.unravel_index(np.argmax(h), h.shape) for h in result.heatmaps])
    assert np.mean((peaks[:, 0] < 12) & (peaks[:, 1] < 12)) >= 0.8
    lungs = shortcut_task["lung_labels"][marked]
    scores = lung_focus_scores(result.heatmaps, lungs)
    areas = lung_area_fractions(lungs)
    assert np.median(scores) < np.median(areas)  # below what a uniform heatmap would score
    with pytest.warns(LungFocusWarning, match="outside the lungs"):
        summary = lung_focus_summary(scores, ["marked"] * len(scores), area_fractions=areas)
    assert summary["warning"] is True and summary["low_focus_classes"] == ["marked"]
