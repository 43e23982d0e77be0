"""Feature baselines: penultimate-layer features → scikit-learn, scored by the shared metric code."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import covidct.models.simple_cnn  # noqa: F401
from covidct.config import config_from_dict
from covidct.errors import CovidctError
from covidct.features import extract_features, feature_extractor, make_classifier, run_feature_baseline
from covidct.train.data import data_from_arrays


def _separable_data():
    # Class 1 images are bright, class 0 dark: any feature extractor + classifier must separate them.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    images = np.where(labels[:, None, None, None] == 1, 200, 40) + rng.integers(-20, 20, size=(80, 32, 32, 1))
    groups = [f"p{i // 2}" for i in range(80)]
    split = np.array(["train", "train", "val", "test"] * 20)
    manifest = pd.DataFrame(
        {"path": [f"x{i}" for i in range(80)], "label": np.where(labels == 1, "COVID", "nonCOVID"), "group": groups, "split": split, "source": "synthetic"}
    )
    return data_from_arrays(images.clip(0, 255).astype(np.uint8), manifest)


def test_feature_baseline_end_to_end(tmp_path):
    data = _separable_data()
    cfg = config_from_dict({"data": {"dataset": "phantom", "size": 32}, "model": {"name": "simple_cnn"}, "evaluation": {"n_bootstrap": 20}})
    cfg = dataclasses.replace(cfg, output_root=str(tmp_path))
    result = run_feature_baseline(cfg, classifier="lr", data=data)
    assert result["evaluated_on"]["split"] == "test" and result["evaluated_on"]["n_images"] == 20
    assert result["feature_model"]["dimension"] == 32  # simple_cnn's Dense(32) before the logits
    assert result["slice"]["auc_macro_ovr"] == pytest.approx(1.0)
    assert (tmp_path / "features-simple_cnn-original-lr" / "metrics_test.json").is_file()
    with pytest.raises(CovidctError, match="finished feature baseline"):
        run_feature_baseline(cfg, classifier="lr", data=data)


def test_extractor_is_the_layer_before_logits():
    from covidct.models import build_model

    model = build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2)
    extractor = feature_extractor(model)
    assert extractor.outputs[0].shape[-1] == 32
    images = np.zeros((3, 32, 32, 1), dtype=np.uint8)
    assert extract_features(model, images, np.arange(3)).shape == (3, 32)
    with pytest.raises(CovidctError, match="Did you mean: svm"):
        make_classifier("svn")
