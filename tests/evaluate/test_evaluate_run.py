"""evaluate_run on a finished run: files, selection vs reporting set, TTA, MC dropout, external, report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from covidct.errors import CovidctError
from covidct.evaluate import evaluate_run
from covidct.evaluate.metrics import compute_metrics, logits_to_probs
from covidct.evaluate.report import END_MARKER, START_MARKER, collect_results, write_report
from covidct.models.inference import predict_logits
from covidct.train.data import data_from_arrays
from covidct.train.run import load_run, predict_images


def test_test_split_files_and_consistency(tiny_run, phantom_data):
    result = evaluate_run(tiny_run, split="test", data=phantom_data, n_bootstrap=30, temperature_scaling=True)
    assert result["selection"]["split"] == "val"
    assert result["evaluated_on"] == {**result["evaluated_on"], "section": "internal", "split": "test", "is_selection_set": False}
    assert "warning" not in result
    stored = json.loads((tiny_run / "metrics_test.json").read_text())
    predictions = pd.read_csv(tiny_run / "predictions_test.csv")
    assert len(predictions) == len(phantom_data.indices("test")) == stored["evaluated_on"]["n_images"]
    probs = predictions[[f"prob_{c}" for c in result["class_names"]]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # The JSON numbers are those of the stored predictions (one evaluation path).
    again = compute_metrics(predictions["label_index"].to_numpy(), probs, result["class_names"])
    assert stored["slice"]["macro_f1"] == pytest.approx(again["macro_f1"])
    assert stored["slice"]["auc_macro_ovr"] == pytest.approx(again["auc_macro_ovr"])
    ci = stored["slice"]["ci"]["macro_f1"]
    assert ci["unit"] == "group" and ci["n_groups"] == predictions["group"].nunique()
    assert stored["temperature_scaling"]["fitted_on"] == "val" and stored["temperature_scaling"]["temperature"] > 0
    assert set(stored["patient"]) == {"mean", "max", "topk"}
    assert stored["patient"]["mean"]["n"] == predictions["group"].nunique()
    for name in ("test_confusion_counts.png", "test_confusion_normalised.png", "test_roc.png", "test_pr.png",
                 "test_reliability.png", "training_curves.png"):
        assert (tiny_run / "figures" / name).is_file(), name


def test_validation_is_labelled_as_the_selection_set(tiny_run, phantom_data):
    result = evaluate_run(tiny_run, split="val", data=phantom_data, n_bootstrap=0, figures=False)
    assert result["evaluated_on"]["is_selection_set"] is True
    assert "not test scores" in result["warning"]
    with pytest.raises(CovidctError, match="Did you mean: test"):
        evaluate_run(tiny_run, split="tset", data=phantom_data)


def test_tta_and_mc_dropout(tiny_run, phantom_data):
    loaded = load_run(tiny_run)
    rows = phantom_data.indices("test")
    plain = logits_to_probs(predict_logits(loaded.model, phantom_data.images, rows))
    flipped = logits_to_probs(predict_logits(loaded.model, phantom_data.images, rows, flip=True))
    evaluate_run(tiny_run, split="test", data=phantom_data, n_bootstrap=0, figures=False, tta=True, mc_dropout=0)
    tta = pd.read_csv(tiny_run / "predictions_test.csv").filter(like="prob_").to_numpy()
    np.testing.assert_allclose(tta, (plain + flipped) / 2, rtol=1e-5, atol=1e-6)
    evaluate_run(tiny_run, split="test", data=phantom_data, n_bootstrap=0, figures=False, mc_dropout=4)
    mc = pd.read_csv(tiny_run / "predictions_test.csv")
    assert mc.filter(like="std_").to_numpy().max() > 0  # dropout is active across passes


def test_external_section(tiny_run, phantom_data):
    # Another "dataset": the phantom images with other raw label names, mapped onto the run's classes.
    from covidct.train.data import apply_label_map

    raw = phantom_data.manifest.assign(
        label=phantom_data.manifest["label"].map({"COV": "covid", "Normal": "healthy", "OtherPneumonia": "cap"}), split="test"
    )
    with pytest.raises(CovidctError, match="not among data.classes"):
        data_from_arrays(phantom_data.images, raw, classes=["COV", "Normal", "OtherPneumonia"])
    with pytest.raises(CovidctError, match=r"\['healthy'\] are not in the label map"):
        apply_label_map(raw, {"covid": "COV", "cap": "OtherPneumonia"})
    mapped = apply_label_map(raw, {"covid": "COV", "healthy": "Normal", "cap": "OtherPneumonia"})
    assert mapped["original_label"].tolist() == raw["label"].tolist()
    external = data_from_arrays(phantom_data.images, mapped, classes=["COV", "Normal", "OtherPneumonia"])
    result = evaluate_run(tiny_run, dataset="phantom-copy", data=external, n_bootstrap=0, figures=False)
    assert result["evaluated_on"]["section"] == "external" and result["evaluated_on"]["split"] == "external-phantom-copy"
    assert (tiny_run / "metrics_external-phantom-copy.json").is_file()
    assert result["evaluated_on"]["n_images"] == len(phantom_data.images)


def test_predict_images_applies_the_runs_stage(tiny_run, phantom_data):
    from covidct.data.io import CTImage
    from covidct.preprocess import get_stage

    loaded = load_run(tiny_run)
    assert loaded.stage == "original" and loaded.size == 48
    rng = np.random.default_rng(0)
    images = [CTImage(array=rng.uniform(-1000, 300, size=(60, 60)).astype(np.float32), unit="HU") for _ in range(3)]
    probs = predict_images(loaded, images)
    staged = np.stack([get_stage("original")(image, 48)[0].image for image in images])
    staged = staged if staged.ndim == 4 else staged[..., None]
    expected = logits_to_probs(predict_logits(loaded.model, staged, np.arange(3)))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_report_table_and_readme(tiny_run, phantom_data, tmp_path):
    evaluate_run(tiny_run, split="test", data=phantom_data, n_bootstrap=20, figures=False)
    evaluate_run(tiny_run, split="val", data=phantom_data, n_bootstrap=0, figures=False)
    table = collect_results(tiny_run.parent)
    assert "test" in table["evaluated on"].tolist()
    assert not any("selection set" in str(v) for v in table["evaluated on"])  # validation rows are left out
    readme = tmp_path / "README.md"
    readme.write_text(f"# covidct\n\n{START_MARKER}\nold table\n{END_MARKER}\n\nmore text\n")
    written = write_report(tiny_run.parent, readme=readme, out_dir=tmp_path)
    text = readme.read_text()
    assert "old table" not in text and "more text" in text and "covidct train --config" in text
    assert written["rows"] == len(table)
    assert (tmp_path / "results.csv").is_file()
    readme.write_text("no markers")
    with pytest.raises(CovidctError, match="results:start"):
        write_report(tiny_run.parent, readme=readme, out_dir=tmp_path)


def test_threshold_chosen_on_validation(phantom_data, tiny_config, tmp_path):
    """threshold='val': chosen by macro-F1 on the validation predictions, applied unchanged to test."""
    import dataclasses

    from covidct.evaluate.metrics import choose_threshold
    from covidct.train import train

    keep = (phantom_data.manifest["label"] != "OtherPneumonia").to_numpy()  # two classes: COV vs Normal
    binary = data_from_arrays(phantom_data.images[keep], phantom_data.manifest[keep], source="phantom")
    cfg = tiny_config(epochs=1, max_steps_per_epoch=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="small_cnn"))
    run = train(cfg, run_dir=tmp_path / "binary", data=binary, progress=False)
    evaluate_run(run, split="val", data=binary, n_bootstrap=0, figures=False)
    val = pd.read_csv(run / "predictions_val.csv")
    expected = choose_threshold(val["label"] == "COV", val["prob_COV"])

    result = evaluate_run(run, split="test", data=binary, n_bootstrap=0, figures=False, threshold="val")
    chosen = result["threshold"]
    assert chosen["chosen_on"] == "val" and chosen["positive_class"] == "COV"
    assert chosen["value"] == pytest.approx(expected["value"]) and chosen["val_macro_f1"] == pytest.approx(expected["score"])
    test = pd.read_csv(run / "predictions_test.csv")
    again = compute_metrics(test["label_index"].to_numpy(), test[["prob_COV", "prob_Normal"]].to_numpy(),
                            ["COV", "Normal"], threshold=chosen["value"])
    assert result["slice"]["macro_f1"] == pytest.approx(again["macro_f1"])
    assert result["slice"]["threshold"] == pytest.approx(chosen["value"])
    assert (test["predicted"] == np.where(test["prob_COV"] >= chosen["value"], "COV", "Normal")).all()
    # The results table says at which threshold the F1 was taken, and how to reproduce it.
    row = collect_results(tmp_path).set_index("evaluated on").loc["test"]
    assert f"at threshold {chosen['value']:.3f} (chosen on val)" in row["macro-F1 [95% CI]"]
    assert row["command"].rstrip("`").endswith("--split test --threshold val")


def test_threshold_errors(tiny_run, phantom_data):
    with pytest.raises(CovidctError, match="needs two classes"):
        evaluate_run(tiny_run, split="test", data=phantom_data, n_bootstrap=0, figures=False, threshold="val")
    with pytest.raises(CovidctError, match="number in \\(0, 1\\), 'val'"):
        evaluate_run(tiny_run, split="test", data=phantom_data, n_bootstrap=0, figures=False, threshold=1.5)
