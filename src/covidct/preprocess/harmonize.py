"""Intensity harmonisation: estimate a display slice's HU window from its air and soft-tissue peaks.

PNG/JPG exports (sars-cov-2-ct, MedSeg) show CT through a window nobody recorded; HU volumes
(COVID-CT-MD, phantoms) are shown through a window the loader chooses. A model that sees a brighter
lung in one hospital than in another can learn the window instead of the disease. Every window is a
line ``grey = clip((HU - low) / width * 255)``, so two tissues of known density that are *not*
clipped fix it:

- **Air** (-1000 HU): the darkest well-populated peak of the grey levels outside the body mask (room
  air around the patient). Field-of-view padding and air below the window's floor sit at grey 0 and
  are excluded (``CLIP_MARGIN``, ``MIN_UNCLIPPED_GREY``): when no unclipped outside air is left, or fewer than
  ``MIN_AIR_FRACTION`` of the pixels are outside the body (tight lung crops such as sars-cov-2-ct),
  the **aerated lung** takes its place: the highest peak of the grey levels inside the classical lung
  mask, taken as ``LUNG_PARENCHYMA_HU`` (-860 HU, the usual density of aerated lung at full
  inspiration; an assumption, less exact than air: its error is reported by the benchmarks).
- **Soft tissue** (+40 HU, muscle and blood): the brightest peak holding at least
  ``MIN_PEAK_RELATIVE`` of the tallest one among body pixels outside the (dilated) lungs and above
  the air/tissue threshold. "Brightest" rather than "tallest" keeps subcutaneous fat (~ -100 HU), which
  can outnumber muscle, from being taken for it; pixels at the window's ceiling (bone) are excluded,
  and when most tissue sits at the ceiling (a window whose top is below +40 HU) nothing is estimated.

``estimate_window`` returns a ``WindowEstimate`` (level and width in HU, the anchors it used);
``harmonize`` maps the slice through the estimated line to HU and back through one lung window
(-600/1500 by default), so every slice ends with one lung-window appearance. HU inputs need no
estimate: they are windowed directly. The masks are the project's classical body and lung masks
(``covidct.preprocess.body``, ``covidct.preprocess.lungs``). Pure functions of the image, never of
its label.

Stage ``lungs-harmonized`` (registered here): ``harmonize`` to the lung window, then the ``lungs``
stage (lung-masked crop of the lungs' bounding box).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from covidct.data.windows import window_hu
from covidct.errors import CovidctError
from covidct.preprocess.body import analyse_slice, resize_mask, to_gray
from covidct.preprocess.lungs import lung_mask
from covidct.preprocess.pipelines import lungs_crop
from covidct.preprocess.stages import StageOutput, register_stage

log = logging.getLogger(__name__)

AIR_HU = -1000.0
SOFT_TISSUE_HU = 40.0
#: Aerated lung at full inspiration, used as the dark anchor when no unclipped outside air is visible.
LUNG_PARENCHYMA_HU = -860.0
#: The lung window every slice is brought to: (level, width) in HU.
TARGET_WINDOW = (-600.0, 1500.0)
#: Grey levels this close to 0 or 255 count as clipped by the window and never serve as anchors.
CLIP_MARGIN = 1.5
#: An anchor peak must lie at least this far (grey levels) inside the window: a peak nearer the floor or the
#: ceiling is the clipped tail of a tissue the window cuts off, not its density.
MIN_UNCLIPPED_GREY = 8.0
#: When more than this fraction of the non-lung body tissue sits at the window's ceiling, soft tissue
#: itself is clipped (bone alone stays well below it in a lung window) and the window cannot be estimated.
MAX_CEILING_FRACTION = 0.35
#: Outside air must cover at least this fraction of the image (and unclipped) to be the air anchor.
MIN_AIR_FRACTION = 0.02
#: A peak must hold this fraction of the tallest peak's height to count.
MIN_PEAK_RELATIVE = 0.25
#: Gaussian smoothing of the grey-level histograms, in grey levels.
HISTOGRAM_SIGMA = 2.0
#: Anchors closer than this (grey levels) give no usable line.
MIN_ANCHOR_GAP = 10.0
#: Lungs are dilated by this fraction of the image side before tissue pixels are taken outside them.
LUNG_DILATION_FRACTION = 0.02


@dataclass(frozen=True)
class WindowEstimate:
    """The display window of one slice, estimated (or known, for HU images).

    Attributes:
        level: window centre in HU.
        width: window width in HU.
        dark_grey: grey level of the dark anchor (air or aerated lung); NaN for HU input.
        tissue_grey: grey level of the soft-tissue anchor; NaN for HU input.
        dark_anchor: ``"air"``, ``"lung"`` or ``"hu"`` (HU input, nothing estimated).
        ok: False when no usable pair of anchors was found (the mapping is then the identity).
        reason: why not ok ("" when ok).
    """
    level: float
    width: float
    dark_grey: float
    tissue_grey: float
    dark_anchor: str
    ok: bool = True
    reason: str = ""

    @property
    def low(self) -> float:
        """HU shown as grey 0."""
        return self.level - self.width / 2.0

    def grey_to_hu(self, grey) -> np.ndarray:
        """HU of display grey levels under this window (clipped pixels map to the window's bounds)."""
        return (self.low + np.asarray(grey, dtype=np.float32) / 255.0 * self.width).astype(np.float32)

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready) of the fields."""
        return asdict(self)


def histogram_peak(values: np.ndarray, which: str = "highest", sigma: float = HISTOGRAM_SIGMA,
                   min_relative: float = MIN_PEAK_RELATIVE, bounds: tuple[float, float] = (0.0, 255.0)) -> float:
    """A peak of the smoothed histogram of grey levels (1-level bins), refined to sub-level precision.

    Args:
        values: grey levels (any shape).
        which: ``"highest"`` (the mode), ``"darkest"`` or ``"brightest"`` peak among those holding at least
            ``min_relative`` of the tallest peak's height.
        sigma: Gaussian smoothing of the histogram in grey levels.
        min_relative: height threshold relative to the tallest peak.
        bounds: the grey range binned.

    Returns:
        The peak's grey level; NaN when ``values`` is empty.
    """
    if which not in ("highest", "darkest", "brightest"):
        raise CovidctError(f"histogram_peak: which must be 'highest', 'darkest' or 'brightest', got {which!r}.")
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return float("nan")
    low, high = bounds
    edges = np.arange(np.floor(low), np.ceil(high) + 2.0)
    counts, _ = np.histogram(values, bins=edges)
    smooth = gaussian_filter1d(counts.astype(np.float64), sigma, mode="constant")
    padded = np.concatenate([[-1.0], smooth, [-1.0]])
    is_peak = (padded[1:-1] >= padded[:-2]) & (padded[1:-1] > padded[2:])
    peaks = np.flatnonzero(is_peak & (smooth >= min_relative * smooth.max()))
    if peaks.size == 0:
        peaks = np.array([int(np.argmax(smooth))])
    if which == "highest":
        index = int(peaks[np.argmax(smooth[peaks])])
    else:
        index = int(peaks[0] if which == "darkest" else peaks[-1])
    offset = 0.0
    if 0 < index < len(smooth) - 1:
        left, middle, right = smooth[index - 1], smooth[index], smooth[index + 1]
        curvature = left - 2.0 * middle + right
        if curvature < 0:
            offset = float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    return float(edges[index] + 0.5 + offset)


def window_from_anchors(dark_grey: float, tissue_grey: float, dark_hu: float = AIR_HU,
                        tissue_hu: float = SOFT_TISSUE_HU) -> tuple[float, float]:
    """(level, width) in HU of the line through (dark_grey, dark_hu) and (tissue_grey, tissue_hu).

    Raises:
        CovidctError: anchors closer than ``MIN_ANCHOR_GAP`` grey levels or in the wrong order.
    """
    gap = float(tissue_grey) - float(dark_grey)
    if not np.isfinite(gap) or gap < MIN_ANCHOR_GAP:
        raise CovidctError(
            f"window_from_anchors: soft tissue ({tissue_grey:.1f}) must be at least {MIN_ANCHOR_GAP:g} grey levels "
            f"brighter than the dark anchor ({dark_grey:.1f})."
        )
    slope = (tissue_hu - dark_hu) / gap  # HU per grey level
    width = 255.0 * slope
    low = dark_hu - float(dark_grey) * slope
    return low + width / 2.0, width


def _anchor_masks(gray: np.ndarray, unit: str, lungs: np.ndarray | None):
    """Body, outside air, lungs and tissue masks at the analysis resolution, and the air/tissue threshold."""
    analysis = analyse_slice(gray)
    small = analysis.gray
    shape = small.shape
    if lungs is None:
        lungs = lung_mask(gray, unit=unit, warn=False) > 0
    lungs_small = resize_mask(lungs, shape)
    radius = max(1, round(LUNG_DILATION_FRACTION * max(shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    near_lungs = cv2.dilate(lungs_small.astype(np.uint8), kernel).astype(bool)
    body = analysis.body if not analysis.fallback else np.ones(shape, bool)
    outside = ~body & analysis.air
    tissue = body & ~near_lungs & ~analysis.air
    return small, outside, lungs_small, tissue, analysis.fallback


def estimate_window(image, lungs: np.ndarray | None = None, dark_anchor: str = "auto") -> WindowEstimate:
    """Estimate the display window of one slice from its air (or aerated-lung) and soft-tissue peaks.

    Args:
        image: a ``CTImage`` (2D) or an (H, W) array; display grey levels 0-255 (HU inputs are returned
            as the target window with ``dark_anchor="hu"``: nothing to estimate).
        lungs: optional (H, W) binary lung mask (default: the classical ``lung_mask``).
        dark_anchor: ``"auto"`` (outside air when enough unclipped air is visible, else aerated lung),
            ``"air"`` or ``"lung"`` (force one; used to measure each anchor's error).

    Returns:
        A ``WindowEstimate``; ``ok`` is False (and ``reason`` says why) when no usable anchors exist.
    """
    if dark_anchor not in ("auto", "air", "lung"):
        raise CovidctError(f"estimate_window: dark_anchor must be 'auto', 'air' or 'lung', got {dark_anchor!r}.")
    gray, unit = to_gray(image)
    if unit == "HU":
        return WindowEstimate(*TARGET_WINDOW, float("nan"), float("nan"), "hu")
    small, outside, lungs_small, tissue, fallback = _anchor_masks(gray, unit, lungs)
    nan = float("nan")

    def failed(anchor: str, reason: str) -> WindowEstimate:
        return WindowEstimate(127.5, 255.0, nan, nan, anchor, ok=False, reason=reason)

    if fallback:
        return failed(dark_anchor, "no body found")
    top = 255.0 - CLIP_MARGIN
    all_tissue = small[tissue]
    tissue_values = all_tissue[(all_tissue > CLIP_MARGIN) & (all_tissue < top)]
    if all_tissue.size and np.mean(all_tissue >= top) > MAX_CEILING_FRACTION:
        return failed(dark_anchor, "soft tissue is clipped at the window's ceiling")
    if tissue_values.size < 0.005 * small.size:
        return failed(dark_anchor, "too few soft-tissue pixels outside the lungs")
    tissue_grey = histogram_peak(tissue_values, "brightest")
    if tissue_grey > 255.0 - MIN_UNCLIPPED_GREY:
        return failed(dark_anchor, "soft tissue is clipped at the window's ceiling")
    air_values = small[outside & (small > CLIP_MARGIN)]
    air_grey = histogram_peak(air_values, "darkest") if air_values.size else float("nan")
    enough_air = air_values.size >= MIN_AIR_FRACTION * small.size and air_grey >= MIN_UNCLIPPED_GREY
    anchor = dark_anchor if dark_anchor != "auto" else ("air" if enough_air else "lung")
    if anchor == "air":
        if not enough_air:
            return failed("air", "too little unclipped air outside the body")
        dark_grey, dark_hu = air_grey, AIR_HU
    else:
        lung_values = small[lungs_small & (small > CLIP_MARGIN) & (small < top)]
        if lung_values.size < 0.01 * small.size:
            return failed("lung", "too few unclipped lung pixels")
        dark_grey, dark_hu = histogram_peak(lung_values, "highest"), LUNG_PARENCHYMA_HU
        if dark_grey < MIN_UNCLIPPED_GREY:
            return failed("lung", "aerated lung is clipped at the window's floor")
    try:
        level, width = window_from_anchors(dark_grey, tissue_grey, dark_hu=dark_hu)
    except CovidctError as error:
        return WindowEstimate(127.5, 255.0, dark_grey, tissue_grey, anchor, ok=False, reason=str(error))
    return WindowEstimate(float(level), float(width), float(dark_grey), float(tissue_grey), anchor)


def harmonize(image, estimate: WindowEstimate | None = None, target: tuple[float, float] = TARGET_WINDOW,
              lungs: np.ndarray | None = None) -> tuple[np.ndarray, WindowEstimate]:
    """Bring one slice to the appearance of the ``target`` window (default the lung window -600/1500).

    Args:
        image: a ``CTImage`` (2D) or (H, W) array, HU or display grey levels.
        estimate: a ``WindowEstimate`` to use (default: ``estimate_window(image, lungs)``).
        target: (level, width) in HU of the output's window.
        lungs: optional lung mask passed to ``estimate_window``.

    Returns:
        (float32 (H, W) grey levels in [0, 255], the estimate used). Display slices whose window could not
        be estimated are returned unchanged (the estimate says so: ``ok`` False).
    """
    gray, unit = to_gray(image)
    if unit == "HU":
        return window_hu(gray, *target) * 255.0, WindowEstimate(*TARGET_WINDOW, float("nan"), float("nan"), "hu")
    estimate = estimate if estimate is not None else estimate_window(gray, lungs=lungs)
    if not estimate.ok:
        log.info("harmonize: window not estimated (%s); slice left unchanged.", estimate.reason)
        return np.clip(gray, 0.0, 255.0).astype(np.float32), estimate
    return window_hu(estimate.grey_to_hu(gray), *target) * 255.0, estimate


@register_stage("lungs-harmonized")
def lungs_harmonized(image, size: int) -> list[StageOutput]:
    """The ``lungs`` stage after ``harmonize``: every slice shown through the lung window -600/1500."""
    grey, _ = harmonize(image)
    return lungs_crop(np.clip(np.rint(grey), 0, 255).astype(np.float32), size)


__all__ = [
    "AIR_HU",
    "LUNG_PARENCHYMA_HU",
    "SOFT_TISSUE_HU",
    "TARGET_WINDOW",
    "WindowEstimate",
    "estimate_window",
    "harmonize",
    "histogram_peak",
    "lungs_harmonized",
    "window_from_anchors",
]
