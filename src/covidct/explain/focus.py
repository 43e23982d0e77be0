"""Lung-focus score: how much of a Grad-CAM heatmap lies inside the lungs.

A classifier that learned COVID-19 patterns should look at the lungs; one that learned a shortcut
(a scanner label, a burned-in marker, the table, the body outline) looks elsewhere. The score of one
image is the fraction of heatmap mass inside its lung mask::

    score = sum(heatmap * lung) / sum(heatmap)            (in [0, 1]; NaN for an all-zero heatmap)

**Threshold (why it is relative to the lung area).** A heatmap that ignores anatomy, e.g. a uniform
one, scores exactly the lung *area fraction* ``a`` of the image (about 0.10-0.30 for a whole axial
slice, 0.5-0.8 after a crop to the lungs). So a fixed cut-off would mean different things for
different preprocessing stages. The warning fires when the median score of a class is below::

    threshold = a + LUNG_FOCUS_MARGIN * (1 - a)            (a = median lung area fraction)

i.e. when the model has not gone at least a quarter of the way from chance (``a``) to perfect focus
(1). With ``a = 0.15`` the threshold is 0.36; with ``a = 0.6`` it is 0.70. A quarter leaves room for
the blur of Grad-CAM: its maps come from a coarse layer (7x7 at 224 px for EfficientNet) and spill
over the lung border even when the evidence is inside. On phantoms at 64 px (lung area 0.14), a small
CNN trained on lesions scores a median of about 0.5, a model trained on a corner marker about 0.0
(``tests/explain/test_explain_phantoms.py``, ``benchmarks/bench_gradcam.py``). When area fractions are unknown the
threshold is ``LUNG_FOCUS_FALLBACK_THRESHOLD`` (0.5: most of the attention outside the lungs).
"""

from __future__ import annotations

import warnings

import numpy as np

from covidct.errors import CovidctError
from covidct.preprocess.body import resize_mask

LUNG_FOCUS_MARGIN = 0.25
LUNG_FOCUS_FALLBACK_THRESHOLD = 0.5


class LungFocusWarning(UserWarning):
    """The model's Grad-CAM attention lies mostly outside the lungs (a possible shortcut)."""


def _mask_like(mask, shape: tuple) -> np.ndarray:
    """Binary mask (any label > 0) resized to ``shape`` (H, W) by ``covidct.preprocess.body.resize_mask``."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise CovidctError(f"A lung mask must be 2-D (H, W), got shape {mask.shape}.")
    binary = (mask > 0).astype(np.uint8)
    if binary.shape != tuple(shape):
        binary = resize_mask(binary, shape)
    return binary.astype(bool)


def lung_focus_score(heatmap: np.ndarray, lung_mask: np.ndarray) -> float:
    """Fraction of the heatmap's mass inside the lung mask.

    Args:
        heatmap: float (H, W), non-negative (a ``compute_heatmaps`` output).
        lung_mask: (H, W) or (H, W, 1) mask or lung labels (any value > 0 is lung); resized (area/linear,
            cut at 0.5) when its size differs from the heatmap's.

    Returns:
        A float in [0, 1]; NaN when the heatmap is all zeros (no attention to score).
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2:
        raise CovidctError(f"lung_focus_score takes one (H, W) heatmap, got shape {heatmap.shape}.")
    if np.any(heatmap < 0) or not np.all(np.isfinite(heatmap)):
        raise CovidctError("Heatmap values must be finite and non-negative (use compute_heatmaps' output).")
    total = heatmap.sum()
    if total <= 0:
        return float("nan")
    inside = heatmap[_mask_like(lung_mask, heatmap.shape)].sum()
    return float(inside / total)


def lung_focus_scores(heatmaps: np.ndarray, lung_masks: np.ndarray) -> np.ndarray:
    """``lung_focus_score`` of each (heatmap, mask) pair.

    Args:
        heatmaps: float (N, H, W).
        lung_masks: (N, H, W) masks or lung labels.

    Returns:
        float64 (N,) scores (NaN where a heatmap is all zeros).
    """
    if len(heatmaps) != len(lung_masks):
        raise CovidctError(f"Got {len(heatmaps)} heatmaps but {len(lung_masks)} lung masks.")
    return np.array([lung_focus_score(h, m) for h, m in zip(heatmaps, lung_masks)], dtype=np.float64)


def lung_area_fractions(lung_masks: np.ndarray) -> np.ndarray:
    """Fraction of each image covered by its lung mask: the score a uniform heatmap would get.

    Args:
        lung_masks: (N, H, W) or one (H, W) mask (any value > 0 is lung).

    Returns:
        float64 (N,) fractions (one value for one mask).
    """
    masks = np.asarray(lung_masks)
    if masks.ndim == 2:
        return np.array([float((masks > 0).mean())])
    return (masks > 0).reshape(len(masks), -1).mean(axis=1).astype(np.float64)


def lung_focus_threshold(area_fraction: float | None, margin: float = LUNG_FOCUS_MARGIN) -> float:
    """Median score below which the warning fires: ``a + margin * (1 - a)``.

    Args:
        area_fraction: median lung area fraction ``a`` (chance level); None for the fallback 0.5.
        margin: required share of the way from chance to perfect focus, in [0, 1].

    Returns:
        The threshold in [0, 1].
    """
    if not 0.0 <= float(margin) <= 1.0:
        raise CovidctError(f"margin must be in [0, 1], got {margin!r}.")
    if area_fraction is None or not np.isfinite(area_fraction):
        return LUNG_FOCUS_FALLBACK_THRESHOLD
    area = float(np.clip(area_fraction, 0.0, 1.0))
    return area + float(margin) * (1.0 - area)


def lung_focus_summary(
    scores,
    labels,
    area_fractions=None,
    margin: float = LUNG_FOCUS_MARGIN,
    warn: bool = True,
) -> dict:
    """Per-class distribution of lung-focus scores, with a shortcut warning.

    Args:
        scores: (N,) lung-focus scores (NaN entries, from all-zero heatmaps, are left out and counted).
        labels: (N,) class of each image (the true class, or the class the heatmap explains).
        area_fractions: optional (N,) lung area fractions (``lung_area_fractions``), used for the
            relative threshold; without them the fallback threshold 0.5 applies.
        margin: see ``lung_focus_threshold``.
        warn: emit a ``LungFocusWarning`` when some class's median is below its threshold.

    Returns:
        ``{"per_class": {label: {"n", "n_empty", "median", "mean", "q25", "q75", "median_area_fraction",
        "threshold", "low_focus"}}, "overall": {...same keys...}, "warning": bool, "low_focus_classes":
        [...], "rule": str}``.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray([str(label) for label in np.asarray(labels).ravel()])
    if len(scores) != len(labels):
        raise CovidctError(f"Got {len(scores)} scores but {len(labels)} labels.")
    areas = None if area_fractions is None else np.asarray(area_fractions, dtype=np.float64).ravel()
    if areas is not None and len(areas) != len(scores):
        raise CovidctError(f"Got {len(scores)} scores but {len(areas)} area fractions.")

    def describe(select: np.ndarray) -> dict:
        values = scores[select]
        valid = values[np.isfinite(values)]
        area = float(np.median(areas[select])) if areas is not None and select.any() else None
        threshold = lung_focus_threshold(area, margin)
        if valid.size == 0:
            stats = {"median": float("nan"), "mean": float("nan"), "q25": float("nan"), "q75": float("nan")}
        else:
            q25, median, q75 = np.percentile(valid, [25, 50, 75])
            stats = {"median": float(median), "mean": float(valid.mean()), "q25": float(q25), "q75": float(q75)}
        return {
            "n": int(valid.size),
            "n_empty": int(values.size - valid.size),
            **stats,
            "median_area_fraction": area,
            "threshold": float(threshold),
            "low_focus": bool(valid.size > 0 and stats["median"] < threshold),
        }

    per_class = {label: describe(labels == label) for label in sorted(set(labels))}
    overall = describe(np.ones(len(scores), dtype=bool))
    low = [label for label, stats in per_class.items() if stats["low_focus"]]
    rule = (
        f"warn when a class's median score < a + {margin:g} * (1 - a), a = median lung area fraction"
        if areas is not None
        else f"warn when a class's median score < {LUNG_FOCUS_FALLBACK_THRESHOLD:g} (lung areas unknown)"
    )
    if low and warn:
        details = "; ".join(
            f"{label}: median {per_class[label]['median']:.2f} < {per_class[label]['threshold']:.2f}" for label in low
        )
        warnings.warn(
            f"Grad-CAM attention lies mostly outside the lungs ({details}). The model may be using a "
            "shortcut (markers, table, body outline, image borders); inspect the contact sheet.",
            LungFocusWarning,
            stacklevel=2,
        )
    return {"per_class": per_class, "overall": overall, "warning": bool(low), "low_focus_classes": low, "rule": rule}
