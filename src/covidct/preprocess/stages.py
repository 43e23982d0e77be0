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

from covidct.data.stage import StageOutput
from covidct.errors import CovidctError, unknown_name_error

__all__ = ["STAGES", "StageOutput", "get_stage", "register_stage"]

STAGES: dict[str, Callable] = {}


def register_stage(name: str):
    """Decorator that registers ``fn`` as preprocessing stage ``name`` (also set as ``fn.stage_name``)."""

    def decorator(fn: Callable) -> Callable:
        if name in STAGES:
            raise CovidctError(f"A stage named {name!r} is already registered.")
        fn.stage_name = name  # the name the cache gives its folder (covidct.data.stage.stage_name)
        STAGES[name] = fn
        return fn

    return decorator


def get_stage(name: str) -> Callable:
    """Return a registered stage; unknown names raise with close matches."""
    if name not in STAGES:
        raise unknown_name_error("stage", name, STAGES)
    return STAGES[name]
