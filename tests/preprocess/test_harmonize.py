"""Window estimation from air and soft-tissue peaks, on hand-made slices whose window is known."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.data.windows import window_hu
from covidct.errors import CovidctError
from covidct.preprocess import STAGES
from covidct.preprocess.harmonize import (
    LUNG_PARENCHYMA_HU,
    estimate_window,
    harmonize,
    histogram_peak,
    window_from_anchors,
)


def chest_hu(size: int = 192, seed: int = 0, fat: bool = False) -> np.ndarray:
    """Air (-1000) around a soft-tissue ellipse (+40) holding two lungs (-860), 5 HU noise."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size), -1000.0)
    body = ((rows - 0.5) / 0.36) ** 2 + ((cols - 0.5) / 0.45) ** 2 <= 1
    image[body] = 40.0
    if fat:  # a thick subcutaneous fat ring (-100 HU) that outnumbers muscle
        inner = ((rows - 0.5) / 0.26) ** 2 + ((cols - 0.5) / 0.35) ** 2 <= 1
        image[body & ~inner] = -100.0
    for centre in (0.33, 0.67):
        image[((rows - 0.5) / 0.2) ** 2 + ((cols - centre) / 0.12) ** 2 <= 1] = LUNG_PARENCHYMA_HU
    return image + np.random.default_rng(seed).normal(0.0, 5.0, image.shape)


def render(image_hu: np.ndarray, level: float, width: float) -> np.ndarray:
    return np.rint(window_hu(image_hu, level, width) * 255.0).astype(np.float32)


def test_window_from_anchors_recovers_the_lung_window_by_hand():
    # Lung window -600/1500: -1000 HU shows as 350/1500*255 = 59.5, +40 HU as 1390/1500*255 = 236.3.
    level, width = window_from_anchors(59.5, 1390 / 1500 * 255)
    assert level == pytest.approx(-600.0, abs=1e-6)
    assert width == pytest.approx(1500.0, abs=1e-6)
    with pytest.raises(CovidctError, match="at least 10 grey levels brighter"):
        window_from_anchors(100.0, 105.0)


def test_histogram_peak_picks_the_requested_peak():
    values = np.concatenate([np.full(1000, 50.0), np.full(400, 120.0), np.full(100, 200.0)])
    assert histogram_peak(values, "highest") == pytest.approx(50.5, abs=0.01)
    assert histogram_peak(values, "darkest") == pytest.approx(50.5, abs=0.01)
    # 200 holds 10% of the tallest peak, under the 25% floor: the brightest *counted* peak is 120.
    assert histogram_peak(values, "brightest") == pytest.approx(120.5, abs=0.01)
    assert np.isnan(histogram_peak(np.array([])))


@pytest.mark.parametrize("window", [(-600.0, 1500.0), (-450.0, 1700.0), (-550.0, 1300.0)])
def test_estimate_recovers_known_windows_from_outside_air(window):
    estimate = estimate_window(render(chest_hu(), *window))
    assert estimate.ok and estimate.dark_anchor == "air"
    assert estimate.level == pytest.approx(window[0], abs=10.0)
    assert estimate.width == pytest.approx(window[1], abs=15.0)


def test_fat_ring_is_not_taken_for_soft_tissue():
    estimate = estimate_window(render(chest_hu(fat=True), -600.0, 1500.0))
    assert estimate.ok
    assert estimate.tissue_grey == pytest.approx(1390 / 1500 * 255, abs=1.5)  # +40 HU, not -100 HU (212.5)


def test_tight_crop_without_outside_air_falls_back_to_aerated_lung():
    crop = render(chest_hu(), -600.0, 1500.0)[56:136, 34:158]  # inside the body: no outside air
    estimate = estimate_window(crop)
    assert estimate.ok and estimate.dark_anchor == "lung"
    assert estimate.level == pytest.approx(-600.0, abs=15.0)
    assert estimate.width == pytest.approx(1500.0, abs=25.0)


def test_a_window_that_clips_soft_tissue_is_refused_and_left_unchanged():
    grey = render(chest_hu(), -500.0, 1000.0)  # top at 0 HU: +40 HU soft tissue is white
    estimate = estimate_window(grey)
    assert not estimate.ok and "clipped" in estimate.reason
    out, used = harmonize(grey)
    assert not used.ok
    np.testing.assert_array_equal(out, grey)


def test_harmonize_brings_two_windows_to_one_lung_window_appearance():
    hu = chest_hu()
    target = window_hu(hu, -600.0, 1500.0) * 255.0
    for window in ((-450.0, 1700.0), (-550.0, 1300.0)):
        out, estimate = harmonize(render(hu, *window))
        assert estimate.ok
        assert np.abs(out - target).mean() < 3.0  # grey levels; the inputs differ from the target by > 10


def test_hu_input_is_windowed_directly():
    hu = chest_hu()
    out, estimate = harmonize(hu)
    assert estimate.dark_anchor == "hu"
    np.testing.assert_allclose(out, window_hu(hu, -600.0, 1500.0) * 255.0)


def test_estimate_rejects_unknown_anchor():
    with pytest.raises(CovidctError, match="dark_anchor must be"):
        estimate_window(np.zeros((8, 8)), dark_anchor="bone")


def test_lungs_harmonized_stage_is_registered_and_crops():
    outputs = STAGES["lungs-harmonized"](render(chest_hu(), -450.0, 1700.0), 64)
    assert len(outputs) == 1
    assert outputs[0].image.shape == (64, 64, 1) and outputs[0].image.dtype == np.uint8
    assert outputs[0].mask.any()
