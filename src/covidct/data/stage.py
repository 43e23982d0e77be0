"""What the slice cache asks of a preprocessing stage: the ``Stage`` protocol and its ``StageOutput``.

The cache (``covidct.data.cache.build_cache``) runs a stage object that its caller passes in; the data
layer never looks stages up by name (the named stages live in ``covidct.preprocess.stages``, one layer
up). A stage is any picklable callable (it runs in worker processes)::

    stage(image: covidct.data.io.CTImage, size: int) -> list[StageOutput]

with a ``stage_name`` attribute (the cache folder's prefix and part of its key; ``__name__`` when
missing). A stage that changes the geometry of the image (a crop) also defines
``target(mask, output, size) -> np.ndarray``: the ground-truth mask of the row (bool, at the source
resolution, already turned by ``mask_rot90``) in that output's geometry. Without it the mask is padded
to a centred square and resized (``full_field_target``), the geometry of the full-field stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from covidct.errors import CovidctError


@dataclass(frozen=True)
class StageOutput:
    """One preprocessed sample.

    Attributes:
        image: uint8 (size, size) or (size, size, C).
        mask: uint8 {0, 1} (size, size), the lung/body mask the stage used.
        suffix: tells samples of one input apart (``"left"``/``"right"`` for ``halves``; ``""`` otherwise).
        values: per-sample numbers stored as columns of the cache's manifest (e.g. a crop box).
    """

    image: np.ndarray
    mask: np.ndarray
    suffix: str = ""
    values: dict = field(default_factory=dict)


@runtime_checkable
class Stage(Protocol):
    """A preprocessing stage: one decoded image in, one or more fixed-size samples out."""

    def __call__(self, image, size: int) -> list[StageOutput]: ...


def stage_name(stage: Callable) -> str:
    """The name a stage object goes by in cache folders and keys (``stage_name``, else ``__name__``).

    Raises:
        CovidctError: a string (a stage's name) instead of a stage object, or not a callable.
    """
    if isinstance(stage, str):
        raise CovidctError(
            f"build_cache takes a stage object, not the name {stage!r}: pass "
            f"covidct.preprocess.get_stage({stage!r})."
        )
    if not callable(stage):
        raise CovidctError(f"a stage must be callable as stage(image, size), got {type(stage).__name__}.")
    name = getattr(stage, "stage_name", None) or getattr(stage, "__name__", None)
    if not name:
        raise CovidctError(f"stage {stage!r} has no stage_name: give it one (the cache folder's prefix).")
    return str(name)


def resize_mask(mask: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Resize a binary mask (any value > 0 is inside) to ``shape_hw``; returns bool.

    The {0, 1} mask is resampled like an image (area average when shrinking, linear when enlarging) and cut
    at 0.5, so a resized mask stays centred on its resized image. OpenCV's ``INTER_NEAREST`` is not used: it
    takes the first source pixel of each block, which at 512 -> 128 puts every mask 1.5 source pixels up and
    left of its area-averaged image.
    """
    mask = np.asarray(mask)
    shape_hw = (int(shape_hw[0]), int(shape_hw[1]))
    binary = (mask > 0).astype(np.float32)
    if binary.shape == shape_hw:
        return binary > 0
    shrinking = shape_hw[0] <= binary.shape[0] and shape_hw[1] <= binary.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(binary, (shape_hw[1], shape_hw[0]), interpolation=interpolation)
    return resized >= 0.5


def full_field_target(mask: np.ndarray, size: int) -> np.ndarray:
    """A mask padded with zeros to a centred square and resized to ``size`` x ``size``: uint8 {0, 1}."""
    mask = np.asarray(mask)
    height, width = mask.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = np.zeros((side, side), np.uint8)
    square[top : top + height, left : left + width] = mask > 0
    return resize_mask(square, (size, size)).astype(np.uint8)
