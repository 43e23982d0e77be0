"""Registry of named preprocessing stages (used by the cache).

A stage turns one decoded image into one or more fixed-size samples::

    stage_fn(image: covidct.data.io.CTImage, size: int) -> list[StageOutput]

``image.array`` is float32 (H, W); ``image.unit`` is ``"HU"`` or ``"display"`` (0-255).
Each ``StageOutput`` holds ``image`` (uint8, (size, size, C)), the lung/body ``mask`` it used
(uint8 {0, 1}, (size, size)) so Grad-CAM can score attention inside the lungs, and a ``suffix``
that tells samples of one input apart (``"left"``/``"right"`` for ``halves``; ``""`` otherwise).
Stages must be pure functions of the image (never of its label): class-dependent preprocessing is a
leak some of the original projects made and covidct makes impossible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from covidct.errors import CovidctError, unknown_name_error


@dataclass(frozen=True)
class StageOutput:
    """One preprocessed sample: uint8 image (size, size, C), uint8 mask (size, size), suffix."""

    image: np.ndarray
    mask: np.ndarray
    suffix: str = ""


STAGES: dict[str, Callable] = {}


def register_stage(name: str):
    """Decorator that registers ``fn`` as preprocessing stage ``name``."""

    def decorator(fn: Callable) -> Callable:
        if name in STAGES:
            raise CovidctError(f"A stage named {name!r} is already registered.")
        STAGES[name] = fn
        return fn

    return decorator


def get_stage(name: str) -> Callable:
    """Return a registered stage; unknown names raise with close matches."""
    if name not in STAGES:
        raise unknown_name_error("stage", name, STAGES)
    return STAGES[name]
