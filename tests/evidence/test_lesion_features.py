"""Lesion features on phantoms with known lesion masks and on hand-placed lesions."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.data.phantom import make_slice
from covidct.errors import CovidctError
from covidct.evidence.features import CONSOLIDATION_HU, dense_share, slice_features
from covidct.preprocess.lungs import lung_mask


def phantom_labels(phantom) -> np.ndarray:
    labels = np.zeros(phantom.body.shape, np.uint8)
    labels[phantom.right_lung] = 1
    labels[phantom.left_lung] = 2
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_burden_with_the_classical_lung_mask_matches_the_true_lesion_share(seed):
    phantom = make_slice("COV", size=192, seed=seed)
    labels = phantom_labels(phantom)
    true_share = phantom.lesion.sum() / (labels > 0).sum()
    assert true_share > 0.01
    exact = slice_features(phantom.image_hu, labels, phantom.lesion)
    assert exact["burden"] == pytest.approx(true_share, rel=1e-9)
    classical = slice_features(phantom.image_hu, lung_mask(phantom.image_hu, warn=False), phantom.lesion)
    assert classical["burden"] == pytest.approx(true_share, rel=0.15)


def test_bilateral_and_unilateral_phantoms_differ_in_the_less_affected_lung():
    cov = make_slice("COV", size=192, seed=4)
    cap = make_slice("OtherPneumonia", size=192, seed=4)
    cov_features = slice_features(cov.image_hu, phantom_labels(cov), cov.lesion)
    cap_features = slice_features(cap.image_hu, phantom_labels(cap), cap.lesion)
    assert cov_features["burden_min_side"] > 0  # every COV phantom slice has lesions in both lungs
    assert cap_features["burden_min_side"] == 0.0 and cap_features["burden"] > 0
    # COV lesions are ground glass (-500..-300 HU), CAP consolidation (-100..+40 HU, air bronchograms aside).
    assert cov_features["ggo_share"] > 0.9
    assert cap_features["consolidation_share"] > 0.7


def two_lungs(size: int = 120) -> np.ndarray:
    """Two rectangular lungs: right lung (label 1) on the image left, left lung (label 2) on the image right."""
    labels = np.zeros((size, size), np.uint8)
    labels[20:100, 10:55] = 1
    labels[20:100, 65:110] = 2
    return labels


def test_hand_placed_peripheral_lesion_in_the_right_lung():
    labels = two_lungs()
    lesion = np.zeros(labels.shape, bool)
    lesion[50:60, 11:15] = True  # at the lateral border of the right lung (image left)
    out = slice_features(np.full(labels.shape, -500.0), labels, lesion)
    assert out["burden_right"] == pytest.approx(40 / (80 * 45))
    assert out["burden_left"] == 0.0 and out["burden_min_side"] == 0.0
    assert out["burden"] == pytest.approx(40 / (2 * 80 * 45))
    assert out["peripheral_share"] == 1.0
    assert out["n_lesions"] == 1.0


def test_hand_placed_central_and_posterior_lesions():
    labels = two_lungs()
    lesion = np.zeros(labels.shape, bool)
    lesion[54:60, 85:91] = True  # centre of the left lung (rows 20..99, cols 65..109), above its middle row 60
    lesion[85:95, 30:36] = True  # posterior (bottom) part of the right lung, 8+ px from its border
    out = slice_features(None, labels, lesion)
    assert out["n_lesions"] == 2.0
    assert out["burden_left"] == pytest.approx(36 / (80 * 45))
    assert out["burden_right"] == pytest.approx(60 / (80 * 45))
    # The central square lies deeper than a third of the lung's depth; the posterior one (rows 85..94 of a lung
    # ending at row 99, max depth 22.5 px) is within 1/3 of the border only for its lowest rows.
    depth_limit_rows = [r for r in range(85, 95) if (99 - r + 1) < 22.5 / 3]
    assert out["peripheral_share"] == pytest.approx(len(depth_limit_rows) * 6 / 96, abs=0.07)
    assert out["posterior_share"] == pytest.approx(60 / 96)
    assert np.isnan(out["ggo_share"]) and np.isnan(out["dense_share"])  # no HU given


def test_density_split_at_the_consolidation_threshold():
    labels = two_lungs()
    hu = np.full(labels.shape, -860.0)
    lesion = np.zeros(labels.shape, bool)
    lesion[30:40, 20:30] = True
    hu[30:40, 20:25] = -500.0  # ground glass
    hu[30:40, 25:30] = CONSOLIDATION_HU + 250.0  # consolidation
    out = slice_features(hu, labels, lesion)
    assert out["ggo_share"] == pytest.approx(0.5)
    assert out["consolidation_share"] == pytest.approx(0.5)
    assert out["lesion_hu"] == pytest.approx((-500.0 - 50.0) / 2)


def test_lesion_free_slice_and_shape_check():
    labels = two_lungs()
    out = slice_features(np.full(labels.shape, -860.0), labels, np.zeros(labels.shape, bool))
    assert out["burden"] == 0.0 and out["n_lesions"] == 0.0 and np.isnan(out["lesion_hu"])
    with pytest.raises(CovidctError, match="must have one shape"):
        slice_features(None, labels, np.zeros((3, 3), bool))


def test_dense_share_counts_pixels_above_the_aerated_to_tissue_cut():
    lungs = np.ones((10, 10), bool)
    hu = np.full((10, 10), -860.0)
    hu[:2] = -200.0  # 20% dense: -860 + 0.35 * 900 = -545 is the cut
    hu[2, :5] = -600.0  # below the cut
    assert dense_share(hu, lungs) == pytest.approx(0.2)
