"""The ``run_report.md`` of each task: data, what selected the checkpoint, results, how to reproduce or use it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from covidct.config import RunConfig
from covidct.evaluate.report import markdown_table
from covidct.train.data import TrainingData


def run_report(cfg: RunConfig, info: dict, history: list[dict]) -> str:
    """Markdown summary of a training run (data, selection, shortcut probe, history)."""
    lines = [
        f"# Run {info['name']}",
        "",
        f"Status: **{info.get('status', '?')}**. Model `{info['model']}`, dataset `{info['dataset']}`, "
        + (
            f"volumes {'x'.join(map(str, info['volume_shape']))} (D x H x W)"
            if info.get("volume_shape")
            else f"stage `{info['stage']}`, {info['size']} px"
        )
        + f", classes {info['class_names']}.",
        f"Backend {info['backend']} (Keras {info['keras_version']}, {info['dtype_policy']}), "
        f"{info['epochs_run']} epoch(s) in {info['seconds']} s.",
        "",
        (
            f"`monitor: last`: a fixed budget; model.keras holds the final epoch ({info['best_epoch']}), "
            "nothing was selected on validation (its scores in history.csv are for reading only). "
            if info["monitor"] == "last"
            else f"The checkpoint was selected on the **validation** split by `{info['monitor']}`: best "
            f"{info['best_score']} at epoch {info['best_epoch']}. This is a selection score, not a test score; "
        )
        + "test numbers come from `covidct evaluate` on the test split.",
        "",
        "## Data",
        "",
        "| split | images | groups | " + " | ".join(info["class_names"]) + " |",
        "|---|---|---|" + "---|" * len(info["class_names"]),
    ]
    for name, row in info["split_counts"].items():
        lines.append(
            f"| {name} | {row['images']} | {row['groups']} | "
            + " | ".join(str(row[c]) for c in info["class_names"])
            + " |"
        )
    probe = info.get("shortcut_probe") or {}
    lines += ["", "## Shortcut probe (training split)", ""]
    if "auc" in probe:
        lines.append(
            f"Nuisance features alone (size, intensity statistics, format) predict the class with AUC {probe['auc']}."
        )
    lines.append(f"Status: {probe.get('status', '-')}.")
    if probe.get("warning"):
        lines.append(f"**Warning:** {probe['warning']}.")
    if history:
        frame = pd.DataFrame(history)
        lines += ["", "## History", "", markdown_table(frame)]
    lines += ["", "## Reproduce", "", "```", f"covidct train --config {info['name']}/config.yaml", "```", ""]
    return "\n".join(lines)




def segmentation_run_report(info: dict) -> str:
    """Markdown summary of a segmentation run: data, what selected, per-split results."""
    lines = [
        f"# Run {info['name']}",
        "",
        f"Status: **{info['status']}**. Segmenter `{info['model']}`, dataset `{info['dataset']}`, {info['size']} px; "
        f"backend {info['backend']} (Keras {info['keras_version']}, {info['dtype_policy']}), {info['seconds']} s.",
        "",
        (f"Checkpoints (and the lung input) were selected on the **validation** part by `{info['monitor']}`; "
         "this is a selection score, not a test score." if info["monitor"] != "last" else
         f"Selection: {info['selection']}.")
        + f" Reported split: {info['report_split']} "
        "(`covidct segment evaluate` writes per-image Dice, IoU and HD95 with bootstrap intervals).",
        "",
        "| split | lung input | best epoch | epochs run | "
        + (f"{info['monitor']} | train / val / test images |" if info["monitor"] != "last" else "selection score (none) | train / val / test images |"),
        "|---|---|---|---|---|---|",
    ]
    for row in info.get("fold_results") or [info]:
        counts = row["split_counts"]
        sizes = " / ".join(str(counts[p]["images"]) for p in ("train", "val", "test"))
        score = row["best_score"]
        score = f"{score:.4f}" if isinstance(score, float) and math.isfinite(score) else str(score)
        lines.append(
            f"| {row['split']} | {row['lung_input']} | {row['best_epoch']} | {row['epochs_run']} | {score} | {sizes} |"
        )
    lines += ["", f"Groups: {info['group_proxy']}.", ""]
    return "\n".join(lines)


def pretrain_run_report(info: dict) -> str:
    """Markdown summary of a pretraining run: data, objective, selection, how to use the weights."""
    counts = info["split_counts"]
    score = info["best_score"]
    selection = (
        f"the checkpoint of epoch {info['best_epoch']} has the lowest validation restoration MSE ({score:.5f})"
        if isinstance(score, float) and math.isfinite(score)
        else "a fixed epoch budget (monitor last): the final epoch's weights are kept"
    )
    return "\n".join(
        [
            f"# Run {info['name']}",
            "",
            f"Status: **{info['status']}**. Self-supervised pretraining of `{info['model']}` "
            f"({info['model_kwargs']}) by {info['objective']} on `{info['dataset']}` (labels not read), "
            f"{info['size']} px, {info['input']}; backend {info['backend']} "
            f"(Keras {info['keras_version']}, {info['dtype_policy']}), {info['seconds']} s.",
            "",
            f"Images: {counts['train']['images']} training ({counts['train']['groups']} groups), "
            f"{counts['val']['images']} validation ({counts['val']['groups']} groups). Selection: {selection}. "
            "A restoration error is not a segmentation or diagnostic score.",
            "",
            f"Use: {info['use']}.",
            "",
        ]
    )


def split_counts(data: TrainingData, split: np.ndarray, class_names: list) -> dict:
    """Images, groups and images per class of each split, for ``run.json``."""
    groups = data.groups
    counts = {}
    for name in ("train", "val", "test"):
        rows = split == name
        counts[name] = {
            "images": int(rows.sum()),
            "groups": int(len(set(groups[rows]))),
            **{c: int((data.labels[rows] == i).sum()) for i, c in enumerate(class_names)},
        }
    return counts
