"""Shared fixtures. KERAS_BACKEND defaults to tensorflow; real-data tests skip with a reason."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("COVIDCT_DATA_ROOT", REPO_ROOT / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real CT data folder (COVIDCT_DATA_ROOT, default ./data of the checkout); skips when missing."""
    root = _data_root()
    if not root.is_dir():
        pytest.skip(f"real CT data not found at {root} (set COVIDCT_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def crash_after_epoch(monkeypatch):
    """``with crash_after_epoch(k[, unit]): train(...)``: the run stops with "simulated crash" right after epoch
    ``k`` (0-based) has been recorded (only in the run folder named ``unit`` when given, e.g. ``"fold_1"``),
    as a killed process would leave it; the ``with`` block expects that crash and restores training after it."""
    import contextlib

    from covidct.train import loop as loop_module

    @contextlib.contextmanager
    def crash(epoch: int, unit: str | None = None):
        original = loop_module.Trainer.end_epoch

        def end_epoch(self, current, logs, seconds):
            original(self, current, logs, seconds)
            if current == epoch and (unit is None or self.run_dir.name == unit):
                raise RuntimeError("simulated crash")

        monkeypatch.setattr(loop_module.Trainer, "end_epoch", end_epoch)
        try:
            with pytest.raises(RuntimeError, match="simulated crash"):
                yield
        finally:
            monkeypatch.setattr(loop_module.Trainer, "end_epoch", original)

    return crash


# Phantom training data shared by tests/train and tests/evaluate (no cache, no files).
def phantom_arrays(n: int = 300, size: int = 48, seed: int = 0, slices_per_patient: int = 5):
    """Phantom slices as display uint8 (N, size, size, 1) + a manifest split by patient (60/20/20)."""
    from covidct.data.phantom import make_dataset
    from covidct.data.windows import window_hu

    phantoms = make_dataset(n=n, size=size, seed=seed, slices_per_patient=slices_per_patient)
    images = np.round(window_hu(phantoms.images_hu) * 255).astype(np.uint8)[..., None]
    groups = np.asarray(phantoms.groups)
    patients = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(patients))
    split_of = {}
    for rank, i in enumerate(order):
        fraction = rank / len(patients)
        split_of[patients[i]] = "train" if fraction < 0.6 else ("val" if fraction < 0.8 else "test")
    manifest = pd.DataFrame(
        {
            "path": [f"phantom/{i}.npy" for i in range(len(groups))],
            "label": phantoms.labels,
            "group": groups,
            "split": [split_of[g] for g in groups],
            "source": "phantom",
        }
    )
    return images, manifest


@pytest.fixture(scope="session")
def phantom_data():
    """Phantom slices (300, 48 px) wrapped as TrainingData, split 60/20/20 by patient."""
    import covidct.models.simple_cnn  # noqa: F401  (registers simple_cnn / small_cnn)
    from covidct.train.data import data_from_arrays

    images, manifest = phantom_arrays()
    return data_from_arrays(images, manifest, source="phantom")


def make_tiny_config(**training):
    """A fast config: simple_cnn, 48 px, few epochs, no probe, float32."""
    from covidct.config import config_from_dict

    base = {
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "shortcut_probe": False,
        "mixed_precision": "off",
        "min_epochs": 0,
        "early_stopping_patience": 0,
    }
    base.update(training)
    return config_from_dict(
        {
            "name": "tiny",
            "data": {"dataset": "phantom", "stage": "original", "size": 48},
            "model": {"name": "simple_cnn"},
            "training": base,
        }
    )


@pytest.fixture(scope="session")
def tiny_config():
    """The ``make_tiny_config(**training_overrides)`` factory."""
    return make_tiny_config
