"""Many runs side by side: test-split macro-F1 and AUC with their 95% CIs, and internal vs external scores.

The numbers are read from the ``metrics_<tag>.json`` files that ``evaluate_run`` wrote (the files
``covidct.evaluate.report.collect_results`` reads too); nothing is recomputed. Validation-set and
training-set evaluations are never listed: validation selected the checkpoints, so its scores are
not test scores. Each row is one evaluated set of one run: its own test split (``section`` internal) or
a whole other dataset (``section`` external).

Functions return a DataFrame or a matplotlib Figure; they never select a backend or show anything.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from covidct.config import load_config
from covidct.errors import CovidctError, unknown_name_error

#: Metrics that can be compared: metric key in ``metrics_<tag>.json`` → label on tables and axes.
METRICS = {"macro_f1": "macro-F1", "auc": "AUC (macro, one-vs-rest)"}
_JSON_KEYS = {"macro_f1": "macro_f1", "auc": "auc_macro_ovr"}
SCORE_COLUMNS = (
    "run", "model", "stage", "setting", "dataset", "section", "evaluated on", "n images", "n groups",
    "macro_f1", "macro_f1 low", "macro_f1 high", "auc", "auc low", "auc high", "run dir",
)


def _number(value) -> float:
    """A JSON value as a float (None and missing values are NaN)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _setting(run_dir: Path) -> str:
    """The experiment setting of a run (``baseline``, ``classw-dataaug``, ...) from its ``config.yaml``."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return ""
    try:
        return load_config(config, validate=False).setting
    except (CovidctError, OSError, ValueError):
        return ""


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CovidctError(f"{path} is not valid JSON ({error}); rerun `covidct evaluate --run {path.parent}`.") from None
    if not isinstance(content, dict):
        raise CovidctError(f"{path} is not a metrics file (no JSON object); rerun `covidct evaluate --run {path.parent}`.")
    return content


def collect_scores(runs: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One numeric row per test-split or external evaluation found under ``runs``.

    Args:
        runs: a folder of run folders (searched recursively), a run folder, or several of these.

    Returns:
        DataFrame with the columns ``SCORE_COLUMNS``: run (its folder relative to the searched folder),
        model, stage, setting, dataset (what was evaluated), section (``internal``/``external``),
        evaluated on (``test`` or ``external-<dataset>``), n images, n groups, ``macro_f1`` and ``auc``
        (slice level, or volume level for 3-D runs) with their 95% CI ends (NaN when no bootstrap ran),
        and the run folder. Validation and training-set evaluations and segmentation runs are left out.
        Rows are ordered by model, stage, setting, run, then internal before external.

    Raises:
        CovidctError: a folder does not exist, or a metrics file is not valid JSON.
    """
    roots = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    rows, seen = [], set()
    for root in map(Path, roots):
        if not root.is_dir():
            raise CovidctError(f"Runs folder {root} does not exist; train and evaluate runs first "
                               "(covidct train --config NAME --evaluate).")
        for metrics_file in sorted(root.rglob("metrics_*.json")):
            if metrics_file.resolve() in seen or metrics_file.name == "metrics_cv.json":
                continue
            seen.add(metrics_file.resolve())
            metrics = _read_json(metrics_file)
            evaluated = metrics.get("evaluated_on") or {}
            block = metrics.get("slice")
            if not isinstance(block, dict) or "dice" in metrics:
                continue  # segmentation runs have Dice, not F1/AUC
            section = evaluated.get("section", "internal")
            if evaluated.get("is_selection_set") or (section == "internal" and evaluated.get("split") != "test"):
                continue  # the validation split selected the checkpoint; train measures fit
            run_dir = metrics_file.parent
            info = _read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
            ci = block.get("ci") or {}
            relative = run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name
            row = {
                "run": relative,
                "model": info.get("model", ""),
                "stage": info.get("stage", ""),
                "setting": _setting(run_dir),
                "dataset": evaluated.get("dataset", info.get("dataset", "")),
                "section": section,
                "evaluated on": evaluated.get("split", ""),
                "n images": evaluated.get("n_images"),
                "n groups": evaluated.get("n_groups"),
                "run dir": str(run_dir),
            }
            for key, json_key in _JSON_KEYS.items():
                interval = ci.get(json_key) or {}
                row[key] = _number(block.get(json_key))
                row[f"{key} low"] = _number(interval.get("low"))
                row[f"{key} high"] = _number(interval.get("high"))
            rows.append(row)
    frame = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    if len(frame):
        frame = frame.assign(_external=frame["section"] == "external")
        frame = frame.sort_values(["model", "stage", "setting", "run", "_external", "evaluated on"], kind="stable")
        frame = frame.drop(columns="_external").reset_index(drop=True)
    return frame


def finished_runs_without_test_scores(runs_root: str | os.PathLike) -> list[Path]:
    """Finished classification run folders under ``runs_root`` that have no ``metrics_test.json`` yet.

    ``covidct evaluate --run RUN`` (or ``evaluate_run``) scores them; ``collect_scores`` cannot list them before.
    """
    root = Path(runs_root)
    if not root.is_dir():
        return []
    found = []
    for run_json in sorted(root.rglob("run.json")):
        run_dir = run_json.parent
        try:
            info = json.loads(run_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
        if (
            isinstance(info, dict)
            and info.get("status") == "finished"
            and info.get("task") not in ("segmentation", "pretrain")
            and (run_dir / "model.keras").is_file()
            and not (run_dir / "metrics_test.json").is_file()
        ):
            found.append(run_dir)
    return found


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise unknown_name_error("metric", metric, METRICS)


def _require_rows(scores: pd.DataFrame, what: str) -> None:
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns and c != "run dir"]
    if missing:
        raise CovidctError(f"{what}: the scores table lacks the columns {missing}; build it with collect_scores(...).")
    if not len(scores):
        raise CovidctError(f"{what}: no evaluated runs to compare; evaluate runs first (covidct evaluate --run RUN).")


def _interval_text(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def score_table(scores: pd.DataFrame, sort_by: str = "macro_f1", section: str | None = "internal") -> pd.DataFrame:
    """The comparison table: one row per evaluated set, best first, numbers plus a readable CI column.

    Args:
        scores: ``collect_scores`` output.
        sort_by: ``"macro_f1"`` or ``"auc"`` (descending; NaN last, ties in model order).
        section: ``"internal"`` (test splits only), ``"external"``, or None for both.

    Returns:
        DataFrame: run, model, stage, setting, evaluated on, n images, n groups, the two metrics with their
        CI ends (numeric, so the table sorts again on any column), and ``macro-F1 [95% CI]`` /
        ``AUC [95% CI]`` texts.
    """
    _require_rows(scores, "score_table")
    _check_metric(sort_by)
    if section not in ("internal", "external", None):
        raise CovidctError(f"score_table: section must be 'internal', 'external' or None, not {section!r}.")
    rows = scores if section is None else scores[scores["section"] == section]
    rows = rows.sort_values(sort_by, ascending=False, na_position="last", kind="stable")
    table = rows[[
        "run", "model", "stage", "setting", "evaluated on", "n images", "n groups",
        "macro_f1", "macro_f1 low", "macro_f1 high", "auc", "auc low", "auc high",
    ]].reset_index(drop=True)
    for key, label in (("macro_f1", "macro-F1 [95% CI]"), ("auc", "AUC [95% CI]")):
        table[label] = [
            _interval_text(v, lo, hi) for v, lo, hi in zip(table[key], table[f"{key} low"], table[f"{key} high"])
        ]
    return table


def run_label(row) -> str:
    """``model · stage · setting`` of a scores row (the run folder name when the model is unknown)."""
    parts = [str(row[k]) for k in ("model", "stage", "setting") if str(row.get(k, "") or "")]
    return " · ".join(parts) if parts else str(row["run"])


def _errors(values, lows, highs) -> np.ndarray:
    """(2, N) errorbar lengths below/above each value; 0 where the interval is unknown."""
    values, lows, highs = (np.asarray(a, dtype=float) for a in (values, lows, highs))
    below = np.where(np.isnan(lows), 0.0, values - lows)
    above = np.where(np.isnan(highs), 0.0, highs - values)
    return np.nan_to_num(np.vstack([below, above]), nan=0.0)


def _value_labels(ax, x, values) -> None:
    """Each bar's value written inside its foot (clear of the whiskers); ``n/a`` for an undefined score."""
    for xi, value in zip(x, values):
        nan = math.isnan(value)
        ax.text(xi, 0.015, "n/a" if nan else f"{value:.2f}", ha="center", va="bottom", fontsize=7,
                color="black" if nan or value < 0.08 else "white")


def plot_scores(scores: pd.DataFrame, metrics: Iterable[str] = ("macro_f1", "auc"), title: str | None = None) -> Figure:
    """Grouped bars of the test-split scores: one group per model, one bar per stage · setting, 95% CI whiskers.

    The view of the original study's F1-score and AUC notebooks, one panel per metric. Only internal
    test-split rows are drawn (external scores: ``plot_internal_external``). Bars are drawn in the order of
    ``collect_scores`` (model, stage, setting, run); a run without a bootstrap CI gets no whisker.

    Args:
        scores: ``collect_scores`` output.
        metrics: metric keys of ``METRICS``, one panel each.
        title: figure title.

    Returns:
        The Figure (each panel's bars are its ``ax.patches``, its whiskers its ``ax.containers``).
    """
    _require_rows(scores, "plot_scores")
    metrics = list(metrics)
    for metric in metrics:
        _check_metric(metric)
    rows = scores[scores["section"] == "internal"].reset_index(drop=True)
    if not len(rows):
        raise CovidctError("plot_scores: no test-split evaluations among the runs (only external ones); "
                           "run `covidct evaluate --run RUN` for the test split.")
    hue = [" · ".join(p for p in (str(s), str(t)) if p) or "run" for s, t in zip(rows["stage"], rows["setting"])]
    hues = list(dict.fromkeys(hue))
    models = list(dict.fromkeys(str(m) or str(r) for m, r in zip(rows["model"], rows["run"])))
    model_of = [str(m) or str(r) for m, r in zip(rows["model"], rows["run"])]
    # x position of each row: its model's group, then its place among the group's bars
    positions, centres, width = [], {}, 0.8
    for model_index, model in enumerate(models):
        members = [i for i, m in enumerate(model_of) if m == model]
        step = width / len(members)
        for rank, i in enumerate(members):
            positions.append((i, model_index - width / 2 + step * (rank + 0.5), step))
        centres[model] = model_index
    positions.sort()
    x = np.array([p[1] for p in positions])
    bar_width = np.array([p[2] for p in positions]) * 0.9
    colours = {h: f"C{k % 10}" for k, h in enumerate(hues)}
    fig = Figure(figsize=(len(metrics) * max(3.2, 0.9 * len(models) + 1.5) + 2.0, 4.2))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        values = rows[metric].to_numpy(dtype=float)
        ax.bar(
            x, np.nan_to_num(values, nan=0.0), width=bar_width, color=[colours[h] for h in hue],
            yerr=_errors(values, rows[f"{metric} low"], rows[f"{metric} high"]), capsize=3, ecolor="black",
        )
        _value_labels(ax, x, values)
        ax.set_xticks([centres[m] for m in models], models, rotation=20, ha="right")
        ax.set_ylim(0, 1.08)
        ax.set_ylabel(f"{METRICS[metric]} on the test split")
        ax.axhline(1.0, color="grey", linewidth=0.5)
    axes[-1].legend(handles=[Patch(color=colours[h], label=h) for h in hues], fontsize=8, loc="upper left",
                    bbox_to_anchor=(1.02, 1.0), title="stage · setting", title_fontsize=8)
    fig.suptitle(title or "test split, 95% bootstrap CIs over patients (validation selected each checkpoint)", fontsize=10)
    fig.tight_layout()
    return fig


def internal_external(scores: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Each run's internal test score next to each external dataset it was scored on, and the change.

    Args:
        scores: ``collect_scores`` output.
        metric: ``"auc"`` or ``"macro_f1"``.

    Returns:
        DataFrame, one row per (run, external set): run, model, stage, setting, run dir, internal (with low/high),
        external set, external (with low/high), and ``external - internal``. Runs scored on their test
        split only have one row with an empty external set (NaN scores).
    """
    _require_rows(scores, "internal_external")
    _check_metric(metric)
    rows = []
    for _, group in scores.groupby("run dir", sort=False):
        run = group["run"].iloc[0]
        internal = group[group["section"] == "internal"]
        first = group.iloc[0]
        base = {
            "run": run, "model": first["model"], "stage": first["stage"], "setting": first["setting"],
            "run dir": first["run dir"],
            "internal": internal[metric].iloc[0] if len(internal) else math.nan,
            "internal low": internal[f"{metric} low"].iloc[0] if len(internal) else math.nan,
            "internal high": internal[f"{metric} high"].iloc[0] if len(internal) else math.nan,
        }
        externals = group[group["section"] == "external"]
        if not len(externals):
            rows.append({**base, "external set": "", "external": math.nan, "external low": math.nan,
                         "external high": math.nan})
        for _, ext in externals.iterrows():
            rows.append({**base, "external set": ext["evaluated on"], "external": ext[metric],
                         "external low": ext[f"{metric} low"], "external high": ext[f"{metric} high"]})
    frame = pd.DataFrame(rows)
    frame["external - internal"] = frame["external"] - frame["internal"]
    return frame


def plot_internal_external(scores: pd.DataFrame, metric: str = "auc", title: str | None = None) -> Figure:
    """Per run, the internal test score beside each external score, with 95% CI whiskers.

    Runs without an external evaluation show their internal bar alone and the title says how to add one
    (``covidct evaluate --run RUN --dataset NAME --label-map ...``), so the figure always draws.

    Args:
        scores: ``collect_scores`` output.
        metric: ``"auc"`` or ``"macro_f1"``.
        title: figure title.

    Returns:
        The Figure: one bar group per run in ``internal_external`` order, the internal bar first.
    """
    paired = internal_external(scores, metric)
    runs = list(dict.fromkeys(paired["run dir"]))
    sets = ["internal test"] + [s for s in dict.fromkeys(paired["external set"]) if s]
    colours = {name: ("tab:blue" if name == "internal test" else f"C{(k + 1) % 10}") for k, name in enumerate(sets)}
    width = 0.8 / len(sets)
    bars = []  # (x, name, value, low, high), internal bar first in each run's group
    for run_index, run in enumerate(runs):
        group = paired[paired["run dir"] == run]
        first = group.iloc[0]
        members = [("internal test", first["internal"], first["internal low"], first["internal high"])]
        members += [(r["external set"], r["external"], r["external low"], r["external high"])
                    for _, r in group.iterrows() if r["external set"]]
        bars += [(run_index - 0.4 + width * (sets.index(m[0]) + 0.5), *m) for m in members]
    x, names, values, lows, highs = (list(column) for column in zip(*bars))
    values = np.asarray(values, dtype=float)
    fig = Figure(figsize=(max(5.0, 1.4 * len(runs) + 2.0) + 2.0, 4.2))
    ax = fig.add_subplot()
    ax.bar(x, np.nan_to_num(values, nan=0.0), width=width * 0.9, color=[colours[n] for n in names],
           yerr=_errors(values, lows, highs), capsize=3, ecolor="black")
    _value_labels(ax, x, values)
    labels = [run_label(paired[paired["run dir"] == run].iloc[0]) for run in runs]
    ax.set_xticks(range(len(runs)), labels, rotation=20, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"{METRICS[metric]}")
    handles = [Patch(color=colours[name], label=name) for name in sets]
    if metric == "auc":
        handles.append(ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (AUC 0.5)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if len(sets) == 1 and title is None:
        title = ("internal test only: no external evaluation yet "
                 "(covidct evaluate --run RUN --dataset NAME --label-map ...)")
    ax.set_title(title or "internal test split vs external datasets (95% bootstrap CIs)", fontsize=10)
    fig.tight_layout()
    return fig
