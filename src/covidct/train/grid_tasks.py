"""The runs of a grid as tasks of ``covidct.executor.run_tasks`` (``covidct grid --executor dask``).

Each unfinished run of the grid is one task that trains it (resuming an interrupted one) and evaluates it
on its test split, in its own run folder exactly as the sequential grid does; ``run_grid`` then builds the
summary from the folders (a run that failed in its task is tried once more there, in this process). A
worker that dies mid-run leaves an unfinished, marked folder: the retried task resumes or restarts it
(``covidct.runs``).

Each task trains in a fresh Python process started by the worker (``python -m covidct.train.grid_tasks``,
killed with its worker on Linux): a TensorFlow fit inside a Dask worker process itself was measured not
reproducible (three different first-epoch losses from one config and seed, where fresh processes agree), and a
fresh process also returns its memory after each run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from covidct.errors import CovidctError
from covidct.evaluate.evaluator import evaluate_run, run_task
from covidct.executor import Task, read_task_arguments, run_in_fresh_process, run_tasks
from covidct.segment.evaluate import evaluate_segmentation
from covidct.train.trainer import run_status, train

log = logging.getLogger(__name__)


def grid_run_task(cfg, evaluate: bool = True, n_bootstrap: int | None = None, fresh_process: bool = True) -> str:
    """Train (or resume) and evaluate one grid run in its folder; returns ``"finished"`` or ``"failed: ..."``.

    Args:
        cfg: the run's RunConfig.
        evaluate: evaluate it on its test split when that is not done.
        n_bootstrap: bootstrap replicates of the evaluation.
        fresh_process: train in a new Python process (the default on workers), else in this one.
    """
    if fresh_process:
        return run_in_fresh_process("covidct.train.grid_tasks", (cfg, evaluate, n_bootstrap), f"Grid run {cfg.run_name}")

    run_dir = Path(cfg.output_root) / cfg.run_name
    status = run_status(run_dir)
    try:
        if status != "finished":
            train(cfg, run_dir=run_dir, resume=status == "interrupted", overwrite=status == "failed", progress=False)
        if evaluate and not any((run_dir / name).is_file() for name in ("metrics_test.json", "metrics_cv.json")):
            if run_task(run_dir) == "segmentation":
                evaluate_segmentation(run_dir, n_bootstrap=n_bootstrap)
            else:
                evaluate_run(run_dir, split="test", n_bootstrap=n_bootstrap, progress=False)
    except CovidctError as failure:  # the summary pass reports it (and tries the run once more)
        log.error("%s failed: %s", cfg.run_name, failure)
        return f"failed: {failure}"
    return "finished"


def run_grid_tasks(configs: list, executor: str, evaluate: bool = True, n_bootstrap: int | None = None) -> dict:
    """Run every unfinished run of ``configs`` as a task on ``executor``; ``{run name: status}``."""
    pending = [cfg for cfg in configs if run_status(Path(cfg.output_root) / cfg.run_name) != "finished"
               or (evaluate and not any((Path(cfg.output_root) / cfg.run_name / name).is_file()
                                        for name in ("metrics_test.json", "metrics_cv.json")))]
    tasks = [Task(cfg.run_name, grid_run_task, (cfg,), {"evaluate": evaluate, "n_bootstrap": n_bootstrap})
             for cfg in pending]
    return run_tasks(tasks, executor, what="runs")


__all__ = ["grid_run_task", "run_grid_tasks"]


if __name__ == "__main__":  # one grid run in a fresh process: python -m covidct.train.grid_tasks TASK.pkl
    _cfg, _evaluate, _n_bootstrap = read_task_arguments(sys.argv)
    sys.stdout.write(grid_run_task(_cfg, _evaluate, _n_bootstrap, fresh_process=False) + "\n")
