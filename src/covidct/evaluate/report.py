"""The results table over run folders (markdown + CSV) and the README section it rewrites.

One row per evaluated set of each run: the run, what selected its checkpoint (validation), which set
the numbers come from (test or an external dataset), macro-F1 and AUC with their 95% group-bootstrap
CIs, the lung-focus score, and the exact commands that reproduce the row. Numbers are read from
``metrics_<tag>.json``, so the README cannot drift from what was run.

**Lung focus.** The median share of Grad-CAM mass inside the lung mask over a run's test images, with
the shortcut threshold of ``covidct.explain.focus`` (``LOW`` when some class's median is below it). It
is read from ``<run>/lung_focus.json``, written by ``covidct evaluate --run R --lung-focus N``; the
report never computes it. The cell is blank when that file is absent, or when it was computed on
another split than the row's.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from covidct.errors import CovidctError
from covidct.runs import read_run_info, write_text_atomic

START_MARKER = "<!-- results:start -->"
END_MARKER = "<!-- results:end -->"


def markdown_table(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """A GitHub markdown table of a DataFrame (no extra dependency)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else float_format.format(value)
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _with_ci(block: dict, key: str) -> str:
    value = block.get(key)
    ci = (block.get("ci") or {}).get(key) or {}
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if ci.get("low") is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


LUNG_FOCUS_COLUMN = "lung focus (median; threshold)"
LUNG_FOCUS_NOTE = (
    "Lung focus: median share of Grad-CAM mass inside the lung mask over the test images (predicted class "
    "explained); LOW = some class's median is below its threshold a + 0.25(1 - a), a = lung area fraction: a "
    "possible shortcut. Blank: not computed (`covidct evaluate --run RUN --lung-focus N` computes it)."
)


def lung_focus_cell(run_dir: str | os.PathLike, split: str) -> str:
    """The lung-focus cell of a run's row: ``"0.52 (>= 0.36, n=40)"``, ``"LOW 0.03 (< 0.36, n=40; low: COV)"``.

    Args:
        run_dir: the run folder (``lung_focus.json`` is read from it, never computed).
        split: the row's evaluated set; a file computed on another split gives a blank cell.

    Returns:
        The cell text; ``""`` when the file is absent or belongs to another split.

    Raises:
        CovidctError: the file is not valid JSON or not a lung-focus summary (naming the file).
    """
    path = Path(run_dir) / "lung_focus.json"
    if not path.is_file():
        return ""
    rerun = f"rerun `covidct evaluate --run {Path(run_dir)} --lung-focus N` or delete it"
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CovidctError(f"{path} is not valid JSON ({error}); {rerun}.") from None
    overall = summary.get("overall") if isinstance(summary, dict) else None
    if not isinstance(overall, dict) or not {"median", "threshold", "n"} <= set(overall) or "warning" not in summary:
        raise CovidctError(f"{path} is not a lung-focus summary (no overall median/threshold/n or warning); {rerun}.")
    if summary.get("split", "test") != split:
        return ""
    median, threshold, n = overall["median"], overall["threshold"], overall["n"]
    if median is None or (isinstance(median, float) and math.isnan(median)):
        return f"n/a (all {overall.get('n_empty', 0)} heatmaps empty)"
    if summary["warning"] or overall.get("low_focus"):
        low = ", ".join(str(c) for c in summary.get("low_focus_classes") or []) or "all"
        return f"LOW {median:.2f} ({'<' if median < threshold else '>='} {threshold:.2f}, n={n}; low: {low})"
    return f"{median:.2f} (>= {threshold:.2f}, n={n})"


def _segmentation_row(run_dir: Path, metrics: dict, info: dict) -> dict:
    """The results-table row of a segmentation run: mean per-image Dice with its CI (no F1/AUC)."""
    evaluated = metrics.get("evaluated_on", {})
    selection = metrics.get("selection", {})
    dice = metrics.get("dice") or {}
    dice_cell = f"{dice['mean']:.3f} [{dice['low']:.3f}, {dice['high']:.3f}]" if {"mean", "low", "high"} <= set(dice) else "n/a"
    command = (
        f"covidct train --config {run_dir}/config.yaml --run-dir {run_dir} --overwrite && "
        f"covidct segment evaluate --run {run_dir}"
    )
    return {
        "run": run_dir.name,
        "model": info.get("model", ""),
        "dataset": info.get("dataset", ""),
        "stage": "segmentation",
        "evaluated on": evaluated.get("split", metrics.get("split", "")),
        "selected on": f"{selection.get('split', 'val')} ({selection.get('monitor', 'val_dice')})",
        "images / groups": f"{evaluated.get('n_images', '')} / {evaluated.get('n_groups', '')}",
        "macro-F1 [95% CI]": "",
        "AUC [95% CI]": "",
        "patient AUC (mean)": "",
        "Dice [95% CI]": dice_cell,
        LUNG_FOCUS_COLUMN: "",
        "command": f"`{command}`",
    }


def collect_results(runs_root: str | os.PathLike = "runs", include_val: bool = False) -> pd.DataFrame:
    """One row per ``metrics_<tag>.json`` found under ``runs_root`` (searched recursively).

    Args:
        runs_root: folder of run folders.
        include_val: also list validation-set evaluations (marked as the selection set).

    Returns:
        DataFrame: run, model, dataset, stage, setting, evaluated on, selected on, n images / groups,
        macro-F1 [CI], AUC [CI], patient-level AUC, Dice [CI] (segmentation runs: one row per run, the
        cross-validation summary for a k-fold run), lung focus (``lung_focus_cell``), command.
    """
    root = Path(runs_root)
    if not root.is_dir():
        raise CovidctError(f"Runs folder {root} does not exist; train something first (covidct train ...).")
    rows = []
    for metrics_file in sorted(root.rglob("metrics_*.json")):
        run_dir = metrics_file.parent
        metrics = json.loads(metrics_file.read_text())
        evaluated = metrics.get("evaluated_on", {})
        if evaluated.get("is_selection_set") and not include_val:
            continue
        if evaluated.get("split") == "train":
            continue
        info = read_run_info(run_dir)  # a corrupt run.json is named, not a JSONDecodeError
        if info.get("task") == "evidence" and "evaluated_on" not in metrics:
            continue  # `covidct evidence`'s own summary; its rows come from `covidct evaluate --run RUN`
        if "dice" in metrics:
            if run_dir.name.startswith("fold_") and (run_dir.parent / "metrics_cv.json").is_file():
                continue  # one cross-validation row (metrics_cv.json), not one per fold
            rows.append(_segmentation_row(run_dir, metrics, info))
            continue
        selection = metrics.get("selection", {})
        slice_block = metrics.get("slice", {})
        patient = (metrics.get("patient") or {}).get("mean") or {}
        focus = lung_focus_cell(run_dir, evaluated.get("split", "test"))
        command = f"covidct train --config {run_dir}/config.yaml --run-dir {run_dir} --overwrite && covidct evaluate --run {run_dir}"
        if metrics.get("command"):  # e.g. feature baselines, which are not trained by `covidct train`
            command = metrics["command"]
        elif evaluated.get("section") == "external":
            mapping = ",".join(f"{k}={v}" for k, v in (evaluated.get("label_map") or {}).items())
            command += f" --dataset {evaluated.get('dataset')}" + (f' --label-map "{mapping}"' if mapping else "")
        else:
            command += f" --split {evaluated.get('split', 'test')}"
            if focus:
                command += f" --lung-focus {json.loads((run_dir / 'lung_focus.json').read_text()).get('n_images')}"
        f1_cell = _with_ci(slice_block, "macro_f1")
        chosen = metrics.get("threshold")
        fixed = (metrics.get("options") or {}).get("threshold")
        if chosen and not metrics.get("command"):
            f1_cell += f" at threshold {chosen['value']:.3f} (chosen on {chosen.get('chosen_on', 'val')})"
            command += " --threshold val"
        elif fixed is not None and not metrics.get("command"):
            f1_cell += f" at threshold {float(fixed):.3f}"
            command += f" --threshold {fixed}"
        rows.append(
            {
                "run": run_dir.name,
                "model": info.get("model", ""),
                "dataset": info.get("dataset", ""),
                "stage": info.get("stage", ""),
                "evaluated on": (
                    f"{evaluated.get('split')} (selection set!)" if evaluated.get("is_selection_set") else evaluated.get("split", "")
                ),
                "selected on": f"{selection.get('split', 'val')} ({selection.get('monitor', '')})",
                "images / groups": f"{evaluated.get('n_images', '')} / {evaluated.get('n_groups', '')}",
                "macro-F1 [95% CI]": f1_cell,
                "AUC [95% CI]": _with_ci(slice_block, "auc_macro_ovr"),
                "patient AUC (mean)": _with_ci(patient, "auc_macro_ovr") if patient else "n/a",
                "Dice [95% CI]": "",
                LUNG_FOCUS_COLUMN: focus,
                "command": f"`{command}`",
            }
        )
    return pd.DataFrame(rows)


def replace_between_markers(text: str, content: str) -> str:
    """Replace what lies between the results markers (both must be present, start before end)."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < 0 or end < start:
        raise CovidctError(
            f"The README has no results section: add the lines {START_MARKER} and {END_MARKER} where the table goes."
        )
    return text[: start + len(START_MARKER)] + "\n" + content.rstrip() + "\n" + text[end:]


def write_report(runs_root: str | os.PathLike = "runs", readme: str | os.PathLike | None = None, out_dir=None) -> dict:
    """Write ``results.md`` and ``results.csv`` (in ``out_dir``, default ``runs_root``) and update the README.

    Returns:
        dict with the paths written and the number of rows.
    """
    table = collect_results(runs_root)
    out_dir = Path(out_dir or runs_root)
    note = (
        "Scores are on the test split (or an external dataset) with 95% bootstrap CIs over patients/groups; "
        "checkpoints were selected on the validation split. Generated by `covidct report`.\n\n" + LUNG_FOCUS_NOTE
    )
    markdown = (markdown_table(table) if len(table) else "_No evaluated runs yet._") + "\n\n" + note + "\n"
    written = {
        "markdown": str(write_text_atomic(out_dir / "results.md", markdown)),
        "csv": str(write_text_atomic(out_dir / "results.csv", table.to_csv(index=False))),
        "rows": len(table),
    }
    if readme is not None:
        readme = Path(readme)
        if not readme.is_file():
            raise CovidctError(f"README {readme} does not exist.")
        write_text_atomic(readme, replace_between_markers(readme.read_text(), markdown))
        written["readme"] = str(readme)
    return written


def result_row(result: dict, level: str = "slice", method: str | None = None) -> dict:
    """One summary row (set, level, n, macro-F1, AUC with its CI) of an ``evaluate_run`` result.

    Args:
        result: the dict returned by ``evaluate_run`` (or read from ``metrics_<split>.json``).
        level: ``"slice"`` or ``"patient"``.
        method: for ``level="patient"``, the aggregation (``"mean"``, ``"max"``, ``"topk"``).

    Returns:
        A dict ready for a DataFrame row.
    """
    block = result[level] if method is None else result[level].get(method, {})
    ci = block.get("ci", {}).get("auc_macro_ovr", {})
    return {
        "set": result["evaluated_on"]["split"],
        "level": method or level,
        "n": block.get("n"),
        "macro_f1": block.get("macro_f1"),
        "auc": block.get("auc_macro_ovr"),
        "auc low": ci.get("low"),
        "auc high": ci.get("high"),
    }
