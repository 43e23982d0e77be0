"""Hounsfield-unit windows: map HU to [0, 1] the way a radiologist's viewer maps them to grey.

A window (level L, width W) shows HU in [L - W/2, L + W/2] as a linear ramp from black to white and
clips everything outside. Lung tissue (air-filled, about -900 to -500 HU) needs a wide, low window;
soft tissue a narrow one around water (0 HU). Presets:

- ``lung``: level -600, width 1500 (HU -1350..150), the usual lung window.
- ``mediastinum``: level 40, width 400 (HU -160..240), soft tissue.
- ``keras_io``: HU -1000..400 (level -300, width 1400), the clip of the Keras 3D CT example and of
  covidct's volume convention.
"""

from __future__ import annotations

import numpy as np

from covidct.errors import CovidctError, unknown_name_error

WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "keras_io": (-300.0, 1400.0),
}


def window_bounds_hu(level: float, width: float) -> tuple[float, float]:
    """Return the (low, high) HU limits of a window with ``level`` and ``width`` (HU)."""
    if width <= 0:
        raise CovidctError(f"window width must be positive, got {width} HU.")
    return level - width / 2.0, level + width / 2.0


def window_hu(image_hu: np.ndarray, level: float = -600.0, width: float = 1500.0) -> np.ndarray:
    """Map HU to float32 [0, 1] through a linear window, clipping outside it.

    Args:
        image_hu: array of Hounsfield units, any shape.
        level: window centre in HU (default -600, lung).
        width: window width in HU (default 1500, lung).

    Returns:
        float32 array of the same shape: 0 at ``level - width/2`` and below, 1 at ``level + width/2``
        and above.
    """
    low, _ = window_bounds_hu(level, width)
    scaled = (np.asarray(image_hu, dtype=np.float32) - np.float32(low)) / np.float32(width)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def get_window(window: str | tuple[float, float]) -> tuple[float, float]:
    """Resolve a preset name or a ``(level, width)`` pair to ``(level, width)`` in HU."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise unknown_name_error("window", window, WINDOWS)
        return WINDOWS[window]
    level, width = window
    return float(level), float(width)


def window_stack(
    image_hu: np.ndarray, windows: tuple = ("lung", "mediastinum", "keras_io")
) -> np.ndarray:
    """Stack several windows of one HU image as channels (channels-last), e.g. for ImageNet nets.

    Args:
        image_hu: (H, W) array in HU.
        windows: preset names or ``(level, width)`` pairs, one per output channel.

    Returns:
        float32 (H, W, len(windows)) in [0, 1].
    """
    return np.stack([window_hu(image_hu, *get_window(w)) for w in windows], axis=-1)


def to_display(image, window: str | tuple[float, float] = "lung") -> np.ndarray:
    """Turn a ``CTImage`` into uint8 grey levels 0-255 for display or caching.

    HU images go through ``window``; display-unit images (PNG/JPG exports) are already grey levels
    and are only rounded and clipped.

    Args:
        image: a ``covidct.data.io.CTImage``.
        window: preset name or ``(level, width)`` in HU; ignored for display-unit images.

    Returns:
        uint8 array of the image's shape.
    """
    if image.unit == "display":
        return np.clip(np.rint(image.array), 0, 255).astype(np.uint8)
    if image.unit != "HU":
        raise CovidctError(f"{image.path}: unknown intensity unit {image.unit!r}; expected 'HU' or 'display'.")
    return np.rint(window_hu(image.array, *get_window(window)) * 255.0).astype(np.uint8)


def hu_to_volume_uint8(volume_hu: np.ndarray) -> np.ndarray:
    """Volume-model convention: clip HU to [-1000, 400] and map linearly to uint8 0..255."""
    return np.rint(window_hu(volume_hu, *WINDOWS["keras_io"]) * 255.0).astype(np.uint8)
