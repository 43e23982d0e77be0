"""Lung masks for single CT slices, with per-lung labels.

``lung_mask(image, method=...)`` returns uint8 labels: 0 background, 1 the right lung (on the image's
left, radiological view), 2 the left lung (on the image's right).

Methods:

- ``"classical"`` (default, ~ms per slice): air threshold inside the body (-320 HU; Otsu for display
  PNGs), remove the outside air and the trachea / main bronchi, keep the two largest components
  (a single component spanning the midline is split along its narrowest central column), then per lung
  fill holes and close with a disk limited to the lung's convex hull, so that dense lesions
  (consolidation, ground glass at the pleura) stay inside the mask. Works at <= 256 px and upsamples.
- ``"envelope"``: the CT-COV19 study's active contour, one envelope around both lungs
  (reproduction only, ~2 s per 512 px slice). Split at the body's midline into the two labels.
- ``"model"``: a trained segmenter (run folder or ``.keras`` file from ``covidct segment train``), given
  as ``model=``; its foreground is labelled like the classical mask.

``check_lung_mask(labels)`` is the plausibility check used by benchmarks: a mask is suspicious when its
area is outside ``PLAUSIBLE_AREA_FRACTION`` of the image, when a lung is missing, or when one lung is more
than ``MAX_LUNG_AREA_RATIO`` times the other.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from skimage.filters import gaussian
from skimage.segmentation import active_contour

from covidct.data.io import CTImage
from covidct.data.mask_datasets import register_lung_mask
from covidct.errors import CovidctError, unknown_name_error
from covidct.models.inference import (
    is_pretrained_checkpoint,
    load_model_file,  # a truncated or foreign file is named
    predict_mask_probabilities,
)
from covidct.preprocess.body import (
    SliceAnalysis,
    analyse_slice,
    convex_hull,
    disk,
    fill_holes,
    mask_bbox,
    resize_mask,
    to_display_u8,
    to_gray,
)

LUNG_METHODS = ("classical", "envelope", "model")
RIGHT_LUNG, LEFT_LUNG = 1, 2
#: Lungs (both together) usually cover 5%-60% of a chest slice: ~10-25% of a full field-of-view slice,
#: up to ~60% of a tight lung crop (sars-cov-2-ct). Outside this range a mask is flagged as suspicious.
PLAUSIBLE_AREA_FRACTION = (0.03, 0.65)
#: Two lungs of one slice differ in area by more than this factor only with pathology or a bad mask.
MAX_LUNG_AREA_RATIO = 5.0
#: A lung below this fraction of its partner's area is completed with the partner's mirror image.
MIRROR_AREA_RATIO = 0.5
#: Fraction of a hull bay's border that must be lung for the bay to count as a lesion (see _enclosed_bays).
BAY_ENCLOSURE = 0.75


class LungMaskWarning(UserWarning):
    """A lung mask is empty or implausible (see ``check_lung_mask``)."""


@dataclass
class LungMaskCheck:
    """Result of ``check_lung_mask``: ``plausible`` is False when any reason was found."""

    plausible: bool
    area_fraction: float
    lungs_found: int
    reasons: list = field(default_factory=list)


def check_lung_mask(labels: np.ndarray) -> LungMaskCheck:
    """Flag an implausible lung mask.

    Args:
        labels: uint8 (H, W) with 0 background, 1 right lung, 2 left lung (any non-zero value counts as lung).

    Returns:
        A ``LungMaskCheck`` with the area fraction, the number of lungs found and the reasons it is suspicious.
    """
    labels = np.asarray(labels)
    area_fraction = float((labels > 0).mean()) if labels.size else 0.0
    areas = [int((labels == value).sum()) for value in (RIGHT_LUNG, LEFT_LUNG)]
    lungs_found = sum(area > 0 for area in areas)
    reasons = []
    low, high = PLAUSIBLE_AREA_FRACTION
    if area_fraction == 0:
        reasons.append("no lung found")
    elif not low <= area_fraction <= high:
        reasons.append(f"lung area {area_fraction:.1%} of the image is outside {low:.0%}-{high:.0%}")
    if 0 < lungs_found < 2:
        reasons.append("only one lung found")
    if lungs_found == 2 and max(areas) > MAX_LUNG_AREA_RATIO * min(areas):
        reasons.append(f"one lung is {max(areas) / min(areas):.1f}x the other")
    return LungMaskCheck(not reasons, area_fraction, lungs_found, reasons)


def lung_mask(
    image,
    method: str = "classical",
    unit: str | None = None,
    model=None,
    warn: bool = True,
) -> np.ndarray:
    """Segment the lungs of one slice.

    Args:
        image: a ``CTImage`` (2D), an (H, W) array in HU or display grey levels, or an RGB(A) screenshot.
        method: ``"classical"`` (default), ``"envelope"`` (the CT-COV19 study's active contour) or ``"model"``.
        unit: ``"HU"`` or ``"display"``; default: the CTImage's unit, else HU when the minimum is < -100.
        model: for ``method="model"``: a run folder, a ``.keras`` path or a loaded ``keras.Model``.
        warn: emit a ``LungMaskWarning`` when the mask is empty or implausible.

    Returns:
        uint8 (H, W) labels: 0 background, 1 right lung (image left), 2 left lung (image right).
    """
    if method not in LUNG_METHODS:
        raise unknown_name_error("lung-mask method", method, LUNG_METHODS)
    if unit is not None:
        if unit not in ("HU", "display"):
            raise CovidctError(f"unit must be 'HU' or 'display', got {unit!r}.")
        gray, _ = to_gray(image)

        image = CTImage(gray, unit, path=getattr(image, "path", ""))
    if method == "classical":
        labels = _classical(image)
    elif method == "envelope":
        labels = _envelope(image)
    else:
        if model is None:
            raise CovidctError("method='model' needs model=<run folder, .keras file or keras.Model>.")
        labels = _model_mask(image, model)
    if warn:
        check = check_lung_mask(labels)
        if not check.plausible:
            path = getattr(image, "path", "")
            warnings.warn(
                f"Suspicious lung mask ({method}){' for ' + str(path) if path else ''}: "
                f"{'; '.join(check.reasons)}.",
                LungMaskWarning,
                stacklevel=2,
            )
    return labels


def binary_lungs(labels: np.ndarray) -> np.ndarray:
    """uint8 {0, 1} union of both lungs."""
    return (np.asarray(labels) > 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------- classical


def _split_merged(component: np.ndarray, center_col: float) -> np.ndarray:
    """Cut one component spanning the midline at its narrowest column near the centre; returns labels."""
    cols = np.flatnonzero(component.any(axis=0))
    left, right = cols[0], cols[-1]
    width = right - left + 1
    lo = max(left, int(round(center_col - 0.15 * width)))
    hi = min(right, int(round(center_col + 0.15 * width)))
    counts = component.sum(axis=0)
    cut = lo + int(np.argmin(counts[lo : hi + 1])) if hi > lo else int(round(center_col))
    labels = np.zeros(component.shape, dtype=np.uint8)
    labels[:, :cut][component[:, :cut]] = RIGHT_LUNG
    labels[:, cut + 1 :][component[:, cut + 1 :]] = LEFT_LUNG
    return labels


def _pick_lungs(analysis: SliceAnalysis) -> np.ndarray:
    """Lung labels at the working resolution (before the lesion-recovering closing)."""
    candidates = (analysis.air & analysis.body).astype(np.uint8)
    # Diseased lungs (reticulation, crazy paving) fall apart into many air pockets separated by thin bright
    # septa: a small closing joins them (the mediastinum is far wider than this disk).
    side = max(candidates.shape)
    candidates = cv2.morphologyEx(candidates, cv2.MORPH_CLOSE, disk(max(1, round(0.012 * side))))
    candidates &= analysis.body.astype(np.uint8)
    # A light opening breaks thin air bridges (anterior junction, trachea touching a lung).
    candidates = cv2.morphologyEx(candidates, cv2.MORPH_OPEN, disk(1)).astype(bool)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(candidates.astype(np.uint8), connectivity=4)
    result = np.zeros(candidates.shape, dtype=np.uint8)
    if count <= 1:
        return result
    body_area = max(int(analysis.body.sum()), 1)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = 1 + np.argsort(areas)[::-1]
    # Components smaller than 1% of the body are trachea, bronchi, bowel gas or noise.
    order = [i for i in order if stats[i, cv2.CC_STAT_AREA] >= 0.01 * body_area]
    if not order:
        return result
    largest = order[0]
    kept = [largest] + [i for i in order[1:2] if stats[i, cv2.CC_STAT_AREA] >= 0.1 * stats[largest, cv2.CC_STAT_AREA]]
    body_cols = np.flatnonzero(analysis.body.any(axis=0))
    center_col = 0.5 * (body_cols[0] + body_cols[-1]) if body_cols.size else candidates.shape[1] / 2
    if len(kept) == 1:
        component = labels == largest
        left = stats[largest, cv2.CC_STAT_LEFT]
        right = left + stats[largest, cv2.CC_STAT_WIDTH] - 1
        body_width = max(body_cols[-1] - body_cols[0] + 1, 1) if body_cols.size else candidates.shape[1]
        if left < center_col < right and stats[largest, cv2.CC_STAT_WIDTH] > 0.45 * body_width:
            return _split_merged(component, center_col)
        result[component] = RIGHT_LUNG if centroids[largest][0] < center_col else LEFT_LUNG
        return result
    first, second = sorted(kept, key=lambda i: centroids[i][0])
    result[labels == first] = RIGHT_LUNG
    result[labels == second] = LEFT_LUNG
    return result


def _mirror_fill(labels: np.ndarray, analysis: SliceAnalysis) -> np.ndarray:
    """Give a lung much smaller than its partner the partner's mirror image (inside the body).

    Lobar consolidation or a large pleural lesion removes a whole region of one lung from the air
    threshold; the other lung, mirrored about the body's midline, says where that lung should be.
    Only used when one lung is less than ``MIRROR_AREA_RATIO`` of the other.
    """
    areas = [int((labels == value).sum()) for value in (RIGHT_LUNG, LEFT_LUNG)]
    if min(areas) == 0 or min(areas) >= MIRROR_AREA_RATIO * max(areas):
        return labels
    small = RIGHT_LUNG if areas[0] < areas[1] else LEFT_LUNG
    other = LEFT_LUNG if small == RIGHT_LUNG else RIGHT_LUNG
    body_cols = np.flatnonzero(analysis.body.any(axis=0))
    middle = body_cols[0] + body_cols[-1]  # twice the midline column
    width = labels.shape[1]
    source = middle - np.arange(width)
    valid = (source >= 0) & (source < width)
    mirrored = np.zeros(labels.shape, dtype=bool)
    mirrored[:, valid] = labels[:, source[valid]] == other
    candidate = ((mirrored & analysis.body & (labels == 0)) | (labels == small)).astype(np.uint8)
    count, components = cv2.connectedComponents(candidate, connectivity=4)
    touching = np.unique(components[labels == small])
    grown = np.isin(components, touching[touching > 0])
    result = labels.copy()
    result[grown & (labels == 0)] = small
    return result


def _enclosed_bays(lung: np.ndarray, hull: np.ndarray) -> np.ndarray:
    """Bays of the lung's convex hull deficiency that the lung encloses (a lesion bitten into the lung).

    A bay is a connected part of hull - lung. Its border runs partly along the lung and partly along the
    hull's chord (the bay's mouth). The mediastinal indentation (heart, hilum) is a wide, shallow bay
    (about half of its border is the mouth); a dense lesion at the pleura or the mediastinum leaves a deep
    bay with a narrow mouth. Bays whose border is at least ``BAY_ENCLOSURE`` lung are filled.
    """
    # An opening drops the thin slivers between a convex lung border and its hull.
    deficiency = cv2.morphologyEx((hull & ~lung).astype(np.uint8), cv2.MORPH_OPEN, disk(2))
    count, labels = cv2.connectedComponents(deficiency, connectivity=4)
    result = np.zeros(lung.shape, dtype=bool)
    if count <= 1:
        return result
    edge = deficiency & ~cv2.erode(deficiency, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    lung_ring = cv2.dilate(lung.astype(np.uint8), disk(3)).astype(bool)
    edge_labels = labels[edge.astype(bool)]
    on_lung = np.bincount(edge_labels[lung_ring[edge.astype(bool)]], minlength=count)
    total = np.bincount(edge_labels, minlength=count)
    enclosed = on_lung >= BAY_ENCLOSURE * np.maximum(total, 1)
    enclosed[0] = False
    return enclosed[labels]


def _recover_lesions(labels: np.ndarray, analysis: SliceAnalysis) -> np.ndarray:
    """Per lung: fill holes, close with a disk inside the lung's convex hull and the body, fill again."""
    labels = _mirror_fill(labels, analysis)
    result = np.zeros(labels.shape, dtype=np.uint8)
    side = max(labels.shape)
    radius = max(2, int(round(0.035 * side)))
    kernel = disk(radius)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        lung = labels == value
        if not lung.any():
            continue
        top, bottom, left, right = mask_bbox(lung)
        pad = radius + 1
        # Work on the lung's box (padded) so the closing is cheap and cannot reach the other lung.
        y0, y1 = max(0, top - pad), min(lung.shape[0], bottom + pad)
        x0, x1 = max(0, left - pad), min(lung.shape[1], right + pad)
        crop = lung[y0:y1, x0:x1].astype(np.uint8)
        crop = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        closed = cv2.morphologyEx(crop, cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad].astype(bool)
        hull = convex_hull(lung[y0:y1, x0:x1])
        grown = fill_holes((closed & hull & analysis.body[y0:y1, x0:x1]) | lung[y0:y1, x0:x1])
        grown |= _enclosed_bays(grown, hull) & analysis.body[y0:y1, x0:x1]
        region = result[y0:y1, x0:x1]
        region[grown & (region == 0)] = value
    return result


class _Gray:
    """A converted slice passed on without converting it again."""

    def __init__(self, array: np.ndarray, unit: str):
        self.array, self.unit = array, unit


def _classical(image) -> np.ndarray:
    gray, unit = to_gray(image)
    analysis = analyse_slice(_Gray(gray, unit))
    if analysis.fallback and analysis.air.all():
        return np.zeros(gray.shape, dtype=np.uint8)
    labels = _recover_lesions(_pick_lungs(analysis), analysis)
    return _upsample_labels(labels, gray.shape)


def _upsample_labels(labels: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    if labels.shape == tuple(shape_hw):
        return labels.astype(np.uint8)
    result = np.zeros(shape_hw, dtype=np.uint8)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        if (labels == value).any():
            result[resize_mask(labels == value, shape_hw) & (result == 0)] = value
    return result


def _label_by_side(foreground: np.ndarray, shape_hw) -> np.ndarray:
    """Label a binary lung foreground: two largest components (left/right), or split at the midline."""
    fake = SliceAnalysis(
        gray=np.zeros(foreground.shape, np.float32),
        unit="display",
        air=foreground.astype(bool),
        body=np.ones(foreground.shape, bool),
        hull=np.ones(foreground.shape, bool),
        threshold=0.0,
        fallback=False,
        scale=1.0,
    )
    return _upsample_labels(_pick_lungs(fake), shape_hw)


# --------------------------------------------------------------------------------------------- envelope


def _envelope(image) -> np.ndarray:
    """The CT-COV19 study's lung envelope: active contour on gaussian(img, 3) from a 500-point circle of radius 250 (at 512 px)."""
    display = to_display_u8(image)
    height, width = display.shape
    body = analyse_slice(image)
    rows, cols = np.nonzero(body.body)
    if rows.size:
        center = (rows.mean() / body.scale, cols.mean() / body.scale)
    else:
        center = (height / 2, width / 2)
    # The original study used radius 250 on 512 px slices: scale it with the image.
    radius = 250.0 * max(height, width) / 512.0
    angles = np.linspace(0, 2 * np.pi, 500)
    init = np.column_stack([center[0] + radius * np.sin(angles), center[1] + radius * np.cos(angles)])
    snake = active_contour(
        gaussian(display / 255.0, 3, preserve_range=True),
        init,
        alpha=0.1,
        beta=10,
        gamma=0.001,
        max_num_iter=2500,
        boundary_condition="periodic",
    )
    filled = np.zeros((height, width), dtype=np.uint8)
    polygon = np.round(snake[:, ::-1]).astype(np.int32)
    cv2.fillPoly(filled, [polygon], 1)
    labels = np.zeros((height, width), dtype=np.uint8)
    mid = int(round(center[1]))
    labels[:, :mid][filled[:, :mid] > 0] = RIGHT_LUNG
    labels[:, mid:][filled[:, mid:] > 0] = LEFT_LUNG
    return labels


# --------------------------------------------------------------------------------------------- model

_MODEL_CACHE: dict = {}


def load_segmenter(model):
    """Load a segmenter from a run folder (``model.keras`` inside) or a ``.keras`` file (cached)."""
    if not isinstance(model, str | Path):
        return model
    path = Path(model)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise CovidctError(
            f"No segmenter at {path}: pass a run folder from `covidct segment train` or a .keras file."
        )

    if is_pretrained_checkpoint(path):
        raise CovidctError(
            f"{path} is a self-supervised pretraining checkpoint (task: pretrain): it restores images, it does not "
            "segment. Fine-tune it first (task: segmentation with model.weights) and use that run."
        )
    key = str(path.resolve())
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_model_file(path, "Segmenter")
    return _MODEL_CACHE[key]


def predict_foreground(
    model, images_u8: np.ndarray, threshold: float = 0.5, batch_size: int = 16, tta: bool = False
) -> np.ndarray:
    """Run a segmenter on display uint8 slices of any size; returns bool (N, H, W) at the input size.

    Args:
        model: a loaded keras.Model (logits, 1 channel) or a path accepted by ``load_segmenter``.
        images_u8: (N, H, W) or (N, H, W, 1) uint8 display images (all the same size).
        threshold: probability threshold on sigmoid(logits).
        batch_size: prediction batch size.
        tta: average the probabilities with the left-right mirror's, mirrored back.

    Returns:
        bool (N, H, W).
    """
    model = load_segmenter(model)
    images = np.asarray(images_u8)
    if images.ndim == 4:
        images = images[..., 0]
    _, size_h, size_w = model.input_shape[:3] if len(model.input_shape) == 4 else (None, None, None)
    n, height, width = images.shape
    if size_h is not None and (size_h, size_w) != (height, width):
        batch = np.stack([cv2.resize(im, (size_w, size_h), interpolation=cv2.INTER_AREA) for im in images])
    else:
        batch = images
    probabilities = predict_mask_probabilities(model, batch[..., None].astype(np.float32), batch_size, tta)
    if probabilities.shape[1:] != (height, width):
        probabilities = np.stack(
            [cv2.resize(p.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) for p in probabilities]
        )
    return probabilities >= threshold


def _model_mask(image, model) -> np.ndarray:
    display = to_display_u8(image)
    foreground = predict_foreground(model, display[None])[0]
    return _label_by_side(foreground, display.shape)


register_lung_mask(lung_mask)  # the MedSeg orientation check of the data layer uses it
