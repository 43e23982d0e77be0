"""compare.py reads evaluate_run's metrics files and draws exactly their numbers (fake run folders, no training)."""

from __future__ import annotations

import json
import math

import pytest
from matplotlib.container import ErrorbarContainer

from covidct.config import dump_config, load_config
from covidct.errors import CovidctError
from covidct.evaluate.compare import (
    collect_scores,
    finished_runs_without_test_scores,
    internal_external,
    plot_internal_external,
    plot_scores,
    score_table,
)


def _metrics(split, f1, f1_ci, auc, auc_ci, section="internal", dataset="phantom", selection=False):
    """A metrics_<tag>.json as evaluate_run writes it (only the fields a reader uses, same nesting)."""
    ci = {}
    if f1_ci:
        ci["macro_f1"] = {"low": f1_ci[0], "high": f1_ci[1], "n_bootstrap": 50}
    if auc_ci:
        ci["auc_macro_ovr"] = {"low": auc_ci[0], "high": auc_ci[1], "n_bootstrap": 50}
    return {
        "run": "x",
        "selection": {"split": "val", "monitor": "val_macro_f1", "best_epoch": 1, "score": 0.5},
        "evaluated_on": {"section": section, "split": split, "dataset": dataset, "label_map": {},
                         "n_images": 30, "n_groups": 6, "is_selection_set": selection},
        "class_names": ["COV", "Normal", "OtherPneumonia"],
        "slice": {"macro_f1": f1, "auc_macro_ovr": auc, "accuracy": 0.5, "ci": ci},
        "patient": {},
    }


def _run(folder, model, stage, overrides, evaluations):
    folder.mkdir(parents=True)
    cfg = load_config("demo", overrides=[f"model.name={model}", f"data.stage={stage}", *overrides])
    dump_config(cfg, folder / "config.yaml")
    (folder / "run.json").write_text(json.dumps({"model": model, "stage": stage, "dataset": "phantom",
                                                 "status": "finished", "class_names": cfg.data.classes}))
    (folder / "model.keras").write_bytes(b"not read")
    for tag, metrics in evaluations.items():
        (folder / f"metrics_{tag}.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    _run(root / "a", "small_cnn", "lungs", [], {
        "test": _metrics("test", 0.70, (0.60, 0.80), 0.90, (0.85, 0.95)),
        "val": _metrics("val", 0.99, (0.98, 1.0), 0.99, (0.98, 1.0), selection=True),
        "external-phantom": _metrics("external-phantom", 0.40, (0.30, 0.50), 0.55, (0.45, 0.65), section="external"),
    })
    _run(root / "b", "simple_cnn", "original", ["training.class_weight=balanced", "training.augmentation=stage"], {
        "test": _metrics("test", 0.80, (0.72, 0.88), 0.85, None),  # no AUC interval
        "train": _metrics("train", 1.0, (1.0, 1.0), 1.0, (1.0, 1.0)),
    })
    _run(root / "nested" / "c", "vgg19", "lungs", [], {
        "test": _metrics("test", 0.60, (0.50, 0.70), None, None),  # AUC undefined (a class missing)
    })
    return root


def test_collect_scores_reads_test_and_external_rows_only(runs):
    scores = collect_scores(runs)
    # ordered by model: simple_cnn, small_cnn (test, then external), vgg19; val and train never appear
    assert list(scores["run"]) == ["b", "a", "a", "nested/c"]
    assert list(scores["evaluated on"]) == ["test", "test", "external-phantom", "test"]
    assert list(scores["section"]) == ["internal", "internal", "external", "internal"]
    assert list(scores["setting"]) == ["classw-dataaug", "baseline", "baseline", "baseline"]
    assert list(scores["macro_f1"]) == [0.80, 0.70, 0.40, 0.60]
    assert list(scores["macro_f1 low"]) == [0.72, 0.60, 0.30, 0.50]
    assert list(scores["macro_f1 high"]) == [0.88, 0.80, 0.50, 0.70]
    assert scores["auc"].iloc[:3].tolist() == [0.85, 0.90, 0.55] and math.isnan(scores["auc"].iloc[3])
    assert math.isnan(scores["auc low"].iloc[0]) and math.isnan(scores["auc high"].iloc[0])
    assert (scores["n images"] == 30).all() and (scores["n groups"] == 6).all()
    assert not (scores["evaluated on"] == "val").any()


def test_collect_scores_from_single_run_folders_and_errors(runs, tmp_path):
    scores = collect_scores([runs / "a", runs / "b", runs / "a"])  # a repeated folder is read once
    assert list(scores["run"]) == ["b", "a", "a"]
    with pytest.raises(CovidctError, match="does not exist"):
        collect_scores(tmp_path / "missing")
    (runs / "b" / "metrics_test.json").write_text("{broken")
    with pytest.raises(CovidctError, match=r"metrics_test.json is not valid JSON.*covidct evaluate --run"):
        collect_scores(runs)


def test_finished_runs_without_test_scores(runs):
    (runs / "a" / "metrics_test.json").unlink()
    assert finished_runs_without_test_scores(runs) == [runs / "a"]


def test_score_table_sorts_and_formats(runs):
    scores = collect_scores(runs)
    table = score_table(scores)
    assert list(table["run"]) == ["b", "a", "nested/c"]  # internal only, macro-F1 descending
    assert list(table["macro-F1 [95% CI]"]) == ["0.800 [0.720, 0.880]", "0.700 [0.600, 0.800]", "0.600 [0.500, 0.700]"]
    assert list(table["AUC [95% CI]"]) == ["0.850", "0.900 [0.850, 0.950]", "n/a"]
    by_auc = score_table(scores, sort_by="auc")
    assert list(by_auc["run"]) == ["a", "b", "nested/c"]  # NaN last
    assert list(score_table(scores, section="external")["run"]) == ["a"]
    assert len(score_table(scores, section=None)) == 4
    with pytest.raises(CovidctError, match="Unknown metric 'aucc'. Did you mean: auc"):
        score_table(scores, sort_by="aucc")


def _bars_and_whiskers(ax):
    """(x, height) of every bar in drawing order, and (x, low, high) of every whisker."""
    bars = [(p.get_x() + p.get_width() / 2, p.get_height()) for p in ax.patches]
    whiskers = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            for segment in container.lines[2][0].get_segments():
                whiskers.append((segment[0][0], segment[0][1], segment[1][1]))
    return bars, whiskers


def test_plot_scores_bar_heights_and_whiskers_equal_the_json(runs):
    figure = plot_scores(collect_scores(runs))
    f1_ax, auc_ax = figure.axes[:2]
    bars, whiskers = _bars_and_whiskers(f1_ax)
    assert [h for _, h in bars] == pytest.approx([0.80, 0.70, 0.60])  # simple_cnn, small_cnn, vgg19
    assert [(lo, hi) for _, lo, hi in whiskers] == pytest.approx([(0.72, 0.88), (0.60, 0.80), (0.50, 0.70)])
    assert [x for x, _ in bars] == pytest.approx([x for x, _, _ in whiskers])
    assert [t.get_text() for t in f1_ax.get_xticklabels()] == ["simple_cnn", "small_cnn", "vgg19"]
    bars, whiskers = _bars_and_whiskers(auc_ax)
    assert [h for _, h in bars] == pytest.approx([0.85, 0.90, 0.0])  # NaN AUC drawn as an empty bar, "n/a"
    # no interval: zero-length whiskers; the known one spans the CI
    assert [(lo, hi) for _, lo, hi in whiskers] == pytest.approx([(0.85, 0.85), (0.85, 0.95), (0.0, 0.0)])
    assert "n/a" in [t.get_text() for t in auc_ax.texts]
    legend = [t.get_text() for t in auc_ax.get_legend().get_texts()]
    assert legend == ["original · classw-dataaug", "lungs · baseline"]
    assert "test split" in figure._suptitle.get_text()


def test_internal_external_table_and_plot(runs):
    scores = collect_scores(runs)
    paired = internal_external(scores, "auc")
    row = paired[paired["run"] == "a"].iloc[0]
    assert (row["internal"], row["external"], row["external set"]) == (0.90, 0.55, "external-phantom")
    assert row["external - internal"] == pytest.approx(-0.35)
    assert paired[paired["run"] == "b"]["external set"].tolist() == [""]
    figure = plot_internal_external(scores, "auc")
    ax = figure.axes[0]
    bars, whiskers = _bars_and_whiskers(ax)
    # runs b, a (internal, external), nested/c
    assert [h for _, h in bars] == pytest.approx([0.85, 0.90, 0.55, 0.0])
    assert [(lo, hi) for _, lo, hi in whiskers] == pytest.approx([(0.85, 0.85), (0.85, 0.95), (0.45, 0.65), (0.0, 0.0)])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["internal test", "external-phantom", "chance (AUC 0.5)"]


def test_plot_internal_external_without_external_rows_says_how_to_add_them(runs):
    scores = collect_scores(runs)
    internal_only = scores[scores["section"] == "internal"]
    ax = plot_internal_external(internal_only, "macro_f1").axes[0]
    assert "no external evaluation" in ax.get_title()
    assert [h for _, h in _bars_and_whiskers(ax)[0]] == pytest.approx([0.80, 0.70, 0.60])


def test_empty_scores_are_an_error(tmp_path):
    empty = collect_scores(tmp_path)
    assert list(empty.columns)[:3] == ["run", "model", "stage"] and len(empty) == 0
    for function in (plot_scores, score_table, internal_external, plot_internal_external):
        with pytest.raises(CovidctError, match="no evaluated runs"):
            function(empty)
