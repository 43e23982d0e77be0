"""The same train(cfg) on the JAX backend (run with KERAS_BACKEND=jax pytest -m jax)."""

from __future__ import annotations

import sys

import keras
import pandas as pd
import pytest


@pytest.mark.jax
def test_train_and_evaluate_on_jax_without_tensorflow(phantom_data, tiny_config, tmp_path):
    if keras.backend.backend() != "jax":
        pytest.skip("run with KERAS_BACKEND=jax")
    from covidct.evaluate import evaluate_run
    from covidct.train import train

    cfg = tiny_config(epochs=2, max_steps_per_epoch=2, augmentation="stage", class_weight="balanced")
    run = train(cfg, run_dir=tmp_path / "jax", data=phantom_data, progress=False)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2 and history["loss"].notna().all()
    result = evaluate_run(run, data=phantom_data, n_bootstrap=10, figures=False)
    assert 0.0 <= result["slice"]["auc_macro_ovr"] <= 1.0
    # The GPU benchmark machine has no TensorFlow: the training path must not need it.
    assert "tensorflow" not in sys.modules
