"""An evidence run folder is evaluated by the one evaluation path (``covidct evaluate``) from its saved scores."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from covidct.cli import main
from covidct.errors import CovidctError
from covidct.evaluate import evaluate_run
from covidct.evaluate.predictions import load_predictions
from covidct.evaluate.report import collect_results

MAP = "COV=COV,OtherPneumonia=NonCOV,Normal=NonCOV"


def evidence_folder(path):
    """A fitted evidence run as ``covidct evidence`` leaves it (no model.keras, no config.yaml)."""
    path.mkdir()
    (path / "run.json").write_text(json.dumps({"task": "evidence", "status": "finished", "fitted_on": "sars-cov-2-ct"}))
    (path / "choice.json").write_text(json.dumps({"positive": "COV", "training_dataset": "sars-cov-2-ct",
                                                   "features": "burden", "family": "logistic", "cv_auc_mean": 0.8,
                                                   "segmenter": "/seg"}))
    # test rows: 4 groups x 2 slices; train rows (fitted on, never scored) with probabilities that would change the AUC
    test = pd.DataFrame({
        "path": [f"t{i}.png" for i in range(8)], "label": ["COV"] * 4 + ["NonCOV"] * 4,
        "group": ["a", "a", "b", "b", "c", "c", "d", "d"], "split": "test", "slice_index": -1,
        "probability": [0.9, 0.4, 0.7, 0.8, 0.6, 0.2, 0.3, 0.1]})
    train = test.assign(path=lambda f: "r" + f["path"], split="train", probability=1 - test["probability"])
    pd.concat([train, test]).to_csv(path / "scores_sars-cov-2-ct.csv", index=False)
    external = pd.DataFrame({
        "path": ["P1.nii.gz"] * 3 + ["cap1.nii.gz"] * 3 + ["n1.nii.gz"] * 3, "label": ["COV"] * 3 + ["OtherPneumonia"] * 3 + ["Normal"] * 3,
        "group": ["P1"] * 3 + ["cap1"] * 3 + ["n1"] * 3, "split": "", "slice_index": [4, 5, 6] * 3,
        "probability": [0.55, 0.7, 0.45, 0.5, 0.65, 0.3, 0.2, 0.35, 0.6]})
    external.to_csv(path / "scores_covid-ct-md.csv", index=False)
    (path / "metrics_covid-ct-md.json").write_text(json.dumps({"dataset": "covid-ct-md", "lung_slices": {}}))
    return path, test, external


def test_internal_evaluation_reads_the_test_scores(tmp_path):
    run, test, _ = evidence_folder(tmp_path / "evidence")
    result = evaluate_run(run, n_bootstrap=20)
    truth, p = (test["label"] == "COV").to_numpy(), test["probability"].to_numpy()
    block = result["slice"]
    assert result["class_names"] == ["COV", "NonCOV"] and block["positive_class"] == "COV"
    assert block["n"] == 8 and result["evaluated_on"]["n_groups"] == 4
    assert block["auc_macro_ovr"] == pytest.approx(roc_auc_score(truth, p))  # 15/16
    assert block["auc_macro_ovr"] == pytest.approx(15 / 16)
    # argmax = p >= 0.5: COV predicted 3 of 4 (0.4 missed), NonCOV 3 of 4 (0.6 a false positive)
    assert block["confusion_matrix"] == [[3, 1], [1, 3]]
    assert block["sensitivity"] == pytest.approx(0.75) and block["specificity"] == pytest.approx(0.75)
    ci = block["ci"]["auc_macro_ovr"]
    assert ci["unit"] == "group" and ci["n_groups"] == 4 and ci["low"] <= block["auc_macro_ovr"] <= ci["high"]
    means = test.groupby("group")["probability"].mean()  # a 0.65, b 0.75, c 0.4, d 0.2: perfectly ranked
    assert result["patient"]["mean"]["auc_macro_ovr"] == pytest.approx(roc_auc_score([1, 1, 0, 0], means.to_numpy()))
    assert result["patient"]["mean"]["n_groups"] == 4
    assert result["selection"]["split"].startswith("train+val") and "ece" in result["calibration"]
    for name in ("test_confusion_counts.png", "test_roc.png", "test_reliability.png"):
        assert (run / "figures" / name).is_file()
    saved = load_predictions(run, "test")
    assert saved.class_names == ["COV", "NonCOV"] and np.allclose(saved.probs[:, 0], p)
    assert np.allclose(saved.probs.sum(axis=1), 1.0) and list(saved.frame["path"]) == list(test["path"])
    assert json.loads((run / "metrics_test.json").read_text())["slice"]["auc_macro_ovr"] == block["auc_macro_ovr"]


def test_external_evaluation_and_the_report(tmp_path):
    run, _, external = evidence_folder(tmp_path / "evidence")
    evaluate_run(run, dataset="covid-ct-md", label_map=MAP, n_bootstrap=20, figures=False)
    result = json.loads((run / "metrics_external-covid-ct-md.json").read_text())
    truth = (external["label"] == "COV").to_numpy()
    assert result["evaluated_on"]["section"] == "external" and result["evaluated_on"]["n_images"] == 9
    assert result["slice"]["auc_macro_ovr"] == pytest.approx(roc_auc_score(truth, external["probability"]))
    assert (run / "predictions_external-covid-ct-md.csv").is_file()
    table = collect_results(tmp_path)  # the evidence command's own metrics_covid-ct-md.json is not a row
    assert list(table["evaluated on"]) == ["external-covid-ct-md"]
    assert table["command"][0].startswith("`covidct evidence --segmenter /seg --dataset covid-ct-md")
    assert "--label-map" in table["command"][0]


def test_cli_exit_code_2_names_the_label_map(tmp_path, capsys):
    run, _, _ = evidence_folder(tmp_path / "evidence")
    assert main(["evaluate", "--run", str(run), "--dataset", "covid-ct-md"]) == 2
    assert "are not classes of the run ['COV', 'NonCOV']" in capsys.readouterr().err


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"split": "val"}, "only --split test is scored"),
    ({"dataset": "medseg"}, "covidct evidence --segmenter /seg --dataset medseg"),
    ({"tta": True}, "cannot apply"),
    ({"threshold": "val"}, "cannot apply"),
])
def test_what_saved_scores_cannot_give_is_refused(tmp_path, kwargs, message):
    run, _, _ = evidence_folder(tmp_path / "evidence")
    with pytest.raises(CovidctError, match=message):
        evaluate_run(run, n_bootstrap=0, figures=False, **kwargs)
    assert not (run / "metrics_test.json").exists()


def test_a_run_fitted_on_more_labels_scores_the_positive_class_against_the_rest(tmp_path):
    run, test, _ = evidence_folder(tmp_path / "evidence")
    (run / "run.json").write_text(json.dumps({"task": "evidence", "fitted_on": "sars-cov-2-ct",
                                              "class_names": ["COV", "NonCOV"], "positive_class": "COV"}))
    raw = test.assign(label=["COV"] * 4 + ["Normal", "Normal", "OtherPneumonia", "OtherPneumonia"])
    raw.to_csv(run / "scores_sars-cov-2-ct.csv", index=False)
    result = evaluate_run(run, n_bootstrap=0, figures=False)
    assert result["evaluated_on"]["label_map"] == {"COV": "COV", "Normal": "NonCOV", "OtherPneumonia": "NonCOV"}
    assert result["slice"]["auc_macro_ovr"] == pytest.approx(roc_auc_score(raw["label"] == "COV", raw["probability"]))
    assert "--label-map" not in result["command"]  # the fit's own definition, not an option to pass
