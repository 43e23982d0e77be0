"""Interpretable lesion features of one slice: burden, density, distribution and count of lesions.

Inputs are a slice in HU (estimated for display exports by ``covidct.preprocess.harmonize``), its lung
labels (0 background, 1 right lung on the image left, 2 left lung on the image right; the project's
``lung_mask`` convention) and a binary lesion mask (the infection segmenter's output, or a phantom's
true lesions). Lesion pixels outside the lungs are ignored. Features (all shares are in [0, 1]):

- ``lung_fraction``: lung area / slice area (for choosing lung-containing slices).
- ``burden``: lesion area / lung area.
- ``burden_right``, ``burden_left``: the same per lung; ``burden_min_side``: the smaller of the two (high
  only when both lungs are affected: COVID-19 is typically bilateral, lobar pneumonia often unilateral).
- ``ggo_share``, ``consolidation_share``: share of the lesion area below / at or above
  ``CONSOLIDATION_HU`` (-300 HU, the usual border between ground glass and consolidation); NaN without
  lesion or without HU.
- ``lesion_hu``: mean HU of the lesion pixels (NaN without lesion or HU).
- ``peripheral_share``: share of the lesion area in the outer third of each lung by depth (distance to the
  lung border / the lung's largest such distance < 1/3); COVID-19 opacities are typically subpleural.
- ``posterior_share``: share of the lesion area in the posterior (lower-row) half of each lung's box.
- ``n_lesions``: connected lesion components of at least ``MIN_LESION_FRACTION`` of the lung area.
- ``dense_share``: share of lung pixels brighter than aerated lung by more than 0.35 of the aerated-lung →
  soft-tissue range (no segmenter: the nothing-fitted baseline of the classical masks).

Lesion-free slices get 0 for burden, distribution shares and count, and NaN for the density features.
"""

from __future__ import annotations

import cv2
import numpy as np

from covidct.errors import CovidctError

#: HU at or above which a lesion pixel counts as consolidation rather than ground glass.
CONSOLIDATION_HU = -300.0
#: Relative depth (distance to the lung border / the lung's maximum) under which a pixel is peripheral.
PERIPHERAL_DEPTH = 1.0 / 3.0
#: Components smaller than this share of the lung area are not counted as lesions.
MIN_LESION_FRACTION = 0.002
#: Dense-share baseline: fraction of the aerated-lung → soft-tissue range above aerated lung.
DENSE_RANGE_FRACTION = 0.35
AERATED_LUNG_PERCENTILE = 10.0

FEATURES = (
    "lung_fraction",
    "burden",
    "burden_right",
    "burden_left",
    "burden_min_side",
    "ggo_share",
    "consolidation_share",
    "lesion_hu",
    "peripheral_share",
    "posterior_share",
    "n_lesions",
    "dense_share",
)


def _relative_depth(lung: np.ndarray) -> np.ndarray:
    """Distance to the lung's border divided by its maximum (0 outside, ~0 at the border, 1 deepest)."""
    distance = cv2.distanceTransform(np.pad(lung, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    peak = float(distance.max())
    return distance / peak if peak > 0 else distance


def dense_share(hu: np.ndarray, lungs: np.ndarray, tissue_hu: float = 40.0) -> float:
    """Share of lung pixels denser than aerated lung by ``DENSE_RANGE_FRACTION`` of the way to soft tissue.

    Aerated lung is the lung's ``AERATED_LUNG_PERCENTILE``-th percentile (HU), soft tissue ``tissue_hu``.
    """
    values = np.asarray(hu, dtype=np.float32)[np.asarray(lungs).astype(bool)]
    if values.size == 0:
        return 0.0
    aerated = float(np.percentile(values, AERATED_LUNG_PERCENTILE))
    cut = aerated + DENSE_RANGE_FRACTION * (tissue_hu - aerated)
    return float(np.mean(values > cut))


def slice_features(hu: np.ndarray | None, lung_labels: np.ndarray, lesion: np.ndarray) -> dict:
    """The ``FEATURES`` of one slice (see the module docstring).

    Args:
        hu: (H, W) Hounsfield units, or None when unknown (density features are then NaN).
        lung_labels: (H, W) 0 background, 1 right lung (image left), 2 left lung (image right).
        lesion: (H, W) binary lesion mask.

    Returns:
        dict feature name -> float.

    Raises:
        CovidctError: shapes that differ.
    """
    labels = np.asarray(lung_labels)
    lesion = np.asarray(lesion).astype(bool)
    if labels.shape != lesion.shape or (hu is not None and np.shape(hu) != labels.shape):
        raise CovidctError(
            f"slice_features: lung labels {labels.shape}, lesion {lesion.shape} and HU "
            f"{None if hu is None else np.shape(hu)} must have one shape."
        )
    lungs = labels > 0
    lung_area = int(lungs.sum())
    nan = float("nan")
    out = dict.fromkeys(FEATURES, 0.0)
    out["lung_fraction"] = lung_area / labels.size
    out.update(ggo_share=nan, consolidation_share=nan, lesion_hu=nan)
    out["dense_share"] = dense_share(hu, lungs) if hu is not None else nan
    if lung_area == 0:
        out["dense_share"] = nan if hu is None else 0.0
        return out
    inside = lesion & lungs
    lesion_area = int(inside.sum())
    out["burden"] = lesion_area / lung_area
    sides = []
    for key, value in (("burden_right", 1), ("burden_left", 2)):
        side = labels == value
        out[key] = float((inside & side).sum() / side.sum()) if side.any() else 0.0
        sides.append(out[key])
    out["burden_min_side"] = float(min(sides))
    if lesion_area == 0:
        return out
    if hu is not None:
        values = np.asarray(hu, dtype=np.float32)[inside]
        out["consolidation_share"] = float(np.mean(values >= CONSOLIDATION_HU))
        out["ggo_share"] = 1.0 - out["consolidation_share"]
        out["lesion_hu"] = float(values.mean())
    peripheral = posterior = 0
    for value in (1, 2):
        lung = labels == value
        if not lung.any():
            continue
        here = inside & lung
        peripheral += int((here & (_relative_depth(lung) < PERIPHERAL_DEPTH)).sum())
        rows = np.flatnonzero(lung.any(axis=1))
        middle = (rows[0] + rows[-1] + 1) / 2.0
        posterior += int(here[int(np.ceil(middle)):].sum())
    out["peripheral_share"] = peripheral / lesion_area
    out["posterior_share"] = posterior / lesion_area
    count, _, stats, _ = cv2.connectedComponentsWithStats(inside.astype(np.uint8), connectivity=8)
    out["n_lesions"] = float(np.sum(stats[1:, cv2.CC_STAT_AREA] >= MIN_LESION_FRACTION * lung_area))
    return out


def patient_features(rows) -> dict:
    """Per-patient summary of slice features: area-weighted burden and mean of the slice features.

    Args:
        rows: a pandas DataFrame of ``slice_features`` rows of one patient (with ``lung_fraction``).

    Returns:
        dict with ``burden`` (lesion area / lung area over all slices), ``mean_<feature>`` and ``n_slices``.
    """
    lung = rows["lung_fraction"].to_numpy(dtype=float)
    burden = rows["burden"].to_numpy(dtype=float)
    out = {"n_slices": int(len(rows)),
           "burden": float((burden * lung).sum() / lung.sum()) if lung.sum() > 0 else 0.0}
    for name in FEATURES:
        out[f"mean_{name}"] = float(np.nanmean(rows[name].to_numpy(dtype=float))) if len(rows) else float("nan")
    return out


__all__ = ["CONSOLIDATION_HU", "FEATURES", "PERIPHERAL_DEPTH", "dense_share", "patient_features", "slice_features"]
