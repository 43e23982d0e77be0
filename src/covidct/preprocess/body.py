"""Body masks, background removal and crops for single CT slices.

Two methods:

- ``"hu"`` (default, robust): threshold soft tissue (-500 HU, or an Otsu threshold on display images),
  open to cut the table, thin lines and text away, keep the largest connected component, fill its
  holes, then add the air regions that lie inside the body's convex hull (the lungs of tightly cropped
  slices touch the image border, so they are never "holes"). Works on full field-of-view slices with
  the table, on tightly cropped lung crops (sars-cov-2-ct) and on paper figures with text and arrows.
- ``"seed"``: the OpenCV recipe of the CT-COV19 study, reproduced for comparison:
  threshold 150, pad the border by 5%, erode 3x3, invert, Canny(240, 255), dilate 3x3, keep the
  longest contour (fallback: the largest convex hull) and fill it.

Neither returns an empty mask silently: when nothing plausible is found the whole image is returned
with a ``BodyMaskWarning``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from covidct.data.stage import resize_mask  # noqa: F401  (re-exported: its old home)
from covidct.data.windows import window_hu
from covidct.errors import CovidctError, unknown_name_error

BODY_METHODS = ("hu", "seed")
BODY_THRESHOLD_HU = -500.0
#: Slices are analysed at most this many pixels on their long side (speed; masks are upsampled back).
WORK_SIZE_PX = 256
#: Fraction of the way from the Otsu threshold to the mean tissue grey level (display images), see below.
GGO_BIAS = 0.25


class BodyMaskWarning(UserWarning):
    """The body mask fell back to the whole image (nothing body-like was found)."""


@dataclass
class SliceAnalysis:
    """Shared intermediate results of the body and lung masks (at the working resolution).

    Attributes:
        gray: float32 (h, w) working-resolution image in its own unit.
        unit: ``"HU"`` or ``"display"``.
        air: bool (h, w), pixels darker than the air/tissue threshold.
        body: bool (h, w), the filled body (tissue, its holes, and air inside its convex hull).
        hull: bool (h, w), convex hull of the tissue component.
        threshold: the air/tissue threshold used (HU or grey level).
        fallback: True when the body could not be found and the whole image was used.
        scale: working size / original size.
        core: (filled tissue component, hull), reused when only the threshold changes.
    """

    gray: np.ndarray
    unit: str
    air: np.ndarray
    body: np.ndarray
    hull: np.ndarray
    threshold: float
    fallback: bool
    scale: float
    core: tuple = ()


def to_gray(image) -> tuple[np.ndarray, str]:
    """Return a float32 (H, W) array and its unit from a CTImage, a 2D array or an RGB(A) screenshot.

    Args:
        image: ``covidct.data.io.CTImage`` (2D), or an array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
            Arrays whose minimum is below -100 are taken as HU, otherwise as display grey levels.

    Returns:
        (gray, unit) with ``unit`` in {"HU", "display"}.
    """
    unit = getattr(image, "unit", None)
    array = np.asarray(getattr(image, "array", image))
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        # Annotated screenshots: drop alpha, average colour channels (coloured marks become grey).
        array = array[..., :3].mean(axis=-1) if array.shape[-1] >= 3 else array[..., 0]
    if array.ndim != 2:
        raise CovidctError(
            f"Expected one 2D slice (H, W) or (H, W, C), got shape {array.shape}"
            f"{' from ' + str(image.path) if getattr(image, 'path', '') else ''}; "
            "pass volumes one slice at a time."
        )
    if array.size == 0:
        raise CovidctError(f"Empty image (shape {array.shape}).")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        array = np.nan_to_num(array)
    array = array.astype(np.float32, copy=False)
    if unit is None:
        unit = "HU" if float(array.min()) < -100.0 else "display"
    return array, unit


def _resize(array: np.ndarray, shape_hw: tuple[int, int], interpolation=cv2.INTER_AREA) -> np.ndarray:
    return cv2.resize(array, (int(shape_hw[1]), int(shape_hw[0])), interpolation=interpolation)


def disk(radius_px: int) -> np.ndarray:
    """A uint8 disk structuring element of the given radius (radius 0 gives a single pixel)."""
    radius_px = max(int(radius_px), 0)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a binary mask (regions not connected to the border); returns bool."""
    mask_u8 = mask.astype(np.uint8)
    padded = cv2.copyMakeBorder(mask_u8, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return mask.astype(bool) | holes


def largest_component(mask: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """Keep the largest connected component of a binary mask; returns bool (all False if empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=connectivity)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of all foreground pixels of a binary mask; returns bool."""
    mask_u8 = mask.astype(np.uint8)
    hull = np.zeros(mask.shape, dtype=np.uint8)
    # The hull of the outer contours equals the hull of all pixels, and is much cheaper to compute.
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return hull.astype(bool)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate(contours)), 1)
    return hull.astype(bool) | mask.astype(bool)


def otsu_threshold(gray: np.ndarray) -> float:
    """Otsu threshold of a display image, ignoring pure black/white padding (0 and 255) if possible."""
    values = np.clip(gray, 0, 255).astype(np.uint8).ravel()
    inner = values[(values > 0) & (values < 255)]
    if inner.size >= 0.05 * values.size and inner.size > 16:
        values = inner
    if values.min() == values.max():
        return float(values[0]) + 0.5
    threshold, _ = cv2.threshold(values.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(threshold)


def analyse_slice(image, work_size_px: int = WORK_SIZE_PX, threshold=None) -> SliceAnalysis:
    """Threshold, find the body and the air inside it, at a working resolution.

    Args:
        image: a CTImage, 2D array (HU or 0-255) or an RGB(A) screenshot.
        work_size_px: long side of the working resolution (images are never upsampled).
        threshold: air/tissue threshold in the image's unit; default -320 HU for the lungs-vs-tissue split
            of HU images, Otsu for display images.

    Returns:
        A ``SliceAnalysis``.
    """
    gray, unit = to_gray(image)
    height, width = gray.shape
    scale = min(1.0, work_size_px / max(height, width))
    if scale < 1.0:
        gray = _resize(gray, (max(1, round(height * scale)), max(1, round(width * scale))))
    gray = np.ascontiguousarray(gray, dtype=np.float32)
    if threshold is None and unit == "display":
        threshold = _display_threshold(gray)
    elif threshold is None:
        threshold = -320.0
    return _analyse(gray, unit, float(threshold), scale)


def _display_threshold(gray: np.ndarray) -> float:
    """Air/tissue threshold of a display image (grey levels of an unknown window).

    1. Otsu over the whole image finds the body (it may split black field-of-view padding or outside
       air from everything else).
    2. Otsu again over the pixels inside the convex hull of that body splits lungs from tissue (never
       below the first threshold).
    3. Otsu sits halfway between aerated lung and soft tissue, which cuts ground-glass opacities out of
       the lungs: the threshold moves ``GGO_BIAS`` of the way towards the mean tissue grey level (fat and
       muscle stay above it).
    """
    first = otsu_threshold(gray)
    tissue = largest_component(cv2.medianBlur(gray, 3) >= first)
    if tissue.sum() < 0.02 * gray.size:
        return first
    hull = convex_hull(tissue)
    threshold = max(first, otsu_threshold(gray[hull]))
    tissue_values = gray[hull & (gray >= threshold)]
    if tissue_values.size:
        threshold += GGO_BIAS * (float(tissue_values.mean()) - threshold)
    return float(threshold)


def _analyse(gray: np.ndarray, unit: str, threshold: float, scale: float, core=None) -> SliceAnalysis:
    """One pass at one threshold; ``core`` = (tissue component, hull) of an earlier pass is reused."""
    air = gray < threshold
    if core is None:
        side = max(gray.shape)
        # The body is found on a 3x3 median of the image: speckle noise opens one-pixel gaps in thin chest
        # walls at low resolution. The air mask keeps the unfiltered edges.
        tissue = (cv2.medianBlur(gray, 3) >= threshold).astype(np.uint8)
        whole = largest_component(tissue)
        # An opening a little wider than the table's connection to the body detaches the table (and text,
        # arrows, edge lines). It also cuts chest walls that are only a few pixels thick at low resolution;
        # then the opened core is much smaller than the unopened component, which is kept instead, minus
        # anything hanging below the core (a table attached under the back).
        opened = cv2.morphologyEx(tissue, cv2.MORPH_OPEN, disk(max(1, round(0.012 * side))))
        component = largest_component(opened)
        if component.sum() < 0.8 * whole.sum():
            core_rows = np.flatnonzero(component.any(axis=1))
            bottom = (core_rows[-1] if core_rows.size else gray.shape[0]) + max(2, round(0.03 * side))
            component = whole.copy()
            component[bottom:] = False
            component = largest_component(component)
        if component.sum() < 0.02 * gray.size:
            # A blank, saturated or all-air image has no body: use the whole image, the caller warns.
            full = np.ones(gray.shape, dtype=bool)
            return SliceAnalysis(gray, unit, air, full, full, float(threshold), True, scale, (full, full))
        component |= _side_pieces(opened, component)
        core = (fill_holes(component), convex_hull(component))
    body, hull = core[0].copy(), core[1]
    # Air components lying (mostly) inside the convex hull of the body are inside the body: the lungs of
    # tightly cropped slices touch the image border and are never holes of the tissue mask.
    count, labels, stats, _ = cv2.connectedComponentsWithStats((air & ~body).astype(np.uint8), connectivity=4)
    if count > 1:
        inside = np.bincount(labels[hull], minlength=count).astype(np.float64)
        fraction_inside = inside / np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
        keep = fraction_inside >= 0.7
        keep[0] = False
        body |= keep[labels]
        # A lung joined to the outside air by a thin bridge (a one-pixel gap in the chest wall, an arrow drawn
        # into a screenshot) is part of an "outside" component: break thin bridges with an opening and
        # keep the pieces that lie inside the hull, grown back to their unopened extent.
        outside = air & ~body
        radius = max(2, round(0.012 * max(gray.shape)))
        opened = cv2.morphologyEx(outside.astype(np.uint8), cv2.MORPH_OPEN, disk(radius))
        count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=4)
        if count > 1:
            inside = np.bincount(labels[hull], minlength=count).astype(np.float64)
            keep = inside / np.maximum(stats[:, cv2.CC_STAT_AREA], 1) >= 0.7
            keep[0] = False
            if keep.any():
                grown = cv2.dilate(keep[labels].astype(np.uint8), disk(radius + 1)).astype(bool)
                body |= grown & outside & hull
    return SliceAnalysis(gray, unit, air, body, hull, float(threshold), False, scale, core)


def _side_pieces(opened: np.ndarray, component: np.ndarray) -> np.ndarray:
    """Other large tissue pieces beside the body (tight lung crops cut the chest wall into pieces).

    Pieces of at least 5% of the main component's area count, unless they lie entirely below it (a
    patient table).
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=4)
    rows = np.flatnonzero(component.any(axis=1))
    bottom = rows[-1] if rows.size else opened.shape[0]
    area = component.sum()
    keep = (stats[:, cv2.CC_STAT_AREA] >= 0.05 * area) & (stats[:, cv2.CC_STAT_TOP] <= bottom)
    keep[0] = False
    return keep[labels] & ~component


def _body_mask_seed(gray_u8: np.ndarray) -> np.ndarray | None:
    height, width = gray_u8.shape
    _, thresh = cv2.threshold(gray_u8, 150, 255, cv2.THRESH_BINARY)
    pad = max(1, int(round(0.05 * max(height, width))))
    thresh = cv2.copyMakeBorder(thresh, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(thresh, np.ones((3, 3), np.uint8))
    inverted = cv2.bitwise_not(eroded)
    edges = cv2.Canny(inverted, 240, 255)
    dilated = cv2.dilate(edges, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(dilated, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    filled = np.zeros(dilated.shape, dtype=np.uint8)
    longest = max(contours, key=len)
    cv2.drawContours(filled, [longest], -1, 1, thickness=cv2.FILLED)
    if filled.sum() < 0.02 * filled.size:
        # The original study's fallback: the largest convex hull among the contours.
        hulls = [cv2.convexHull(c) for c in contours]
        largest = max(hulls, key=cv2.contourArea)
        filled[:] = 0
        cv2.fillConvexPoly(filled, largest, 1)
    return filled[pad:-pad, pad:-pad].astype(bool)


def to_display_u8(image) -> np.ndarray:
    """Grey uint8 (H, W) view of a slice: HU via the lung window (-600/1500), display values clipped."""
    gray, unit = to_gray(image)
    if unit == "HU":
        scaled = np.asarray(window_hu(gray, level=-600, width=1500), dtype=np.float32)
        return np.round(scaled * 255.0).astype(np.uint8)
    return np.clip(np.round(gray), 0, 255).astype(np.uint8)


def body_mask(image, method: str = "hu", warn: bool = True) -> np.ndarray:
    """Binary body mask of one slice, same size as the input.

    Args:
        image: a CTImage, a 2D array (HU or 0-255 display values) or an RGB(A) screenshot.
        method: ``"hu"`` (robust default, see the module docstring) or ``"seed"`` (the CT-COV19 recipe).
        warn: emit a ``BodyMaskWarning`` when falling back to the whole image.

    Returns:
        uint8 (H, W) mask in {0, 1}; never empty (the whole image when no body is found).
    """
    if method not in BODY_METHODS:
        raise unknown_name_error("body-mask method", method, BODY_METHODS)
    gray, _ = to_gray(image)
    shape = gray.shape
    if float(gray.max()) == float(gray.min()):
        mask, fallback = None, True  # a constant (blank or saturated) image holds no body
    elif method == "seed":
        mask = _body_mask_seed(to_display_u8(image))
        fallback = mask is None or mask.sum() < 0.02 * mask.size
    else:
        analysis = analyse_slice(image)
        fallback = analysis.fallback
        mask = None if fallback else resize_mask(analysis.body, shape)
    if fallback:
        if warn:
            warnings.warn(
                f"No body found in a {shape[1]}x{shape[0]} slice{_where(image)} (method {method!r}); "
                "using the whole image as the body mask.",
                BodyMaskWarning,
                stacklevel=2,
            )
        return np.ones(shape, dtype=np.uint8)
    return mask.astype(np.uint8)


def _where(image) -> str:
    path = getattr(image, "path", "")
    return f" ({path})" if path else ""


def remove_background(image: np.ndarray, mask: np.ndarray, fill_value: float = 0) -> np.ndarray:
    """Set pixels outside ``mask`` to ``fill_value`` (works for (H, W) and (H, W, C) images).

    Args:
        image: (H, W) or (H, W, C) array.
        mask: (H, W) binary mask of the same height and width.
        fill_value: value written outside the mask (0: black for display images).

    Returns:
        A copy of ``image`` with the background replaced.
    """
    image = np.asarray(image)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != image.shape[:2]:
        raise CovidctError(f"Mask shape {mask.shape} does not match image shape {image.shape[:2]}.")
    result = image.copy()
    result[~mask] = fill_value
    return result


def mask_bbox(mask: np.ndarray, margin: float = 0.0) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right; bottom/right exclusive) of a mask, grown by ``margin``.

    Args:
        mask: (H, W) binary mask.
        margin: fraction of the box's longer side added on every side (clipped to the image).

    Returns:
        The box; the whole image when the mask is empty.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    if rows.size == 0:
        return 0, height, 0, width
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    grow = int(round(margin * max(bottom - top, right - left)))
    return max(0, top - grow), min(height, bottom + grow), max(0, left - grow), min(width, right + grow)


def crop_to_body(image: np.ndarray, mask: np.ndarray, drop_arms: bool = False, margin: float = 0.0):
    """Crop an image (and its mask) to the body's bounding box.

    ``drop_arms`` reproduces the original study's crop, which moved the top of the box down past the arms: the top
    becomes the first row where the body is at least half as wide as its widest row (arms raised above
    the chest make narrow, detached rows at the top of the box). This is our reading of the original study's
    intent; its code used a fixed offset.

    Args:
        image: (H, W) or (H, W, C).
        mask: (H, W) body mask.
        drop_arms: move the top edge down past narrow rows (see above).
        margin: fraction of the box's longer side added around it.

    Returns:
        (cropped_image, cropped_mask, (top, bottom, left, right)).
    """
    mask = np.asarray(mask).astype(bool)
    top, bottom, left, right = mask_bbox(mask, margin)
    if drop_arms and mask.any():
        widths = mask.sum(axis=1)
        wide_rows = np.flatnonzero(widths >= 0.5 * widths.max())
        top = max(top, int(wide_rows[0]) - int(round(margin * (bottom - top))))
    box = (int(top), int(bottom), int(left), int(right))
    return image[top:bottom, left:right], mask[top:bottom, left:right].astype(np.uint8), box
