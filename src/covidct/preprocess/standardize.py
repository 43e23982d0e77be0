"""Intensity, resolution and sharpness standardisation inside the lungs, and the ``lungs-robust`` stage.

Why: a model trained on one hospital's slices learns that hospital's display window, reconstruction
kernel and resolution as readily as it learns the disease. In sars-cov-2-ct the non-COVID slices are
visibly blurrier than the COVID ones and differ in mean grey level, so blur and brightness are
shortcuts that fail on other hospitals' scans (docs/experiments/generalisation.md). This module removes
what it can of those differences *before* the network sees the image, as a pure function of the image
(never of its label):

- **Intensity.** When Hounsfield units are known, the physical lung window (level -600, width 1500) is
  the calibration. Display-range images (PNG/JPG screenshots, windowed exports) have an unknown window,
  so the grey levels are re-anchored on two tissues the lungs of every patient contain:
  ``standardize_percentiles`` maps the lung mask's low percentile (aerated parenchyma) and high
  percentile (vessels, airway walls and lesions, all soft-tissue density) to fixed grey levels. Both
  anchors stay at soft-tissue/air density with or without disease, so ground glass keeps its relative
  brightness. ``standardize_histogram`` (rank equalisation inside the mask) is stronger but also
  flattens the difference between a clear and a diseased lung; it is offered for ablations.
- **Resolution.** The ``lungs-robust`` stage crops to the lungs' bounding box and resizes it to the
  model size, so the lungs span the frame whatever the field of view: pixels then have roughly the same
  anatomical size in every dataset.
- **Sharpness.** ``lowpass`` applies a fixed Gaussian low-pass at the output size (sigma a fixed
  fraction of the image side), so every image ends with the same highest resolvable frequency and the
  sharpness difference between classes shrinks. ``match_sharpness`` instead blurs an image until the
  Laplacian variance inside its (eroded) lung mask is at most a target, for datasets whose blur
  differences are larger. Random blur/sharpen at training time (``covidct.train.appearance``) does the
  rest.

Stage ``lungs-hist`` (registered here) is the same with ``standardize_histogram`` as the intensity step.

Stage ``lungs-robust`` (registered here): lung mask → intensity standardisation inside the lungs →
crop to the lungs plus 5% margin → square pad and resize → fixed low-pass → everything outside the
lungs set to 0. One channel, uint8.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from covidct.data.windows import window_hu
from covidct.errors import CovidctError, unknown_name_error
from covidct.preprocess.body import body_mask, mask_bbox, resize_mask, to_gray
from covidct.preprocess.lungs import lung_mask
from covidct.preprocess.stages import StageOutput, register_stage

log = logging.getLogger(__name__)

INTENSITY_METHODS = ("percentile", "histogram", "none")
#: Lung-mask percentiles used as anchors: aerated lung and soft-tissue-density structures.
ANCHOR_PERCENTILES = (2.0, 98.0)
#: Grey levels the anchors are mapped to. The lung window (-600/1500) shows aerated lung (~ -870 HU)
#: at ~82 and vessels (~ +40 HU) at ~236; the targets sit close to that so HU and display inputs agree.
ANCHOR_TARGETS = (80.0, 230.0)
#: Gaussian sigma of the stage's fixed low-pass, as a fraction of the output side (0.75 px at 128 px).
LOWPASS_SIGMA_FRACTION = 0.75 / 128
#: Margin of the lung crop, as in the ``lungs`` stage.
LUNG_CROP_MARGIN = 0.05


def _check_pair(image: np.ndarray, mask: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    mask = np.asarray(mask).astype(bool)
    if image.ndim != 2:
        raise CovidctError(f"{name}: expected one (H, W) slice, got shape {image.shape}.")
    if mask.shape != image.shape:
        raise CovidctError(f"{name}: mask shape {mask.shape} does not match image shape {image.shape}.")
    return image.astype(np.float32), mask


def standardize_percentiles(
    image: np.ndarray,
    mask: np.ndarray,
    percentiles: tuple[float, float] = ANCHOR_PERCENTILES,
    targets: tuple[float, float] = ANCHOR_TARGETS,
) -> np.ndarray:
    """Linearly map two percentiles of the pixels inside ``mask`` to two target grey levels.

    Args:
        image: (H, W) grey levels (display 0-255 or any linear scale).
        mask: (H, W) binary lung mask; an empty mask uses the whole image.
        percentiles: (low, high) percentiles in [0, 100] of the masked pixels (default (2, 98)).
        targets: grey levels the low and high percentiles are mapped to (default (80, 230)).

    Returns:
        float32 (H, W) of the whole image mapped by the same line, clipped to [0, 255].

    Raises:
        CovidctError: percentiles not increasing inside [0, 100], or shapes that differ.
    """
    image, mask = _check_pair(image, mask, "standardize_percentiles")
    low_pct, high_pct = (float(p) for p in percentiles)
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise CovidctError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}.")
    values = image[mask] if mask.any() else image.ravel()
    low, high = np.percentile(values, [low_pct, high_pct])
    target_low, target_high = (float(t) for t in targets)
    if high - low < 1e-6:
        # A flat lung (blank or saturated image): shift it to the low target, no stretch.
        return np.clip(image - low + target_low, 0.0, 255.0).astype(np.float32)
    scale = (target_high - target_low) / (high - low)
    return np.clip((image - low) * scale + target_low, 0.0, 255.0).astype(np.float32)


def standardize_histogram(image: np.ndarray, mask: np.ndarray, levels: int = 256) -> np.ndarray:
    """Histogram equalisation inside the mask: each pixel gets its rank among the masked pixels.

    Pixels outside the mask are mapped through the same (monotone) curve, so the image stays
    continuous across the mask edge.

    Args:
        image: (H, W) grey levels.
        mask: (H, W) binary mask; an empty mask uses the whole image.
        levels: number of output grey levels (output range 0..levels-1).

    Returns:
        float32 (H, W) in [0, levels - 1]: the empirical CDF of the masked pixels times ``levels - 1``.
    """
    image, mask = _check_pair(image, mask, "standardize_histogram")
    values = np.sort(image[mask] if mask.any() else image.ravel())
    # Mid-rank CDF: ties share the average of their ranks, so a flat image maps to the middle grey.
    below = np.searchsorted(values, image, side="left")
    at_or_below = np.searchsorted(values, image, side="right")
    cdf = (below + at_or_below) / (2.0 * len(values))
    return (cdf * (levels - 1)).astype(np.float32)


def standardize_intensity(image: np.ndarray, mask: np.ndarray, method: str = "percentile", unit: str = "display") -> np.ndarray:
    """Intensity standardisation inside the lungs (see the module docstring).

    Args:
        image: (H, W) slice in HU (``unit="HU"``) or display grey levels.
        mask: (H, W) binary lung mask.
        method: ``"percentile"`` (default), ``"histogram"`` or ``"none"``.
        unit: ``"HU"``: the lung window (-600/1500) is applied first, then ``method``; ``"display"``:
            ``method`` is applied to the grey levels as they are.

    Returns:
        float32 (H, W) in [0, 255].
    """
    if method not in INTENSITY_METHODS:
        raise unknown_name_error("intensity standardisation method", method, INTENSITY_METHODS)
    if unit not in ("HU", "display"):
        raise CovidctError(f"unit must be 'HU' or 'display', got {unit!r}.")
    image = np.asarray(image, dtype=np.float32)
    if unit == "HU":
        image = window_hu(image, level=-600.0, width=1500.0) * 255.0
    if method == "percentile":
        return standardize_percentiles(image, mask)
    if method == "histogram":
        return standardize_histogram(image, mask)
    return np.clip(image, 0.0, 255.0).astype(np.float32)


def lowpass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass (OpenCV, reflected borders) of an (H, W) or (H, W, C) image; sigma 0 is identity.

    Args:
        image: float or uint8 image.
        sigma_px: Gaussian standard deviation in pixels (>= 0).

    Returns:
        float32 image of the same shape.
    """
    if sigma_px < 0:
        raise CovidctError(f"sigma_px must be >= 0, got {sigma_px}.")
    image = np.asarray(image, dtype=np.float32)
    if sigma_px == 0:
        return image.copy()
    out = cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma_px), sigmaY=float(sigma_px), borderType=cv2.BORDER_REFLECT)
    return out.reshape(image.shape).astype(np.float32)


def laplacian_variance(image: np.ndarray, mask: np.ndarray | None = None, erode_px: int = 2) -> float:
    """Variance of the 3x3 Laplacian (OpenCV ``ksize=1``) inside a mask: a standard sharpness score.

    Args:
        image: (H, W) grey image.
        mask: (H, W) binary mask (None: the whole image except a 1-pixel border).
        erode_px: erode the mask by this many pixels first, so the mask's own edge does not count.

    Returns:
        The variance (0.0 when the mask is empty after erosion).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise CovidctError(f"laplacian_variance: expected (H, W), got {image.shape}.")
    laplacian = cv2.Laplacian(image, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)
    if mask is None:
        inside = np.zeros(image.shape, bool)
        inside[1:-1, 1:-1] = True
    else:
        inside = np.asarray(mask).astype(np.uint8)
        if erode_px > 0:
            inside = cv2.erode(inside, np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8))
        inside = inside.astype(bool)
    if not inside.any():
        return 0.0
    return float(laplacian[inside].var())


def match_sharpness(
    image: np.ndarray,
    mask: np.ndarray | None,
    target_variance: float,
    max_sigma_px: float = 3.0,
    steps: int = 12,
) -> tuple[np.ndarray, float]:
    """Blur an image just enough that its Laplacian variance inside ``mask`` is at most a target.

    Images already at or below the target are returned unchanged (blur cannot be undone, so the
    target should be a value the blurriest images of every class reach). The sigma is found by
    bisection on [0, ``max_sigma_px``].

    Args:
        image: (H, W) grey image.
        mask: (H, W) binary mask or None.
        target_variance: the Laplacian variance to reach (> 0).
        max_sigma_px: the largest Gaussian sigma tried.
        steps: bisection steps.

    Returns:
        (float32 blurred image, sigma used in pixels).
    """
    if target_variance <= 0:
        raise CovidctError(f"target_variance must be > 0, got {target_variance}.")
    image = np.asarray(image, dtype=np.float32)
    if laplacian_variance(image, mask) <= target_variance:
        return image.copy(), 0.0
    if laplacian_variance(lowpass(image, max_sigma_px), mask) > target_variance:
        return lowpass(image, max_sigma_px), float(max_sigma_px)
    low, high = 0.0, float(max_sigma_px)
    for _ in range(int(steps)):
        middle = (low + high) / 2.0
        if laplacian_variance(lowpass(image, middle), mask) > target_variance:
            low = middle
        else:
            high = middle
    return lowpass(image, high), high


def _square_fit(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad to a centred square and resize (area when shrinking, linear when enlarging)."""
    height, width = image.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    pads = ((top, side - height - top), (left, side - width - left))
    image, mask = np.pad(image, pads), np.pad(mask.astype(np.uint8), pads)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    resized = cv2.resize(image.astype(np.float32), (size, size), interpolation=interpolation)
    return resized, resize_mask(mask, (size, size)).astype(np.uint8)


def robust_lung_crop(
    image,
    size: int,
    intensity: str = "percentile",
    sigma_fraction: float = LOWPASS_SIGMA_FRACTION,
    target_laplacian_variance: float | None = None,
) -> StageOutput:
    """The ``lungs-robust`` preprocessing of one slice, with its parameters exposed for ablations.

    Args:
        image: a 2-D ``CTImage`` or (H, W) array (HU when its minimum is below -100, else display).
        size: output side in pixels.
        intensity: ``"percentile"`` (default), ``"histogram"`` or ``"none"`` (see ``standardize_intensity``).
        sigma_fraction: Gaussian low-pass sigma as a fraction of ``size`` (0: no low-pass).
        target_laplacian_variance: if given, ``match_sharpness`` to this target after the low-pass.

    Returns:
        ``StageOutput`` with a uint8 (size, size, 1) image (0 outside the lungs) and the lung mask.
    """
    if not isinstance(size, int) or size < 8:
        raise CovidctError(f"size must be an integer >= 8, got {size!r}.")
    gray, unit = to_gray(image)
    # A LungMaskWarning reaches the caller as a warning: a cache build sums them up per file.
    labels = lung_mask(image, unit=unit)
    lungs = (labels > 0).astype(np.uint8)
    if not lungs.any():
        # No lung found (abdomen slice, blank image): fall back to the body so the crop stays defined.
        lungs = body_mask(image, warn=False).astype(np.uint8)
    standardized = standardize_intensity(gray, lungs, method=intensity, unit=unit)
    top, bottom, left, right = mask_bbox(lungs, margin=LUNG_CROP_MARGIN)
    crop, crop_mask = _square_fit(standardized[top:bottom, left:right], lungs[top:bottom, left:right], size)
    crop = lowpass(crop, sigma_fraction * size)
    if target_laplacian_variance is not None:
        crop, _ = match_sharpness(crop, crop_mask, target_laplacian_variance)
    crop[crop_mask == 0] = 0.0
    out = np.clip(np.round(crop), 0, 255).astype(np.uint8)[..., None]
    return StageOutput(out, crop_mask)


@register_stage("lungs-robust")
def lungs_robust(image, size: int) -> list[StageOutput]:
    """Lung crop with intensity standardisation inside the lungs and a fixed low-pass (see module docs)."""
    return [robust_lung_crop(image, size)]


@register_stage("lungs-hist")
def lungs_hist(image, size: int) -> list[StageOutput]:
    """``lungs-robust`` with rank (histogram) equalisation inside the lungs instead of the two anchors.

    Every image's lung pixels then have the same (uniform) grey-level distribution, so the mean lung
    brightness carries no information: in sars-cov-2-ct the COVID lungs are brighter than the non-COVID
    ones (``lungs`` stage, 102 vs 95 grey levels) while in covid-ct-md they are darker (93 vs 95-98), a cue
    that inverts between hospitals. What is left for the model is where the dense pixels are (texture and
    spatial pattern), not how bright the lung is overall.
    """
    return [robust_lung_crop(image, size, intensity="histogram")]


__all__ = [
    "ANCHOR_PERCENTILES",
    "ANCHOR_TARGETS",
    "INTENSITY_METHODS",
    "LOWPASS_SIGMA_FRACTION",
    "laplacian_variance",
    "lowpass",
    "lungs_hist",
    "lungs_robust",
    "match_sharpness",
    "robust_lung_crop",
    "standardize_histogram",
    "standardize_intensity",
    "standardize_percentiles",
]
