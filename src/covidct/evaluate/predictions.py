"""A run's saved predictions (``predictions_<split>.csv``) as arrays for plots and metrics."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.errors import CovidctError


@dataclass(frozen=True)
class Predictions:
    """The rows of ``predictions_<split>.csv`` with their true classes and class probabilities.

    Attributes:
        frame: the CSV as a DataFrame (one row per image).
        y_true: (N,) true class indices (``label_index``).
        probs: (N, C) class probabilities, columns in ``class_names`` order.
        class_names: the C class names.
    """

    frame: pd.DataFrame
    y_true: np.ndarray
    probs: np.ndarray
    class_names: list


def load_predictions(run_dir: str | os.PathLike, split: str = "test", class_names=None) -> Predictions:
    """Read ``<run_dir>/predictions_<split>.csv`` (written by ``evaluate_run``) as labels and probabilities.

    Args:
        run_dir: an evaluated run folder.
        split: which split's predictions.
        class_names: the class order of the probability columns; default: the order of the file's
            ``prob_<class>`` columns (the model's output order).

    Returns:
        The Predictions.

    Raises:
        CovidctError: the file is missing or lacks a ``label_index`` or ``prob_<class>`` column.
    """
    path = Path(run_dir) / f"predictions_{split}.csv"
    if not path.is_file():
        raise CovidctError(f"{path} does not exist; evaluate the run first (`covidct evaluate --run {run_dir} "
                           f"--split {split}` or covidct.evaluate.evaluate_run).")
    frame = pd.read_csv(path, keep_default_na=False)
    names = list(class_names) if class_names is not None else [c[len("prob_"):] for c in frame if c.startswith("prob_")]
    missing = [f"prob_{name}" for name in names if f"prob_{name}" not in frame] + (
        [] if "label_index" in frame else ["label_index"])
    if missing or not names:
        raise CovidctError(f"{path}: missing column(s) {missing or ['prob_<class>']}; re-evaluate the run.")
    probs = frame[[f"prob_{name}" for name in names]].to_numpy(dtype=np.float64)
    return Predictions(frame, frame["label_index"].to_numpy().astype(int), probs, names)
