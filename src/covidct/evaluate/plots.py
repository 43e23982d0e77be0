"""Evaluation figures. Every function returns a matplotlib Figure; the caller shows or saves it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn import metrics as skm

from covidct.evaluate.calibration import reliability_bins


def plot_confusion_matrix(matrix, class_names, normalize: bool = False, title: str | None = None) -> Figure:
    """Confusion matrix (rows = true class, columns = predicted), counts or row-normalised recall.

    Args:
        matrix: (C, C) counts.
        class_names: C names.
        normalize: divide each row by its total (each cell is the fraction of that true class).
        title: figure title.

    Returns:
        The Figure.
    """
    counts = np.asarray(matrix, dtype=float)
    values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    fig = Figure(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = values.max() / 2 if values.size else 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = f"{values[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
            ax.text(j, i, text, ha="center", va="center", color="white" if values[i, j] > threshold else "black")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix (counts)"))
    fig.tight_layout()
    return fig


def _curves(kind: str, y_true, probs, class_names, title):
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    for c in classes:
        positives = y_true == c
        if not 0 < positives.sum() < len(y_true):
            continue
        if kind == "roc":
            fpr, tpr, _ = skm.roc_curve(positives, probs[:, c])
            ax.plot(fpr, tpr, label=f"{class_names[c]} (AUC {skm.auc(fpr, tpr):.3f})")
        else:
            precision, recall, _ = skm.precision_recall_curve(positives, probs[:, c])
            ap = skm.average_precision_score(positives, probs[:, c])
            ax.step(recall, precision, where="post", label=f"{class_names[c]} (AP {ap:.3f})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    ax.set_title(title or ("ROC, one-vs-rest" if kind == "roc" else "precision-recall, one-vs-rest"))
    fig.tight_layout()
    return fig


def plot_roc_curves(y_true, probs, class_names, title: str | None = None) -> Figure:
    """One-vs-rest ROC curve per class (the positive class only, for two classes), AUC in the legend."""
    return _curves("roc", y_true, probs, class_names, title)


def plot_pr_curves(y_true, probs, class_names, title: str | None = None) -> Figure:
    """One-vs-rest precision-recall curve per class, average precision in the legend."""
    return _curves("pr", y_true, probs, class_names, title)


def plot_reliability(y_true, probs, n_bins: int = 10, title: str | None = None) -> Figure:
    """Reliability diagram: accuracy vs mean confidence per bin, with the diagonal of perfect calibration."""
    bins = reliability_bins(y_true, probs, n_bins=n_bins)
    centers = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    used = bins["count"] > 0
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    ax.bar(centers[used], bins["accuracy"][used], width=1.0 / n_bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.plot(bins["confidence"][used], bins["accuracy"][used], "o", color="tab:red", label="mean confidence")
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "reliability diagram")
    fig.tight_layout()
    return fig


def plot_training_curves(history, title: str | None = None) -> Figure:
    """Training loss, validation loss and validation macro-F1/AUC per epoch (from ``history.csv``)."""
    frame = pd.DataFrame(history)
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)

    def series(column):  # validated epochs only (training.validation_freq leaves the others empty)
        rows = frame[["epoch", column]].dropna()
        return rows["epoch"], rows[column]

    for column in ("loss", "val_loss"):
        if column in frame:
            left.plot(*series(column), marker="o", label=column)
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    for column in ("val_macro_f1", "val_auc", "val_accuracy"):
        if column in frame:
            right.plot(*series(column), marker="o", label=column)
    right.set_xlabel("epoch")
    right.set_ylabel("validation score")
    right.set_ylim(0, 1.02)
    right.legend()
    fig.suptitle(title or "training curves (validation selects the checkpoint)")
    fig.tight_layout()
    return fig


def plot_intervals(
    labels, means, lows, highs, target: float | None = None, xlabel: str = "score", title: str | None = None
) -> Figure:
    """Forest plot: one row per result (top to bottom in the given order), its mean and its interval.

    Args:
        labels: one text per row (e.g. the recipe).
        means, lows, highs: the point estimates and the interval ends (e.g. a 95% bootstrap CI).
        target: draw a dashed vertical line at this score (e.g. an issue's target).
        xlabel: what the score is.
        title: figure title.

    Raises:
        ValueError: the four sequences differ in length, or a mean lies outside its interval.
    """
    labels = [str(label) for label in labels]
    means, lows, highs = (np.asarray(v, dtype=float) for v in (means, lows, highs))
    if not len(labels) == len(means) == len(lows) == len(highs):
        raise ValueError(
            f"plot_intervals: {len(labels)} labels, {len(means)} means, {len(lows)} lows and {len(highs)} highs."
        )
    outside = np.flatnonzero((lows > means) | (means > highs))
    if len(outside):
        raise ValueError(f"plot_intervals: the mean of {labels[outside[0]]!r} lies outside its interval.")
    fig = Figure(figsize=(9, 0.42 * len(labels) + 1.4))
    ax = fig.add_subplot()
    rows = np.arange(len(labels))[::-1]
    ax.errorbar(means, rows, xerr=[means - lows, highs - means], fmt="o", color="tab:blue", capsize=3)
    if target is not None:
        ax.axvline(target, color="tab:red", linestyle="--", label=f"target {target:g}")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_yticks(rows, labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or "mean and 95% interval per result")
    fig.tight_layout()
    return fig
