"""Runs whose predictions are saved scores, not a model: the evidence runs of ``covidct evidence``.

Such a run folder (``run.json`` task ``evidence``) holds no ``model.keras``: its small model already scored
every row it will ever score, so ``evaluate_run`` reads those scores instead of predicting. The format:

* ``run.json``: ``task: evidence``; ``fitted_on`` (the dataset whose train + val rows fitted the model);
  optionally ``class_names`` and ``positive_class`` (older folders: the labels of the training dataset's
  scores and ``choice.json``'s ``positive``).
* ``scores_<dataset>.csv``: one row per slice with ``path``, ``group``, ``label`` (the dataset's own labels),
  ``split`` (``test`` for the training dataset's held-out rows), optionally ``slice_index``, and
  ``probability``: the probability of the positive class.

The internal evaluation is the ``test`` rows of ``scores_<fitted_on>.csv`` (its train and val rows fitted the
model and are not scored; labels other than the positive class count as the other class, as in the fit); an
external one is ``scores_<dataset>.csv``, whose labels the evaluator maps onto the run's classes with the label map
given, as for any run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.errors import CovidctError
from covidct.runs import read_run_info

#: ``run.json`` tasks whose predictions are saved scores.
SCORE_TASKS = ("evidence",)


@dataclass(frozen=True)
class SavedScores:
    """The rows of one ``scores_<dataset>.csv`` as the evaluator needs them.

    Attributes:
        manifest: path, group, label (the dataset's labels, not yet mapped), slice_index, source; one row per score.
        positive_probability: (N,) probability of ``positive_class``.
        class_names: the run's classes.
        positive_class: the class ``positive_probability`` belongs to.
        dataset: the dataset the rows come from.
        label_map: the labels of the training dataset's test rows onto the two classes when they have more
            (the model's own "positive vs the rest"); empty otherwise and for an external dataset.
        info: the run's ``run.json``.
        selection: what chose the model (for the result's ``selection`` block).
        command: the commands that reproduce the scores and their evaluation.
    """

    manifest: pd.DataFrame
    positive_probability: np.ndarray
    class_names: list
    positive_class: str
    dataset: str
    label_map: dict
    info: dict
    selection: dict
    command: str


def two_class_probabilities(positive_probability, class_names, positive_class) -> np.ndarray:
    """(N, 2) class probabilities in ``class_names`` order from the positive class's probability."""
    positive = list(class_names).index(positive_class)
    p = np.asarray(positive_probability, dtype=np.float64)
    return np.stack([p, 1.0 - p] if positive == 0 else [1.0 - p, p], axis=1)


def is_scores_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir``'s ``run.json`` names a task whose predictions are saved scores."""
    path = Path(run_dir) / "run.json"
    return path.is_file() and read_run_info(run_dir).get("task") in SCORE_TASKS


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CovidctError(f"{path} is not valid JSON ({error}); rerun `covidct evidence ... --fit`.") from None


def _read_scores(run_dir: Path, dataset: str, fix: str) -> pd.DataFrame:
    path = run_dir / f"scores_{dataset}.csv"
    if not path.is_file():
        present = sorted(p.name for p in run_dir.glob("scores_*.csv"))
        raise CovidctError(f"{path} does not exist (this run has {present or 'no scores'}); {fix}.")
    frame = pd.read_csv(path, keep_default_na=False, na_values={"probability": [""]})
    missing = [c for c in ("path", "group", "label", "probability") if c not in frame]
    if missing:
        raise CovidctError(f"{path}: missing column(s) {missing}; {fix}.")
    if frame["probability"].isna().any() or not frame["probability"].between(0.0, 1.0).all():
        raise CovidctError(f"{path}: 'probability' must be a number in [0, 1] on every row; {fix}.")
    return frame


def load_saved_scores(run_dir: str | os.PathLike, split: str = "test", dataset: str | None = None) -> SavedScores:
    """The saved scores of a scores run: its training dataset's ``split`` rows, or a whole external ``dataset``.

    Args:
        run_dir: the run folder (``run.json`` task ``evidence``).
        split: only ``"test"``: the model was fitted on the train and val rows.
        dataset: an external dataset whose ``scores_<dataset>.csv`` the run holds (None: internal).

    Returns:
        The SavedScores (labels as the CSV has them; the evaluator maps them).

    Raises:
        CovidctError: an unfitted run, a split other than test, a dataset the run has not scored, a bad CSV.
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    choice = _read_json(run_dir / "choice.json")
    fitted_on = info.get("fitted_on") or choice.get("training_dataset")
    if not fitted_on:
        raise CovidctError(f"{run_dir} holds no fitted evidence model (run.json has no 'fitted_on'); run "
                           f"`covidct evidence --segmenter SEG --dataset sars-cov-2-ct --fit --out {run_dir}` first.")
    fit_command = f"covidct evidence --segmenter SEG --dataset {fitted_on} --fit --out {run_dir}"
    training = _read_scores(run_dir, fitted_on, f"rerun `{fit_command}`")
    positive = info.get("positive_class") or choice.get("positive")
    labels = sorted(set(training["label"].astype(str)))
    # the model scores the positive class against the rest: two labels are its classes, more are "the rest"
    class_names = list(info.get("class_names") or (labels if len(labels) == 2 else sorted([str(positive), "NonCOV"])))
    if len(class_names) != 2 or positive not in class_names:
        raise CovidctError(f"{run_dir}: a scores run needs two classes and its positive class; got {class_names} "
                           f"and {positive!r}. Rerun `{fit_command}`.")
    segmenter = info.get("segmenter") or choice.get("segmenter") or "SEG"
    evaluate = f"covidct evaluate --run {run_dir}"
    if dataset is None:
        if split != "test":
            raise CovidctError(f"{run_dir} is an evidence run: its model was fitted on the train and val rows of "
                               f"{fitted_on}, so only --split test is scored (got {split!r}).")
        rows = training[training["split"].astype(str) == "test"] if "split" in training else training.iloc[:0]
        if rows.empty:
            raise CovidctError(f"{run_dir}/scores_{fitted_on}.csv has no test rows; rerun `{fit_command}`.")
        source = fitted_on
        negative = next(name for name in class_names if name != positive)
        label_map = {label: (label if label in class_names else negative) for label in labels}
        command = f"covidct evidence --segmenter {segmenter} --dataset {fitted_on} --fit --out {run_dir} && {evaluate}"
    else:
        rows = _read_scores(run_dir, dataset, f"score it first: `covidct evidence --segmenter {segmenter} "
                                              f"--dataset {dataset} --out {run_dir}`")
        source = dataset
        label_map = {}
        command = f"covidct evidence --segmenter {segmenter} --dataset {dataset} --out {run_dir} && {evaluate}"
    rows = rows.reset_index(drop=True)
    manifest = rows[[c for c in ("path", "group", "label", "slice_index") if c in rows]].assign(source=source)
    selection = {"split": f"train+val of {fitted_on} (grouped CV)", "monitor": "cv_auc_mean", "best_epoch": None,
                 "score": choice.get("cv_auc_mean"),
                 "model": f"{choice.get('features', '?')} / {choice.get('family', '?')}"}
    return SavedScores(manifest, rows["probability"].to_numpy(dtype=np.float64), class_names, str(positive), source,
                       label_map if label_map != {label: label for label in labels} else {}, info, selection, command)
