"""The same train(cfg) on the JAX backend (run with KERAS_BACKEND=jax pytest -m jax)."""

from __future__ import annotations

import sys

import keras
import pandas as pd
import pytest


class _NoTensorFlow:
    """A meta-path finder that makes ``import tensorflow`` fail, as on a machine without it."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("tensorflow is blocked in this test (the GPU benchmark machine has none)")
        return None


@pytest.mark.jax
def test_train_and_evaluate_on_jax_without_tensorflow(phantom_data, tiny_config, tmp_path, monkeypatch):
    if keras.backend.backend() != "jax":
        pytest.skip("run with KERAS_BACKEND=jax")
    if "tensorflow" in sys.modules:
        pytest.skip("tensorflow was imported earlier in this process")
    monkeypatch.setattr(sys, "meta_path", [_NoTensorFlow(), *sys.meta_path])
    from covidct.evaluate import evaluate_run
    from covidct.train import train

    cfg = tiny_config(epochs=2, max_steps_per_epoch=2, augmentation="stage", class_weight="balanced")
    run = train(cfg, run_dir=tmp_path / "jax", data=phantom_data, progress=False)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2 and history["loss"].notna().all()
    result = evaluate_run(run, data=phantom_data, n_bootstrap=10, figures=True)
    assert 0.0 <= result["slice"]["auc_macro_ovr"] <= 1.0
    assert "tensorflow" not in sys.modules
