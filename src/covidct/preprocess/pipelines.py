"""The named preprocessing stages (registered in ``covidct.preprocess.STAGES``, used by the cache).

Every stage is ``fn(image: CTImage, size: int) -> list[StageOutput]``, a pure function of the image.
HU images are first shown through the lung window (level -600, width 1500) as uint8; display images are
used as they are. Body and lung masks come from ``body_mask(method="hu")`` and
``lung_mask(method="classical")``; every stage returns the binary lung mask it used (or, when no lung is
found, the body mask) resampled exactly like its image, so Grad-CAM can score attention inside the lungs.

Aspect ratio: a crop is padded with zeros to a square (centred) before it is resized to ``size``, so
anatomy is never stretched.

Stages:

- ``original``: the whole slice.
- ``nobackg``: the slice with everything outside the body set to 0.
- ``crop``: ``nobackg`` cropped to the body's bounding box.
- ``lungs-nocrop``: the slice times the lung mask, uncropped.
- ``lungs``: ``lungs-nocrop`` cropped to the lungs' bounding box plus a 5% margin.
- ``lungs-3window``: as ``lungs`` with three channels: for HU images the lung (-600/1500),
  mediastinum (40/400) and keras-io (-1000..400) windows; for display images the grey level repeated.
- ``masked-pair``: two channels, the whole slice and the lung mask * 255 (masked EfficientNet of Covid-detection-with-CT-scans).
- ``halves``: two samples, the body crop cut at the midline between the lungs, suffixes ``"right"``
  (image left = the patient's right lung) and ``"left"`` (covid_from_ctscan).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from covidct.data.windows import WINDOWS, window_hu
from covidct.preprocess.body import (
    body_mask,
    crop_to_body,
    mask_bbox,
    remove_background,
    resize_mask,
    to_display_u8,
    to_gray,
)
from covidct.preprocess.lungs import LEFT_LUNG, RIGHT_LUNG, lung_mask
from covidct.preprocess.stages import StageOutput, register_stage

logger = logging.getLogger(__name__)

LUNG_CROP_MARGIN = 0.05
THREE_WINDOWS = ("lung", "mediastinum", "keras_io")


def square_pad(image: np.ndarray, mask: np.ndarray | None = None):
    """Pad an image (and mask) with zeros to a centred square; returns (image, mask)."""
    height, width = image.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    pads = ((top, side - height - top), (left, side - width - left)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image, pads)
    padded_mask = None if mask is None else np.pad(mask, pads[:2])
    return padded, padded_mask


def fit_to_size(
    image: np.ndarray, mask: np.ndarray, size: int, masked: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Pad to a square, then resize the image (area/linear) and mask (``resize_mask``) to ``size`` x ``size``.

    Args:
        image: uint8 (H, W) or (H, W, C).
        mask: (H, W) {0, 1}.
        size: output side in pixels.
        masked: set the resized image to 0 outside the resized mask, so that a masked image and its mask
            agree pixel for pixel after resampling.

    Returns:
        (uint8 (size, size, C), uint8 (size, size) {0, 1}).
    """
    image, mask = square_pad(image, mask)
    side = image.shape[0]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    resized = cv2.resize(image, (size, size), interpolation=interpolation)
    if resized.ndim == 2:
        resized = resized[..., None]
    mask_resized = resize_mask(mask, (size, size))
    if masked:
        resized = resized * mask_resized[..., None]
    return resized.astype(np.uint8), mask_resized.astype(np.uint8)


def _masks(image):
    """Display image, body mask, lung labels and the binary mask stages return (lungs, else body)."""
    display = to_display_u8(image)
    body = body_mask(image)
    # A LungMaskWarning reaches the caller as a warning: a cache build sums them up per file.
    labels = lung_mask(image)
    lungs = (labels > 0).astype(np.uint8)
    if not lungs.any():
        # No lung found (abdomen slice, blank image): fall back to the body so crops stay defined.
        lungs = body.copy()
    return display, body, labels, lungs


@register_stage("original")
def original(image, size: int) -> list[StageOutput]:
    """The whole slice, padded to a square and resized."""
    display, _, _, lungs = _masks(image)
    out, mask = fit_to_size(display, lungs, size)
    return [StageOutput(out, mask)]


@register_stage("nobackg")
def nobackg(image, size: int) -> list[StageOutput]:
    """The slice with the background (outside the body) set to 0."""
    display, body, _, lungs = _masks(image)
    out, mask = fit_to_size(remove_background(display, body), lungs, size)
    return [StageOutput(out, mask)]


@register_stage("crop")
def crop(image, size: int) -> list[StageOutput]:
    """The background-free slice cropped to the body's bounding box."""
    display, body, _, lungs = _masks(image)
    cropped, _, (top, bottom, left, right) = crop_to_body(remove_background(display, body), body)
    out, mask = fit_to_size(cropped, lungs[top:bottom, left:right], size)
    return [StageOutput(out, mask)]


@register_stage("lungs-nocrop")
def lungs_nocrop(image, size: int) -> list[StageOutput]:
    """The slice times the lung mask, uncropped."""
    display, _, _, lungs = _masks(image)
    out, mask = fit_to_size(remove_background(display, lungs), lungs, size, masked=True)
    return [StageOutput(out, mask)]


def _lung_box(lungs: np.ndarray) -> tuple[int, int, int, int]:
    return mask_bbox(lungs, margin=LUNG_CROP_MARGIN)


@register_stage("lungs")
def lungs_crop(image, size: int) -> list[StageOutput]:
    """The lung-masked slice cropped to the lungs' bounding box plus a 5% margin."""
    display, _, _, lungs = _masks(image)
    top, bottom, left, right = _lung_box(lungs)
    masked = remove_background(display, lungs)
    out, mask = fit_to_size(masked[top:bottom, left:right], lungs[top:bottom, left:right], size, masked=True)
    return [StageOutput(out, mask)]


@register_stage("lungs-3window")
def lungs_3window(image, size: int) -> list[StageOutput]:
    """As ``lungs`` with three channels (three HU windows for HU images, repeated grey otherwise)."""
    display, _, _, lungs = _masks(image)
    gray, unit = to_gray(image)
    if unit == "HU":
        channels = [window_hu(gray, *WINDOWS[name]) * 255.0 for name in THREE_WINDOWS]
        stacked = np.round(np.stack(channels, axis=-1)).astype(np.uint8)
    else:
        stacked = np.repeat(display[..., None], 3, axis=-1)
    top, bottom, left, right = _lung_box(lungs)
    masked = remove_background(stacked, lungs)
    out, mask = fit_to_size(masked[top:bottom, left:right], lungs[top:bottom, left:right], size, masked=True)
    return [StageOutput(out, mask)]


@register_stage("masked-pair")
def masked_pair(image, size: int) -> list[StageOutput]:
    """Two channels: the whole slice and the lung mask * 255 (for the masked EfficientNet)."""
    display, _, _, lungs = _masks(image)
    pair = np.stack([display, lungs * 255], axis=-1).astype(np.uint8)
    out, mask = fit_to_size(pair, lungs, size)
    out[..., 1] = mask * 255  # the mask channel is the resized mask exactly
    return [StageOutput(out, mask)]


def midline_column(labels: np.ndarray, body: np.ndarray) -> int:
    """Column between the two lungs (midway between the right lung's right edge and the left lung's left
    edge); the body's centre column when a lung is missing."""
    right_cols = np.flatnonzero((labels == RIGHT_LUNG).any(axis=0))
    left_cols = np.flatnonzero((labels == LEFT_LUNG).any(axis=0))
    if right_cols.size and left_cols.size:
        return int(round((right_cols[-1] + left_cols[0]) / 2))
    body_cols = np.flatnonzero(body.any(axis=0))
    if body_cols.size:
        return int(round((body_cols[0] + body_cols[-1]) / 2))
    return labels.shape[1] // 2


@register_stage("halves")
def halves(image, size: int) -> list[StageOutput]:
    """Two samples: the body crop cut at the midline; suffix "right" (image left) and "left"."""
    display, body, labels, lungs = _masks(image)
    middle = midline_column(labels, body)
    masked = remove_background(display, body)
    top, bottom, left, right = mask_bbox(body)
    middle = min(max(middle, left + 1), right - 1)
    outputs = []
    for suffix, (start, stop) in (("right", (left, middle)), ("left", (middle, right))):
        out, mask = fit_to_size(masked[top:bottom, start:stop], lungs[top:bottom, start:stop], size)
        outputs.append(StageOutput(out, mask, suffix))
    return outputs
