"""Evaluate after training: the one place a finished run is scored on its test rows as its task does.

``covidct train --evaluate``, ``covidct grid`` and ``covidct segment train`` call ``evaluate_after_training``:
classification and volume runs go to ``covidct.evaluate.evaluate_run`` (test split), segmentation runs to
``covidct.segment.evaluate.evaluate_segmentation`` (per image, bootstrap intervals); a pretraining run is not
evaluated. This module sits above training and evaluation (it combines them), beside the grid.
"""

from __future__ import annotations

import os
from pathlib import Path

from covidct.evaluate.evaluator import evaluate_run
from covidct.segment.evaluate import evaluate_segmentation
from covidct.train.tasks import task_of_run


def _classification(run_dir: Path, n_bootstrap, progress: bool, data) -> dict:
    return evaluate_run(run_dir, split="test", n_bootstrap=n_bootstrap, progress=progress, data=data)


def _segmentation(run_dir: Path, n_bootstrap, progress: bool, data) -> dict:
    return evaluate_segmentation(run_dir, n_bootstrap=n_bootstrap, pairs=data)


#: Task name -> its evaluation of a finished run (None: the task's runs are not evaluated).
EVALUATORS = {"classification": _classification, "volume": _classification, "segmentation": _segmentation,
              "pretrain": None}


def evaluate_after_training(run_dir: str | os.PathLike, n_bootstrap: int | None = None, progress: bool = False,
                            data=None) -> tuple[dict | None, str]:
    """Score a finished run on its test rows as its task does; returns (result, one line stating it).

    Args:
        run_dir: the finished run folder.
        n_bootstrap: bootstrap replicates (default: the run config's).
        progress: progress bars.
        data: the data it was trained on (tests, notebooks; default: read again from its config).

    Returns:
        The evaluator's result (None for a pretraining run, which is not evaluated) and the line that
        ``covidct train --evaluate`` prints.
    """
    run_dir = Path(run_dir)
    task = task_of_run(run_dir)
    evaluate = EVALUATORS[task.name]
    result = evaluate(run_dir, n_bootstrap, progress, data) if evaluate is not None else None
    return result, task.describe(run_dir, result)
