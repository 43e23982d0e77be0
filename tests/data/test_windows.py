"""HU windows against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.data.io import CTImage
from covidct.data.windows import WINDOWS, hu_to_volume_uint8, to_display, window_hu, window_stack
from covidct.errors import CovidctError


def test_lung_window_hand_values():
    # Lung window: level -600, width 1500 -> [-1350, 150].
    hu = np.array([-2000, -1350, -600, -225, 150, 1000], np.float32)
    np.testing.assert_allclose(window_hu(hu, -600, 1500), [0, 0, 0.5, 0.75, 1, 1], atol=1e-6)


def test_mediastinum_and_keras_io_bounds():
    np.testing.assert_allclose(window_hu(np.array([-160.0, 40.0, 140.0, 240.0]), *WINDOWS["mediastinum"]),
                               [0, 0.5, 0.75, 1], atol=1e-6)
    np.testing.assert_allclose(window_hu(np.array([-1000.0, -300.0, 400.0, 50.0]), *WINDOWS["keras_io"]),
                               [0, 0.5, 1, 0.75], atol=1e-6)


def test_window_stack_channels_last():
    stack = window_stack(np.array([[-600.0, 40.0]]))
    assert stack.shape == (1, 2, 3) and stack.dtype == np.float32
    np.testing.assert_allclose(stack[0, 0], [0.5, 0.0, 0.4 / 1.4], atol=1e-6)
    np.testing.assert_allclose(stack[0, 1], [1390 / 1500, 0.5, 1040 / 1400], atol=1e-6)


def test_to_display_hu_and_display_units():
    hu = CTImage(np.array([[-1350.0, -600.0, 150.0]], np.float32), "HU")
    np.testing.assert_array_equal(to_display(hu), [[0, 128, 255]])  # 127.5 rounds half to even -> 128
    shown = CTImage(np.array([[-3.0, 99.6, 300.0]], np.float32), "display")
    np.testing.assert_array_equal(to_display(shown), [[0, 100, 255]])
    np.testing.assert_array_equal(hu_to_volume_uint8(np.array([-1000.0, 400.0, -300.0])), [0, 255, 128])


def test_bad_window_names_and_widths():
    with pytest.raises(CovidctError, match="Did you mean: lung"):
        to_display(CTImage(np.zeros((2, 2), np.float32), "HU"), window="lunge")
    with pytest.raises(CovidctError, match="width must be positive"):
        window_hu(np.zeros(2), 0, 0)
