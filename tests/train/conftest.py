"""Small phantom training data shared by the training tests (no cache, no files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import covidct.models.simple_cnn  # noqa: F401  (registers simple_cnn / small_cnn)
from covidct.config import RunConfig, config_from_dict
from covidct.train.data import data_from_arrays


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
    images, manifest = phantom_arrays()
    return data_from_arrays(images, manifest, source="phantom")


def make_tiny_config(**training) -> RunConfig:
    """A fast config: simple_cnn, 48 px, few epochs, no probe, float32."""
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


@pytest.fixture()
def tiny_config():
    """The ``make_tiny_config(**training_overrides)`` factory."""
    return make_tiny_config
