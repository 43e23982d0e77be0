"""Every plotting function returns a Figure with the expected content."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from covidct.evaluate import plots


def test_confusion_matrix_counts_and_normalised_text():
    fig = plots.plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], normalize=True)
    assert isinstance(fig, Figure)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.00", "0.25", "0.75", "1.00"]
    counts = plots.plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"])
    assert sorted(t.get_text() for t in counts.axes[0].texts) == ["0", "1", "3", "4"]


def test_curves_reliability_and_history():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    roc = plots.plot_roc_curves(y, probs, ["a", "b", "c"])
    assert len(roc.axes[0].get_legend().get_texts()) == 3
    pr = plots.plot_pr_curves(y, probs, ["a", "b", "c"])
    assert "AP" in pr.axes[0].get_legend().get_texts()[0].get_text()
    assert isinstance(plots.plot_reliability(y, probs), Figure)
    history = {"epoch": [1, 2], "loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "val_macro_f1": [0.3, 0.6], "val_auc": [0.5, 0.8]}
    fig = plots.plot_training_curves(history)
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2


def test_result_row_reads_values_and_ci():
    from covidct.evaluate.report import result_row

    result = {
        "evaluated_on": {"split": "test"},
        "slice": {"n": 10, "macro_f1": 0.8, "auc_macro_ovr": 0.9, "ci": {"auc_macro_ovr": {"low": 0.7, "high": 0.95}}},
        "patient": {"mean": {"n": 3, "macro_f1": 1.0, "auc_macro_ovr": 1.0, "ci": {}}},
    }
    assert result_row(result) == {"set": "test", "level": "slice", "n": 10, "macro_f1": 0.8, "auc": 0.9,
                                  "auc low": 0.7, "auc high": 0.95}
    row = result_row(result, "patient", "mean")
    assert (row["level"], row["n"], row["auc low"]) == ("mean", 3, None)


def test_interval_plot_draws_each_interval_and_the_target():
    import pytest

    fig = plots.plot_intervals(["a", "b", "c"], [0.5, 0.7, 0.6], [0.4, 0.65, 0.5], [0.55, 0.8, 0.7], target=0.7,
                               xlabel="Dice")
    ax = fig.axes[0]
    rows = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    assert rows == {"a": 2, "b": 1, "c": 0}  # first label on top
    points = ax.lines[0].get_data()
    # rows top to bottom: a at y=2, b at y=1, c at y=0
    assert dict(zip(points[1], points[0])) == {2: 0.5, 1: 0.7, 0: 0.6}
    segments = {float(s[0][1]): (float(s[0][0]), float(s[1][0])) for s in ax.collections[0].get_segments()}
    assert segments == {2.0: (0.4, 0.55), 1.0: (0.65, 0.8), 0.0: (0.5, 0.7)}
    target = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(target) == 1 and list(target[0].get_xdata()) == [0.7, 0.7]
    assert ax.get_xlabel() == "Dice"
    with pytest.raises(ValueError, match="3 labels, 2 means"):
        plots.plot_intervals(["a", "b", "c"], [0.5, 0.7], [0.4, 0.6], [0.6, 0.8])
    with pytest.raises(ValueError, match="'b' lies outside"):
        plots.plot_intervals(["a", "b"], [0.5, 0.9], [0.4, 0.6], [0.6, 0.8])
