"""Grad-CAM under the JAX backend (run by ``KERAS_BACKEND=jax pytest -m jax``).

The same closed-form answers as the TensorFlow tests: the hand-built model's map, and the class
activation map of a nested base followed by GAP + Dense (a small Functional base: keras.applications
models take minutes to initialise on JAX on CPU). Matching them on both backends means the two backends
agree on the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.jax


@pytest.fixture(autouse=True)
def _require_jax():
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip(f"runs under KERAS_BACKEND=jax (this process uses {keras.backend.backend()})")


@pytest.mark.parametrize("method", ["gradcam", "guided", "gradcam++"])
def test_known_answer_model_on_jax(known_answer, method):
    from covidct.explain.gradcam import compute_cams

    build, image_fn, expected_fn = known_answer
    model, image = build(), image_fn()
    for class_index in (0, 1):
        result = compute_cams(model, image, class_index=class_index, layer_name="features", method=method)
        sign_class = class_index if method == "gradcam" else 0
        np.testing.assert_allclose(result.heatmaps[0], expected_fn(image, sign_class), atol=1e-5)
    batch = np.random.default_rng(0).uniform(0, 255, (5, 5, 6, 1)).astype(np.float32)
    heatmaps = compute_cams(
        model, batch, class_index=[1, 0, 1, 0, 1], layer_name="features", method=method, batch_size=2
    ).heatmaps
    for i, class_index in enumerate([1, 0, 1, 0, 1]):
        expected = expected_fn(batch[i : i + 1], class_index if method == "gradcam" else 0)
        np.testing.assert_allclose(heatmaps[i], expected, atol=1e-5)


@pytest.mark.parametrize("layer_name", ["backbone", "backbone/relu_b", "relu_b"])
def test_nested_base_on_jax(nested_small, class_activation_map, layer_name):
    import keras

    from covidct.explain.gradcam import compute_cams

    model, base = nested_small()
    images = np.random.default_rng(2).uniform(0, 255, (3, 16, 16, 1)).astype(np.float32)
    result = compute_cams(model, images, class_index=[0, 1, 1], layer_name=layer_name)
    features = keras.ops.convert_to_numpy(base(np.repeat(images / 255.0, 3, axis=-1), training=False))
    kernel = model.get_layer("logits").get_weights()[0]
    for i, class_index in enumerate([0, 1, 1]):
        expected = class_activation_map(features[i], kernel, class_index, 16)
        np.testing.assert_allclose(result.heatmaps[i], expected, atol=2e-4)
    constant = compute_cams(model, np.full((3, 16, 16, 1), 90.0, np.float32), method="gradcam++").heatmaps
    assert np.all(np.isfinite(constant)) and constant.min() >= 0.0 and constant.max() <= 1.0
