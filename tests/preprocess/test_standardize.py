"""Intensity / sharpness standardisation and the ``lungs-robust`` stage (covidct.preprocess.standardize)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from covidct.data.io import CTImage
from covidct.data.phantom import make_slice
from covidct.data.windows import window_hu
from covidct.errors import CovidctError
from covidct.preprocess import STAGES, get_stage
from covidct.preprocess.standardize import (
    laplacian_variance,
    lowpass,
    match_sharpness,
    robust_lung_crop,
    standardize_histogram,
    standardize_intensity,
    standardize_percentiles,
)


def test_percentiles_map_hand_computed_values():
    image = np.array([[10, 20, 30, 40, 50, 60, 70]], dtype=np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 0, 0]], dtype=bool)
    out = standardize_percentiles(image, mask, percentiles=(0, 100), targets=(0, 200))
    # Line through (10, 0) and (50, 200): slope 5; 60 -> 250, 70 -> 300 clipped to 255.
    np.testing.assert_allclose(out, [[0, 50, 100, 150, 200, 250, 255]])
    # Percentile 25 of 10..50 is 20 and percentile 75 is 40 (numpy's linear interpolation).
    out = standardize_percentiles(image, mask, percentiles=(25, 75), targets=(100, 140))
    np.testing.assert_allclose(out[0, :5], [80, 100, 120, 140, 160])  # slope 40 / 20 = 2


def test_percentiles_undo_any_display_window():
    """Two linear displays of the same slice (different window) standardise to the same image."""
    rng = np.random.default_rng(0)
    hu = rng.normal(-750, 120, size=(40, 40)).astype(np.float32)
    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    lung_window = window_hu(hu, -600, 1500) * 255
    other_window = window_hu(hu, -500, 1800) * 255  # another hospital's export: no clipping inside lungs
    assert np.abs(lung_window - other_window).mean() > 5
    a, b = standardize_percentiles(lung_window, mask), standardize_percentiles(other_window, mask)
    np.testing.assert_allclose(a[mask], b[mask], atol=1e-3)


def test_percentiles_reject_bad_arguments():
    with pytest.raises(CovidctError, match="percentiles"):
        standardize_percentiles(np.zeros((4, 4)), np.ones((4, 4)), percentiles=(90, 10))
    with pytest.raises(CovidctError, match="does not match"):
        standardize_percentiles(np.zeros((4, 4)), np.ones((3, 4)))
    flat = standardize_percentiles(np.full((4, 4), 7.0), np.ones((4, 4)), targets=(80, 230))
    np.testing.assert_allclose(flat, 80.0)


def test_histogram_is_the_mid_rank_cdf_and_monotone_invariant():
    image = np.array([[1.0, 2.0, 3.0, 4.0, 9.0]], dtype=np.float32)
    mask = np.array([[1, 1, 1, 1, 0]], dtype=bool)
    out = standardize_histogram(image, mask)
    # Mid-rank CDF of 4 values: 1/8, 3/8, 5/8, 7/8; 9 lies above all of them: 1.
    np.testing.assert_allclose(out[0], np.array([1, 3, 5, 7, 8]) / 8 * 255, rtol=1e-6)
    np.testing.assert_allclose(standardize_histogram(np.exp(image), mask), out, rtol=1e-6)


def test_intensity_on_hu_applies_the_lung_window_first():
    rng = np.random.default_rng(1)
    hu = rng.uniform(-1000, 100, size=(16, 16)).astype(np.float32)
    mask = np.ones((16, 16), bool)
    expected = standardize_percentiles(window_hu(hu, -600, 1500) * 255, mask)
    np.testing.assert_allclose(standardize_intensity(hu, mask, unit="HU"), expected, atol=1e-4)
    np.testing.assert_allclose(standardize_intensity(hu, mask, method="none", unit="HU"), window_hu(hu) * 255, atol=1e-4)
    with pytest.raises(CovidctError, match="Did you mean"):
        standardize_intensity(hu, mask, method="percentil")


def test_lowpass_matches_scipy_gaussian_filter():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 255, size=(32, 32)).astype(np.float32)
    expected = ndimage.gaussian_filter(image.astype(np.float64), sigma=1.5, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(lowpass(image, 1.5), expected, atol=0.05)
    np.testing.assert_array_equal(lowpass(image, 0), image)


def test_laplacian_variance_matches_scipy_laplace():
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, size=(24, 24)).astype(np.float32)
    mask = np.zeros((24, 24), bool)
    mask[4:20, 4:20] = True
    expected = ndimage.laplace(image.astype(np.float64), mode="reflect")[6:18, 6:18].var()
    assert laplacian_variance(image, mask, erode_px=2) == pytest.approx(expected, rel=1e-4)
    assert laplacian_variance(lowpass(image, 1.0), mask) < 0.1 * expected


def test_match_sharpness_reaches_the_target_and_leaves_blurry_images():
    rng = np.random.default_rng(4)
    image = rng.uniform(0, 255, size=(48, 48)).astype(np.float32)
    target = 0.05 * laplacian_variance(image, None)
    out, sigma = match_sharpness(image, None, target)
    assert 0 < sigma < 3
    assert 0.8 * target <= laplacian_variance(out, None) <= target
    blurry = lowpass(image, 2.5)
    same, zero = match_sharpness(blurry, None, target)
    assert zero == 0.0
    np.testing.assert_array_equal(same, blurry)


def test_stage_is_registered_and_masks_the_outside():
    assert "lungs-robust" in STAGES
    phantom = make_slice("COV", size=96, seed=0)
    outputs = get_stage("lungs-robust")(CTImage(phantom.image_hu, "HU"), 48)
    assert len(outputs) == 1
    image, mask = outputs[0].image, outputs[0].mask
    assert image.dtype == np.uint8 and image.shape == (48, 48, 1) and mask.shape == (48, 48)
    assert set(np.unique(mask)) == {0, 1} and 0.2 < mask.mean() < 0.9
    assert (image[..., 0][mask == 0] == 0).all()
    assert image[..., 0][mask == 1].mean() > 40


def test_stage_output_does_not_depend_on_the_display_window():
    """The same slice exported with two windows gives nearly one image; the plain lungs stage does not."""
    phantom = make_slice("COV", size=128, seed=3)
    displays = [window_hu(phantom.image_hu, level, width) * 255 for level, width in ((-600, 1500), (-450, 1900))]
    robust = [robust_lung_crop(CTImage(d.astype(np.float32), "display"), 64) for d in displays]
    plain = [get_stage("lungs")(CTImage(d.astype(np.float32), "display"), 64)[0] for d in displays]
    both = (robust[0].mask & robust[1].mask).astype(bool)
    robust_gap = np.abs(robust[0].image[..., 0].astype(float) - robust[1].image[..., 0])[both].mean()
    plain_gap = np.abs(plain[0].image[..., 0].astype(float) - plain[1].image[..., 0])[both].mean()
    assert plain_gap > 8
    assert robust_gap < plain_gap / 3


def test_stage_shrinks_a_blur_difference():
    """A sharp and a blurred export of one slice differ less in sharpness after the stage's low-pass."""
    phantom = make_slice("Normal", size=128, seed=5)
    display = window_hu(phantom.image_hu) * 255
    blurred = ndimage.gaussian_filter(display, 1.2)
    ratio = {}
    for name, sigma_fraction in (("none", 0.0), ("lowpass", 1.5 / 64)):
        sharp_out = robust_lung_crop(CTImage(display.astype(np.float32), "display"), 64, sigma_fraction=sigma_fraction)
        blur_out = robust_lung_crop(CTImage(blurred.astype(np.float32), "display"), 64, sigma_fraction=sigma_fraction)
        ratio[name] = laplacian_variance(sharp_out.image[..., 0], sharp_out.mask) / laplacian_variance(
            blur_out.image[..., 0], blur_out.mask
        )
    assert ratio["none"] > 1.3
    assert ratio["lowpass"] < ratio["none"]
    assert abs(np.log(ratio["lowpass"])) < 0.6 * abs(np.log(ratio["none"]))


def test_stage_rejects_a_bad_size():
    with pytest.raises(CovidctError, match="size"):
        robust_lung_crop(np.zeros((32, 32), np.float32), 4)


def test_histogram_stage_removes_the_mean_lung_brightness():
    """``lungs-hist``: the lung pixels of every slice get about the same grey-level distribution, so a class
    difference in mean lung brightness (here: ground glass in COV) is gone, while ``lungs`` keeps it."""
    means = {"lungs": {}, "lungs-hist": {}}
    for label in ("COV", "Normal"):
        for stage in means:
            values = []
            for seed in range(3):
                phantom = make_slice(label, size=128, seed=seed)
                out = get_stage(stage)(CTImage(phantom.image_hu, "HU"), 64)[0]
                values.append(out.image[..., 0][out.mask.astype(bool)].astype(float).mean())
            means[stage][label] = np.mean(values)
    assert means["lungs"]["COV"] - means["lungs"]["Normal"] > 5
    assert abs(means["lungs-hist"]["COV"] - means["lungs-hist"]["Normal"]) < 3
    # Rank equalisation puts the lung mean near mid-grey (127) whatever the slice (low-pass and rounding aside).
    assert all(115 < value < 140 for value in means["lungs-hist"].values())
