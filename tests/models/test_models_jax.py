"""The registry on the JAX backend: models build, run forward and take one gradient step.

Run in its own process: ``KERAS_BACKEND=jax pytest -m jax tests/models``. Building and running Keras
models eagerly on JAX/CPU is slow (every layer is traced; EfficientNetB0 alone takes ~1 min on 2
cores), so ``make test`` covers a fast subset, ``JAX_FAST``: the small from-scratch 2D nets and one 3D net.
``COVIDCT_JAX_ALL=1`` runs the whole registry (25 tests; all pass, ~30 min on 2 shared cores).
The GPU benchmark (benchmarks/bench_models.py --backend jax) also runs bit_r50x1, efficientnet_b0,
resnet50 and resnet18 forward and backward on JAX.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.jax

JAX_FAST = ("small_cnn", "simple_cnn", "transfusion_tiny", "cnn3d_covidscan")
GRADIENT_FAST = ("small_cnn", "cnn3d_covidscan")
GRADIENT_ALL = ("small_cnn", "simple_cnn", "transfusion_tiny", "resnet18", "unet", "cnn3d_covidscan")
RUN_ALL = os.environ.get("COVIDCT_JAX_ALL") == "1"


def _require_jax():
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("run with KERAS_BACKEND=jax (make test-jax)")


def _names():
    from covidct.models import list_models

    return list_models() if RUN_ALL else list(JAX_FAST)


@pytest.mark.parametrize("name", _names())
def test_builds_and_runs_forward_on_jax(name, make_inputs):
    _require_jax()
    import keras

    from covidct.models import build_model, get_spec

    spec = get_spec(name)
    num_classes = 1 if spec.task == "segmentation" else 3
    model = build_model(name, input_shape=spec.test_input_shape, num_classes=num_classes)
    y = keras.ops.convert_to_numpy(model(make_inputs(spec), training=False))
    expected = (2, *spec.test_input_shape[:2], 1) if spec.task == "segmentation" else (2, 3)
    assert y.shape == expected and np.isfinite(y).all()
    if spec.gradcam_layer:
        assert model.get_layer(spec.gradcam_layer).output.shape[-1] > 0


@pytest.mark.parametrize("name", GRADIENT_ALL if RUN_ALL else GRADIENT_FAST)
def test_one_training_step_on_jax_changes_the_weights(name, make_inputs):
    _require_jax()
    import keras

    from covidct.models import build_model, get_spec

    spec = get_spec(name)
    model = build_model(name, input_shape=spec.test_input_shape, num_classes=2)
    x = make_inputs(spec)
    if spec.task == "segmentation":
        y = np.zeros((2, *spec.test_input_shape[:2], 2), "float32")
        y[..., 0] = 1.0
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    else:
        y = np.array([0, 1])
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
    before = keras.ops.convert_to_numpy(model.get_layer("logits").kernel).copy()
    history = model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(keras.ops.convert_to_numpy(model.get_layer("logits").kernel), before)
