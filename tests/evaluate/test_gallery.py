"""The README gallery: readers of recorded results and the plots drawn from them (values checked on the axes)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidct.data.io import CTImage
from covidct.data.phantom import make_slice
from covidct.errors import CovidctError
from covidct.evaluate import gallery
from covidct.preprocess import get_stage

ROOT = Path(__file__).resolve().parents[2]


def bench_result():
    """A bench_generalization result: one arm with three seeds and an ensemble, one with a single seed."""
    seed = {"internal_test_auc": 0.9, "internal_test_auc_ci": [0.8, 0.95],
            "external": {"slice_auc": 0.5, "slice_auc_ci": [0.4, 0.6]}}
    return {"arms": {
        "standardize": {"seeds": [seed, seed, seed], "ensemble": {
            "internal_test_auc": 0.97, "internal_test_auc_ci": [0.94, 0.99], "internal_test_macro_f1": 0.91,
            "internal_test_macro_f1_ci": [0.85, 0.95],
            "external": {"slice_auc": 0.48, "slice_auc_ci": [0.37, 0.59]}}},
        "lungs": {"seeds": [seed]},
        "robust": {"seeds": [seed, seed]},
    }}


def test_generalization_row_takes_the_ensemble_else_the_only_seed():
    row = gallery.generalization_row(bench_result(), "standardize", "std")
    assert row == {"label": "std", "internal": 0.97, "internal low": 0.94, "internal high": 0.99, "external": 0.48,
                   "external low": 0.37, "external high": 0.59, "seeds": 3, "internal macro_f1": 0.91,
                   "internal macro_f1 low": 0.85, "internal macro_f1 high": 0.95}
    single = gallery.generalization_row(bench_result(), "lungs", "lungs")
    assert (single["internal"], single["external high"], single["seeds"]) == (0.9, 0.6, 1)
    assert math.isnan(single["internal macro_f1"])
    with pytest.raises(CovidctError, match="2 seeds and no ensemble"):
        gallery.generalization_row(bench_result(), "robust", "r")
    with pytest.raises(CovidctError, match="Did you mean: lungs"):
        gallery.generalization_row(bench_result(), "lung", "l")


def test_evaluation_and_cv_rows_read_the_recorded_numbers():
    internal = {"slice": {"auc_macro_ovr": 0.91, "ci": {"auc_macro_ovr": {"low": 0.83, "high": 0.99}}}}
    external = {"slice": {"auc_macro_ovr": 0.44, "ci": {}}}
    row = gallery.evaluation_row(internal, external, "orig")
    assert row["internal"] == 0.91 and row["internal low"] == 0.83 and row["external"] == 0.44
    assert math.isnan(row["external low"]) and math.isnan(row["external high"])
    result = {"candidates": {"base": {"oof_macro_f1": 0.86, "oof_macro_f1_ci": [0.8, 0.9], "oof_auc": 0.92,
                                      "oof_auc_ci": [0.87, 0.96]},
                             "aug": {"oof_macro_f1": 0.87, "oof_macro_f1_ci": [0.81, 0.91], "oof_auc": 0.93}}}
    rows = gallery.cv_rows(result, {"aug": "with augmentation"})
    assert [r["label"] for r in rows] == ["base", "with augmentation"]
    assert rows[0]["auc high"] == 0.96 and rows[1]["macro_f1 low"] == 0.81 and math.isnan(rows[1]["auc low"])


def headline_rows():
    return pd.DataFrame({
        "label": ["a", "b", "c"],
        "internal": [0.9, 0.98, 0.85], "internal low": [0.8, 0.95, 0.7], "internal high": [0.96, 1.0, 0.94],
        "external": [0.44, 0.51, 0.52], "external low": [0.19, 0.33, np.nan], "external high": [0.71, 0.7, np.nan],
    })


def test_internal_vs_external_points_and_intervals_are_the_inputs():
    rows = headline_rows()
    fig = gallery.plot_internal_vs_external(rows)
    ax = fig.axes[0]
    internal, external = ax.containers[0], ax.containers[1]
    rows_y = np.array([2.0, 1.0, 0.0])  # the first row on top
    np.testing.assert_allclose(internal.lines[0].get_xdata(), rows["internal"])
    np.testing.assert_allclose(internal.lines[0].get_ydata(), rows_y + gallery.ROW_OFFSET)
    np.testing.assert_allclose(external.lines[0].get_xdata(), rows["external"])
    np.testing.assert_allclose(external.lines[0].get_ydata(), rows_y - gallery.ROW_OFFSET)
    segments = internal.lines[2][0].get_segments()
    np.testing.assert_allclose([s[:, 0] for s in segments], rows[["internal low", "internal high"]].to_numpy())
    external_segments = external.lines[2][0].get_segments()
    # no recorded interval: a whisker of length zero at the point
    np.testing.assert_allclose(external_segments[2][:, 0], [0.52, 0.52])
    np.testing.assert_allclose(external_segments[0][:, 0], [0.19, 0.71])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert ax.get_xlim()[0] == pytest.approx(0.1)  # widened to show the 0.19 interval end
    assert ax.lines[-1].get_xdata()[0] == 0.5  # the chance line (the last line drawn)


def test_a_value_outside_its_interval_is_refused():
    rows = headline_rows()
    rows.loc[1, "external"] = 0.75
    with pytest.raises(CovidctError, match="outside its recorded interval"):
        gallery.plot_internal_vs_external(rows)
    with pytest.raises(CovidctError, match="lack the columns \\['external high'\\]"):
        gallery.plot_internal_vs_external(headline_rows().drop(columns="external high"))


def test_score_bars_have_the_input_lengths_and_whiskers():
    rows = pd.DataFrame({"label": ["original", "lungs"], "macro_f1": [0.61, np.nan], "macro_f1 low": [0.39, np.nan],
                         "macro_f1 high": [0.87, np.nan], "auc": [0.914, 0.979], "auc low": [0.83, 0.95],
                         "auc high": [0.99, 1.0]})
    fig = gallery.plot_score_bars(rows)
    ax = fig.axes[0]
    f1_bars, f1_whiskers, auc_bars, auc_whiskers = ax.containers
    assert [bar.get_width() for bar in f1_bars] == [0.61, 0.0]
    assert [bar.get_width() for bar in auc_bars] == [0.914, 0.979]
    # bars of one row sit side by side, the first row on top
    assert f1_bars[0].get_y() > auc_bars[0].get_y() > f1_bars[1].get_y() > auc_bars[1].get_y()
    auc_segments = auc_whiskers.lines[2][0].get_segments()
    np.testing.assert_allclose([s[:, 0] for s in auc_segments], [[0.83, 0.99], [0.95, 1.0]])
    np.testing.assert_allclose(f1_whiskers.lines[2][0].get_segments()[1][:, 0], [0.0, 0.0])
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0.610", "n/a", "0.914", "0.979"]
    with pytest.raises(CovidctError, match="Unknown metric 'f1'"):
        gallery.plot_score_bars(rows, metrics=["f1"])


def test_stage_panels_show_what_each_stage_returns():
    image = CTImage(array=make_slice("COV", size=128, seed=1).image_hu.astype("float32"), unit="HU")
    fig = gallery.plot_stages(image, ["original", "halves", "lungs-3window"], size=64, columns=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["original", "halves (right)", "halves (left)", "lungs-3window"]
    expected = get_stage("original")(image, 64)[0].image[..., 0]
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), expected)
    halves = get_stage("halves")(image, 64)
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), halves[1].image[..., 0])
    assert fig.axes[3].images[0].get_array().shape == (64, 64, 3)
    with pytest.raises(CovidctError, match="Did you mean: lungs"):
        gallery.plot_stages(image, ["lung"], size=64)


@pytest.fixture(scope="module")
def make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "benchmarks" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gallery_reads_every_results_file_it_names(make_figures):
    rows = [make_figures.row_for(*entry) for entry in make_figures.GENERALIZATION]
    assert len(rows) == len(make_figures.GENERALIZATION)
    shipped = json.loads((make_figures.RESULTS / "generalization_cpu_standardize_last_cos_aug_e24_seeds012.json")
                         .read_text())["arms"]["standardize"]["ensemble"]
    assert rows[-1]["internal"] == shipped["internal_test_auc"]
    assert rows[-1]["external"] == shipped["external"]["slice_auc"]
    quality = json.loads((make_figures.RESULTS / "bench_quality.json").read_text())
    assert rows[0]["external"] == quality["external"]["slice"]["auc_macro_ovr"]
    stages = make_figures.stage_rows()
    assert stages["macro_f1"].iloc[0] == quality["grouped"]["slice"]["macro_f1"]
    for name, labels in make_figures.CV_ROUNDS:
        candidates = json.loads((make_figures.RESULTS / name).read_text())["candidates"]
        assert set(labels) <= set(candidates), name
    for _, name in make_figures.INFECTION_RECIPES:
        assert "dice" in make_figures.read(name)["metrics"], name
