"""Shared helpers for the model tests: one built model per registry name, reused across tests."""

from __future__ import annotations

import numpy as np
import pytest


def _make_inputs(spec, batch: int = 2, seed: int = 0):
    """Random inputs in the toolkit's [0, 255] range at the spec's small test shape."""
    rng = np.random.default_rng(seed)
    shape = (batch, *(spec.test_input_shape or spec.input_shape))
    image = rng.uniform(0, 255, shape).astype("float32")
    if len(spec.inputs) == 1:
        return image
    # A lung-like mask: 255 inside a centred box, 0 outside (the masked-pair convention).
    mask = np.zeros(shape[:-1] + (1,), "float32")
    h, w = shape[1], shape[2]
    mask[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255.0
    return [image, mask]


@pytest.fixture(scope="session")
def built_models():
    """Build each model once (at its test shape, 3 classes or 1 mask channel) and cache it."""
    from covidct.models import build_model, get_spec

    cache = {}

    def get(name):
        if name not in cache:
            spec = get_spec(name)
            num_classes = 1 if spec.task == "segmentation" else 3
            cache[name] = build_model(name, input_shape=spec.test_input_shape, num_classes=num_classes)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def make_inputs():
    """``make_inputs(spec, batch=2, seed=0)``: random [0, 255] inputs at the spec's test shape."""
    return _make_inputs
