"""The runs of a grid as tasks of ``covidct.executor.run_tasks`` (``covidct grid --executor dask``).

Each unfinished run of the grid is one task that trains it (resuming an interrupted one) and evaluates it
on its test split, in its own run folder exactly as the sequential grid does; ``run_grid`` then builds the
summary from the folders (a run that failed in its task is tried once more there, in this process). A
worker that dies mid-run leaves an unfinished, marked folder: the retried task resumes or restarts it
(``covidct.runs``), so the finished folders are those of a sequential grid.
"""

from __future__ import annotations

import logging
from pathlib import Path

from covidct.errors import CovidctError
from covidct.executor import Task, run_tasks

log = logging.getLogger(__name__)


def grid_run_task(cfg, evaluate: bool = True, n_bootstrap: int | None = None) -> str:
    """Train (or resume) and evaluate one grid run in its folder; returns its status."""
    from covidct.train.trainer import run_status, train

    run_dir = Path(cfg.output_root) / cfg.run_name
    status = run_status(run_dir)
    try:
        if status != "finished":
            train(cfg, run_dir=run_dir, resume=status == "interrupted", overwrite=status == "failed", progress=False)
        if evaluate and not any((run_dir / name).is_file() for name in ("metrics_test.json", "metrics_cv.json")):
            from covidct.evaluate.evaluator import evaluate_run, run_task

            if run_task(run_dir) == "segmentation":
                from covidct.segment.evaluate import evaluate_segmentation

                evaluate_segmentation(run_dir, n_bootstrap=n_bootstrap)
            else:
                evaluate_run(run_dir, split="test", n_bootstrap=n_bootstrap, progress=False)
    except CovidctError as failure:  # the summary pass reports it (and tries the run once more)
        log.error("%s failed: %s", cfg.run_name, failure)
        return f"failed: {failure}"
    return "finished"


def run_grid_tasks(configs: list, executor: str, evaluate: bool = True, n_bootstrap: int | None = None) -> dict:
    """Run every unfinished run of ``configs`` as a task on ``executor``; ``{run name: status}``."""
    from covidct.train.trainer import run_status

    pending = [cfg for cfg in configs if run_status(Path(cfg.output_root) / cfg.run_name) != "finished"
               or (evaluate and not any((Path(cfg.output_root) / cfg.run_name / name).is_file()
                                        for name in ("metrics_test.json", "metrics_cv.json")))]
    tasks = [Task(cfg.run_name, grid_run_task, (cfg,), {"evaluate": evaluate, "n_bootstrap": n_bootstrap})
             for cfg in pending]
    return run_tasks(tasks, executor, what="runs")


__all__ = ["grid_run_task", "run_grid_tasks"]
