"""Applying a segmenter inside the lungs: probabilities pasted back onto the slice, features per slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidct.data.phantom import make_slice
from covidct.data.windows import window_hu
from covidct.evidence.extract import Segmenter, analyse_slices


def constant_segmenter(logit: float, crop: str = "lungs"):
    """A 1x1-convolution 'segmenter' whose logit is ``logit`` everywhere (zero kernel, constant bias)."""
    import keras

    model = keras.Sequential([
        keras.Input((32, 32, 1)),
        keras.layers.Conv2D(1, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(logit)),
    ])
    return Segmenter(model, Path("constant.keras"), crop, masked=True, size=32)


@pytest.fixture(scope="module")
def display_slice():
    phantom = make_slice("COV", size=128, seed=1)
    return np.rint(window_hu(phantom.image_hu, -600.0, 1500.0) * 255.0).astype(np.float32)


@pytest.mark.parametrize("crop", ["lungs", "none"])
def test_everywhere_positive_segmenter_marks_the_whole_lung(display_slice, crop):
    rows = analyse_slices([constant_segmenter(8.0, crop)], [display_slice])
    assert len(rows) == 1
    assert rows[0]["burden"] == pytest.approx(1.0, abs=0.01)  # the crop holds the lungs plus a margin
    assert rows[0]["burden_min_side"] == pytest.approx(1.0, abs=0.01)
    assert rows[0]["window_anchor"] == "air"  # full field of view: the window comes from the outside air
    assert rows[0]["window_level"] == pytest.approx(-600.0, abs=15.0)


def test_everywhere_negative_segmenter_finds_no_lesion(display_slice):
    row = analyse_slices([constant_segmenter(-8.0)], [display_slice])[0]
    assert row["burden"] == 0.0 and row["n_lesions"] == 0.0 and np.isnan(row["ggo_share"])
    assert row["lung_fraction"] > 0.1


def test_two_segmenters_are_averaged(display_slice):
    # (sigmoid(8) + sigmoid(-7)) / 2 = 0.50029 is a lesion at the 0.5 cut; (sigmoid(8) + sigmoid(-9)) / 2 = 0.49989 is not.
    row = analyse_slices([constant_segmenter(8.0), constant_segmenter(-7.0)], [display_slice])[0]
    assert row["burden"] == pytest.approx(1.0, abs=0.01)
    row = analyse_slices([constant_segmenter(8.0), constant_segmenter(-9.0)], [display_slice])[0]
    assert row["burden"] == 0.0
