"""The package functions the notebooks call instead of inline logic, and the figure convention they rely on."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from covidct.data.datasets import DataChoice, choose_data, load_choice, load_dataset
from covidct.errors import CovidctError
from covidct.evaluate.generalization import (
    DEFAULT_RESULTS,
    external_patient_scores,
    generalization_markdown,
    generalization_table,
    load_generalization_results,
    plot_generalization,
    shipped_results,
)
from covidct.evaluate.metrics import binary_auc
from covidct.evaluate.predictions import load_predictions

SRC = Path(__file__).resolve().parents[1] / "src" / "covidct"


def test_library_code_never_selects_a_matplotlib_backend():
    offenders = [f"{path.relative_to(SRC)}:{number}" for path in sorted(SRC.rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"matplotlib\.use\(|plt\.show\(|\bswitch_backend\(", line)]
    assert offenders == []


def test_plotting_functions_return_figures_outside_pyplot(tmp_path):
    from covidct.data import audit
    from covidct.data.phantom import plot_phantom_classes
    from covidct.explain import comparison_grid, contact_sheet
    from covidct.segment.predict import plot_overlays

    plt.close("all")
    manifest = load_dataset("phantom", root=tmp_path / "phantom", n=12, size=32, seed=0).assign(split="train")
    images = np.zeros((2, 16, 16), dtype=np.uint8)
    heatmaps = np.random.default_rng(0).random((2, 16, 16))
    figures = [
        plot_phantom_classes(size=48),
        audit.plot_counts(manifest),
        audit.plot_examples(manifest, per_class=2),
        audit.plot_intensity_histograms(manifest, per_class=2),
        plot_overlays(images, images > 0, images > 0),
        contact_sheet(images, heatmaps, labels=["a", "b"]),
        comparison_grid(images, {"x": heatmaps}),
        plot_generalization(load_generalization_results()),
    ]
    assert all(isinstance(figure, Figure) for figure in figures)
    assert plt.get_fignums() == [], "a plotting function left a figure in pyplot's state (shown twice in Jupyter)"


def test_load_dataset_keeps_whole_groups_per_class(tmp_path):
    full = load_dataset("phantom", root=tmp_path / "p", n=60, size=32, seed=0)
    small = load_dataset("phantom", root=tmp_path / "p", n=60, size=32, seed=0, groups_per_class=2)
    assert small.groupby("label")["group"].nunique().to_dict() == {c: 2 for c in sorted(full["label"].unique())}
    sizes = full.groupby("group").size()
    assert small.groupby("group").size().to_dict() == sizes[sorted(set(small["group"]))].to_dict()
    with pytest.raises(CovidctError, match="groups_per_class must be a positive integer"):
        load_dataset("phantom", root=tmp_path / "p", n=60, size=32, seed=0, groups_per_class=0)


def test_load_choice_reads_phantom_options_only_for_phantoms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    phantoms = choose_data("sars-cov-2-ct", tmp_path / "nowhere")
    assert not phantoms.is_real and phantoms.dataset == "phantom"
    assert len(load_choice(phantoms, n=30, size=32, seed=1)) == 30
    folder = tmp_path / "data" / "sars-cov-2-ct-scan"
    for label, count in (("COVID", 3), ("non-COVID", 2)):
        (folder / label).mkdir(parents=True)
        for k in range(1, count + 1):
            import cv2

            cv2.imwrite(str(folder / label / f"{label} ({k}).png"), np.full((16, 16), 40 * k, np.uint8))
    real = choose_data("sars-cov-2-ct", tmp_path / "data")
    manifest = load_choice(real, fast=True, n=999)   # n is a phantom option: ignored for the real dataset
    assert len(manifest) == 5 and manifest["group_proxy"].iloc[0] == "blocks of 20 file numbers"


def test_binary_auc_agrees_with_sklearn_and_is_nan_for_one_class():
    rng = np.random.default_rng(3)
    truth = rng.random(50) < 0.4
    scores = rng.random(50) + truth * 0.3
    assert binary_auc(truth, scores) == pytest.approx(roc_auc_score(truth, scores))
    assert binary_auc([True, False, True], [0.9, 0.1, 0.8]) == 1.0
    assert np.isnan(binary_auc([True, True], [0.2, 0.3]))
    with pytest.raises(CovidctError, match="3 truths for 2 scores"):
        binary_auc([1, 0, 1], [0.1, 0.2])


def test_load_predictions_reads_labels_and_probabilities(tmp_path):
    frame = pd.DataFrame({"path": ["a", "b", "c"], "label": ["COV", "Normal", "COV"], "label_index": [0, 1, 0],
                          "prob_COV": [0.9, 0.2, 0.6], "prob_Normal": [0.1, 0.8, 0.4]})
    frame.to_csv(tmp_path / "predictions_test.csv", index=False)
    loaded = load_predictions(tmp_path)
    assert loaded.class_names == ["COV", "Normal"]
    np.testing.assert_array_equal(loaded.y_true, [0, 1, 0])
    np.testing.assert_allclose(loaded.probs, [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    reordered = load_predictions(tmp_path, class_names=["Normal", "COV"])
    np.testing.assert_allclose(reordered.probs[:, 0], [0.1, 0.8, 0.4])
    with pytest.raises(CovidctError, match=r"predictions_val\.csv does not exist; evaluate the run first"):
        load_predictions(tmp_path, split="val")
    with pytest.raises(CovidctError, match=r"missing column\(s\) \['prob_OtherPneumonia'\]"):
        load_predictions(tmp_path, class_names=["COV", "OtherPneumonia"])


def test_shipped_generalization_results_are_read_tabulated_and_plotted():
    assert DEFAULT_RESULTS in shipped_results() and len(shipped_results()) == 3
    results = load_generalization_results("generalization-standardize-3seeds")
    raw = json.loads(shipped_results()["generalization-standardize-3seeds"].read_text())
    seeds = raw["arms"]["standardize"]["seeds"]
    table = generalization_table(results)
    assert table.loc["standardize", "internal test AUC"] == round(statistics.mean(s["internal_test_auc"] for s in seeds), 3)
    assert table.loc["standardize", "external slice AUC"] == round(
        statistics.mean(s["external"]["slice_auc"] for s in seeds), 3)
    ensemble = raw["arms"]["standardize"]["ensemble"]["external"]
    assert table.loc["standardize", "ensemble external slice AUC"] == round(ensemble["slice_auc"], 3)
    patients = external_patient_scores(results)
    assert patients.loc["standardize", "P001 (COV)"] == round(ensemble["patients"]["P001"]["mean_prob_covid"], 3)
    assert "| standardize |" in generalization_markdown(results)
    older = load_generalization_results()   # the four-arm file has no internal macro-F1: NaN, not an error
    assert list(generalization_table(older).index) == ["lungs", "robust", "standardize", "appearance"]
    assert np.isnan(generalization_table(older).loc["lungs", "internal test macro-F1"])
    axes = plot_generalization(results).axes
    assert len(axes) == 1 and [t.get_text() for t in axes[0].get_xticklabels()] == ["standardize"]


def test_generalization_results_that_do_not_exist_are_named_not_replaced(tmp_path):
    with pytest.raises(CovidctError, match="no such file and no such shipped result.*Shipped: generalization-"):
        load_generalization_results(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(CovidctError, match="not a generalisation results file"):
        load_generalization_results(tmp_path / "other.json")


def test_classifier_config_is_the_recipe_on_real_data_and_the_demo_on_phantoms(tmp_path):
    from covidct.train.notebook_runs import classifier_config, classifier_run

    phantom = classifier_config(DataChoice("phantom", None, "sars-cov-2-ct"), smoke=True, output_root=tmp_path)
    assert (phantom.run_name, phantom.data.dataset, phantom.training.epochs) == ("phantom-demo-smoke", "phantom", 2)
    assert phantom.data.options == {"n": 90, "size": 64, "seed": 0}
    real = DataChoice("sars-cov-2-ct", tmp_path, "sars-cov-2-ct")
    full, smoke = classifier_config(real), classifier_config(real, smoke=True)
    assert full.run_name == "sars-cov-2-ct-small_cnn-lungs-robust-dataaug"
    assert (full.data.stage, full.data.size, full.training.epochs, full.data.root) == ("lungs-robust", 128, 24, str(tmp_path))
    assert smoke.run_name == full.run_name + "-smoke"
    assert (smoke.data.size, smoke.training.epochs) == (64, 2)
    assert smoke.data.options == {"groups_per_class": 6, "group_proxy": "blocks"}
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(CovidctError, match="unfinished: not a finished run folder"):
        classifier_run(real, run=tmp_path / "unfinished")


def test_phantom_external_data_is_an_all_test_set_in_the_runs_classes(tmp_path, monkeypatch):
    from covidct.train.data import phantom_external_data

    monkeypatch.chdir(tmp_path)
    data = phantom_external_data("lungs", 32, cache_root=str(tmp_path / "cache"), n=15,
                                 classes=["COV", "Normal", "OtherPneumonia"])
    assert data.images.shape == (15, 32, 32, 1)
    assert set(data.manifest["split"]) == {"test"}
    assert data.class_names == ["COV", "Normal", "OtherPneumonia"]
    assert Path("data/phantom/n15-s64-seed7/manifest.csv").is_file()
    binary = phantom_external_data("lungs", 32, cache_root=str(tmp_path / "cache"), n=15, classes=["COV", "NonCOV"],
                                   label_map={"COV": "COV", "Normal": "NonCOV", "OtherPneumonia": "NonCOV"})
    assert binary.class_names == ["COV", "NonCOV"]
    np.testing.assert_array_equal(binary.labels, (data.manifest["label"] != "COV").to_numpy().astype(int))


def test_stage_augmentation_grid_has_a_row_per_stage_and_a_column_per_draw():
    from covidct.data.io import CTImage
    from covidct.data.phantom import make_slice
    from covidct.train.augment import plot_stage_augmentations

    image = CTImage(array=make_slice("COV", size=64, seed=1).image_hu, unit="HU")
    figure = plot_stage_augmentations(image, size=32, samples=2, stages=["original", "lungs"])
    assert isinstance(figure, Figure) and len(figure.axes) == 2 * 3
    assert [figure.axes[0].get_ylabel(), figure.axes[3].get_ylabel()] == ["original", "lungs"]
