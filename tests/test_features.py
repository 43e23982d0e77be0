"""Feature baselines: penultimate-layer features → scikit-learn, scored by the shared metric code."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

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
        {
            "path": [f"x{i}" for i in range(80)],
            "label": np.where(labels == 1, "COVID", "nonCOVID"),
            "group": groups,
            "split": split,
            "source": "synthetic",
        }
    )
    return data_from_arrays(images.clip(0, 255).astype(np.uint8), manifest)


def test_feature_baseline_end_to_end(tmp_path):
    data = _separable_data()
    cfg = config_from_dict(
        {
            "data": {"dataset": "phantom", "size": 32},
            "model": {"name": "simple_cnn"},
            "evaluation": {"n_bootstrap": 20},
        }
    )
    cfg = dataclasses.replace(cfg, output_root=str(tmp_path))
    result = run_feature_baseline(cfg, classifier="lr", data=data)
    assert result["evaluated_on"]["split"] == "test" and result["evaluated_on"]["n_images"] == 20
    assert result["feature_model"]["dimension"] == 32  # simple_cnn's Dense(32) before the logits
    assert result["slice"]["auc_macro_ovr"] == pytest.approx(1.0)
    assert (tmp_path / "features-simple_cnn-original-lr" / "metrics_test.json").is_file()
    with pytest.raises(CovidctError, match="finished feature baseline"):
        run_feature_baseline(cfg, classifier="lr", data=data)


def test_select_c_is_grouped_cv_by_pooled_out_of_fold_macro_f1():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from covidct.features import select_c

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    groups = np.array([f"g{i // 6}" for i in range(120)])
    features = rng.normal(size=(120, 5)) + 0.6 * labels[:, None] * np.array([1, 0.5, 0, 0, 0])
    grid = (0.001, 0.1, 10.0)
    choice = select_c("lr", features, labels, groups, folds=4, grid=grid)
    expected = []
    for C in grid:  # by hand: grouped folds (no group on both sides), pooled argmax predictions, macro-F1
        oof = np.zeros(120, dtype=int)
        for fit, held in GroupKFold(n_splits=4).split(features, labels, groups):
            assert not set(groups[fit]) & set(groups[held])
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000)).fit(features[fit], labels[fit])
            oof[held] = model.predict(features[held])
        expected.append(f1_score(labels, oof, average="macro"))
    assert [row["oof_macro_f1"] for row in choice["scores"]] == pytest.approx(expected)
    assert choice["C"] == grid[int(np.argmax(expected))]
    with pytest.raises(CovidctError, match="no C to select"):
        select_c("rf", features, labels, groups)
    with pytest.raises(CovidctError, match="cannot fill 30 grouped folds"):
        select_c("lr", features, labels, groups, folds=30)


def test_feature_baseline_with_selected_c_and_an_external_set(tmp_path):
    data = _separable_data()
    cfg = config_from_dict(
        {"data": {"dataset": "phantom", "size": 32}, "model": {"name": "simple_cnn"}, "evaluation": {"n_bootstrap": 10}}
    )
    cfg = dataclasses.replace(cfg, output_root=str(tmp_path))
    test = data.indices("test")
    other = data_from_arrays(255 - data.images[test], data.manifest.iloc[test].reset_index(drop=True), source="inverted")
    result = run_feature_baseline(cfg, classifier="lr", data=data, select_c=True, cv_folds=3)
    assert result["selection"]["split"] == "grouped-cv" and result["selection"]["C"] in (0.001, 0.01, 0.1, 1.0, 10.0)
    assert "--select-c" in result["command"]
    folder = tmp_path / "external"
    from covidct.features import run_feature_baselines

    [again] = run_feature_baselines(cfg, ["lr"], [folder], data=data, select_c=True, cv_folds=3,
                                    external={"inverted": other})
    assert again["selection"]["C"] == result["selection"]["C"]
    table = pd.read_csv(folder / "predictions_external-inverted.csv")
    assert len(table) == len(test) and list(table["label"]) == list(data.manifest.iloc[test]["label"])
    metrics = json.loads((folder / "metrics_external-inverted.json").read_text())
    assert metrics["evaluated_on"]["section"] == "external" and metrics["evaluated_on"]["n_images"] == len(test)
    probs = table[[f"prob_{c}" for c in data.class_names]].to_numpy()
    from covidct.evaluate.metrics import compute_metrics

    assert metrics["slice"]["auc_macro_ovr"] == pytest.approx(compute_metrics(table["label_index"], probs)["auc_macro_ovr"])


def test_extractor_is_the_layer_before_logits():
    from covidct.models import build_model

    model = build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2)
    extractor = feature_extractor(model)
    assert extractor.outputs[0].shape[-1] == 32
    images = np.zeros((3, 32, 32, 1), dtype=np.uint8)
    assert extract_features(model, images, np.arange(3)).shape == (3, 32)
    with pytest.raises(CovidctError, match="Did you mean: svm"):
        make_classifier("svn")


@pytest.fixture(scope="module")
def features_config(tmp_path_factory, tiny_config):
    """A config YAML for the phantom dataset (150 slices of 30 patients, written and cached under tmp)."""
    from covidct.config import dump_config

    tmp = tmp_path_factory.mktemp("features_cli")
    cfg = tiny_config()
    cfg = dataclasses.replace(
        cfg,
        output_root=str(tmp / "runs"),
        data=dataclasses.replace(
            cfg.data,
            options={"n": 150, "size": 64, "seed": 0},
            root=str(tmp / "phantom"),
            cache_root=str(tmp / "cache"),
            size=32,
            split_fractions=(0.5, 0.25, 0.25),
        ),
        evaluation=dataclasses.replace(cfg.evaluation, n_bootstrap=50),
    )
    return dump_config(cfg, tmp / "features.yaml"), cfg


def test_features_command_writes_runs_that_the_evaluator_reproduces(features_config, capsys):
    from covidct.cli import main
    from covidct.evaluate.evaluator import metrics_with_ci

    path, cfg = features_config
    assert main(["features", "--config", str(path), "--classifier", "lr", "knn"]) == 0
    printed = capsys.readouterr().out
    for classifier in ("lr", "knn"):
        run_dir = Path(cfg.output_root) / f"features-simple_cnn-original-{classifier}"
        stored = json.loads((run_dir / "metrics_test.json").read_text())
        predictions = pd.read_csv(run_dir / "predictions_test.csv", dtype={"group": str})
        names = stored["class_names"]
        assert names == ["COV", "Normal", "OtherPneumonia"] and stored["classifier"] == classifier
        # Validation selected nothing (fixed hyperparameters); the numbers are the test split's.
        assert stored["selection"]["split"] == "none" and stored["validation"]["role"].startswith("check")
        assert (
            stored["evaluated_on"]["split"] == "test" and stored["evaluated_on"]["is_selection_set"] is False
        )
        assert stored["evaluated_on"]["n_images"] == len(predictions) > 0
        assert stored["evaluated_on"]["n_groups"] == predictions["group"].nunique() >= 3
        # The metrics JSON is exactly what the shared evaluator computes from the predictions CSV.
        probs = predictions[[f"prob_{c}" for c in names]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        e = cfg.evaluation
        again = metrics_with_ci(
            predictions["label_index"],
            probs,
            predictions["group"].to_numpy(),
            names,
            50,
            e.ci,
            e.threshold,
            e.positive_class,
        )
        for key in ("macro_f1", "auc_macro_ovr", "balanced_accuracy", "accuracy"):
            assert stored["slice"][key] == pytest.approx(again[key], abs=1e-12)
            assert stored["slice"]["ci"][key]["low"] == pytest.approx(again["ci"][key]["low"], abs=1e-12)
            assert stored["slice"]["ci"][key]["high"] == pytest.approx(again["ci"][key]["high"], abs=1e-12)
        assert stored["slice"]["confusion_matrix"] == again["confusion_matrix"]
        ci = stored["slice"]["ci"]["macro_f1"]
        assert (
            f"macro_f1           {stored['slice']['macro_f1']:.3f}  [{ci['low']:.3f}, {ci['high']:.3f}]"
            in printed
        )
        assert json.loads((run_dir / "run.json").read_text())["model"] == f"simple_cnn+{classifier}"
    assert printed.count("test (reported;") == 2


def test_features_command_refuses_to_overwrite_and_bad_input(features_config, capsys):
    from covidct.cli import main

    path, cfg = features_config
    run_dir = Path(cfg.output_root) / "features-simple_cnn-original-lr"
    if not (run_dir / "metrics_test.json").is_file():  # when this test runs alone
        assert main(["features", "--config", str(path), "--classifier", "lr"]) == 0
    before = (run_dir / "metrics_test.json").stat().st_mtime_ns
    assert main(["features", "--config", str(path), "--classifier", "svm", "lr"]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir} holds a finished feature baseline" in err and "--overwrite" in err
    assert (run_dir / "metrics_test.json").stat().st_mtime_ns == before
    assert not (
        Path(cfg.output_root) / "features-simple_cnn-original-svm"
    ).exists()  # checked before any work
    assert main(["features", "--config", str(path), "--classifier", "svn"]) == 2
    assert "Unknown classifier 'svn'. Did you mean: svm" in capsys.readouterr().err
    assert main(["features", "--model", "simple_cnn"]) == 2
    assert "--model NAME and --dataset NAME" in capsys.readouterr().err
    assert (
        main(["features", "--config", str(path), "--classifier", "lr", "--overwrite", "--bootstrap", "0"])
        == 0
    )
    assert (run_dir / "metrics_test.json").stat().st_mtime_ns > before
    assert "ci" not in json.loads((run_dir / "metrics_test.json").read_text())["slice"]
