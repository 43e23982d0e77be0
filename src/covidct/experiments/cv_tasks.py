"""The folds of ``covidct cv`` as tasks of ``covidct.executor.run_tasks`` (``covidct cv --executor dask``).

Each (candidate, fold) whose run is not finished, or whose held-out predictions are missing, is one task: it
trains the fold (resuming an interrupted one) and writes ``predictions_val.csv``, in the fold's own run folder,
exactly as the sequential protocol does (``covidct.experiments.cv.run_fold``). ``run_cv`` then scores the folds
in this process as before; that pass finds the folds finished and only reads them, and a fold whose task failed
is trained there once more. Every file is written atomically and a rerun skips finished folds, so a worker that
dies mid-fold leaves an interrupted run that the retried task resumes.

As for grid runs (``covidct.train.grid_tasks``), each task trains in a fresh Python process started by the
worker: a TensorFlow fit inside a long-lived worker process was measured not reproducible, where fresh processes
agree. An evaluation-only candidate (``rounds.EVALUATION_ONLY``) is no task: it copies its source's fold models
in the scoring pass, after the source's tasks have trained them.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path

from covidct.data.splits import grouped_kfold
from covidct.errors import CovidctError
from covidct.executor import Task, parse_executor, read_task_arguments, run_in_fresh_process, run_tasks
from covidct.experiments.cv import run_cv, run_fold
from covidct.experiments.folds import candidate_config, candidate_data, fold_data
from covidct.experiments.rounds import EVALUATION_ONLY, TRAIN_FRACTION
from covidct.runs import run_status

log = logging.getLogger(__name__)


def _fold_done(name: str, fold: int, args) -> bool:
    cfg = candidate_config(name, fold, args)
    run_dir = Path(cfg.output_root) / cfg.run_name
    return (not args.overwrite and run_status(run_dir) == "finished"
            and (args.train_only or (run_dir / "predictions_val.csv").is_file()))


def fold_task(name: str, fold: int, args, fresh_process: bool = True) -> str:
    """Train (or resume) one candidate's fold and write its held-out predictions; ``"finished"`` or ``"failed: ..."``.

    Args:
        name: the candidate.
        fold: the fold number (0-based).
        args: the parsed ``covidct cv`` options.
        fresh_process: run in a new Python process (the default on workers), else in this one.
    """
    if fresh_process:
        return run_in_fresh_process("covidct.experiments.cv_tasks", (name, fold, args), f"cv candidate {name}, fold {fold}")

    # The folds are drawn on the first candidate's rows, as in run_cv (every candidate's rows are the same).
    own = copy.copy(args)
    own.candidates = list(dict.fromkeys([args.candidates[0], name]))
    datasets = candidate_data(own)[1]
    folds = grouped_kfold(datasets[args.candidates[0]].manifest, k=args.folds, seed=args.cv_seed)
    try:
        data = fold_data(datasets[name], folds[fold][1], TRAIN_FRACTION.get(name, 1.0), args.cv_seed)
        run_fold(name, fold, data, args)
    except CovidctError as failure:  # the scoring pass reports it (and trains the fold once more)
        log.error("cv candidate %s, fold %d failed: %s", name, fold, failure)
        return f"failed: {failure}"
    return "finished"


def fold_tasks(args, fresh_process: bool = True) -> list[Task]:
    """One task per unfinished (candidate, fold) of ``args`` (``--fold`` limits the folds), evaluation-only
    candidates left out (their source's tasks train their models)."""
    # The options only: `covidct cv` adds its handler (a lambda) to them, which pickle cannot send to a worker.
    args = argparse.Namespace(**{key: value for key, value in vars(args).items() if not callable(value)})
    folds = args.fold if args.fold is not None else range(args.folds)
    names = [EVALUATION_ONLY.get(name, name) for name in args.candidates]
    return [Task(f"cv-{name}-fold{k}", fold_task, (name, k, args), {"fresh_process": fresh_process})
            for name in dict.fromkeys(names) for k in folds if not _fold_done(name, k, args)]


def run_fold_tasks(args, executor: str, fresh_process: bool = True) -> dict:
    """Run every unfinished fold of ``args`` as a task on ``executor``; ``{task key: status}``."""
    return run_tasks(fold_tasks(args, fresh_process), executor, progress=False, what="folds")


def run_cv_tasks(args) -> dict:
    """``run_cv(args)`` with the folds trained as tasks of ``args.executor`` first (``local``: no tasks, the
    sequential protocol). The candidates' data is loaded (and their caches built) here before any task starts."""
    if parse_executor(args.executor)[0] != "local" and not args.score_only:
        candidate_data(args)
        run_fold_tasks(args, args.executor)
        args = copy.copy(args)
        args.overwrite = False  # the tasks retrained what --overwrite asked for; run_cv only reads it
    return run_cv(args)


__all__ = ["fold_task", "fold_tasks", "run_cv_tasks", "run_fold_tasks"]


if __name__ == "__main__":  # one fold in a fresh process: python -m covidct.experiments.cv_tasks TASK.pkl
    logging.basicConfig(level=logging.WARNING)
    _name, _fold, _args = read_task_arguments(sys.argv)
    sys.stdout.write(fold_task(_name, _fold, _args, fresh_process=False) + "\n")
