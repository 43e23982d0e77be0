"""``train(cfg)``: the one place in covidct that compiles and fits a model.

Every run takes the same steps; its task (``covidct.train.tasks``: classification, volume, segmentation,
pretrain; looked up once, from ``cfg.task`` and the model's registered task) fills them in:

check the task's settings and arguments → mark, lock and (after a failure) clean the run folder
(``covidct.runs.writing_run``) → refuse to clobber a finished run, or resume an interrupted one
(``covidct.train.run_folder``) → seed, load and check the data, plan the fit → write ``config.yaml`` →
fit each unit through the one epoch loop (``covidct.train.loop``: checkpoint of the best validation epoch,
early stopping, NaN handling, ``history.csv``, resumable ``train_state.npz``) → ``run.json`` +
``run_report.md``.

The validation set selects the checkpoint; it is never reported as a test score (``covidct
evaluate`` does that on the test split; ``covidct.segment.evaluate.evaluate_segmentation`` for
segmenters, per image with bootstrap intervals).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from covidct.config import RunConfig, dump_config
from covidct.runs import CONFIG_FILE, STATE_FILE, check_unlocked, run_status, writing_run
from covidct.train.build import build_configured_model, recalibration_source  # re-exported for scripts
from covidct.train.loop import validation_scores  # re-exported for scripts
from covidct.train.run_folder import prepare_run_dir, record_run
from covidct.train.runtime import enable_compilation_cache, gpu_names  # gpu_names: re-exported for scripts
from covidct.train.tasks import Request, Task, task_for


def train(
    cfg: RunConfig,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    data=None,
    progress: bool = True,
    fold: int | None = None,
    jobs: int = 1,
) -> Path:
    """Train the model described by ``cfg`` and save the run folder.

    Args:
        cfg: a validated RunConfig (``covidct.config.load_config``).
        run_dir: the run folder (default ``<cfg.output_root>/<cfg.run_name>``).
        resume: continue an interrupted run from its last completed epoch.
        overwrite: delete an existing run folder (finished or not) and start again.
        data: already-loaded data (tests, notebooks): ``TrainingData`` for classification and volume
            runs, ``covidct.segment.data.SegmentationPairs`` for ``task: segmentation``,
            ``covidct.train.restoration.UnlabeledImages`` for ``task: pretrain``; default: built from
            ``cfg.data``.
        progress: show Keras' progress bar.
        fold: ``task: segmentation`` with ``segmentation.folds`` only: fit fold ``fold`` (0-based) alone and
            leave the run unfinished, so that the folds of one cross-validation can run at the same time in
            several processes (or machines sharing the folder) on the same ``run_dir``. An unfinished run
            folder of the same config is joined (its other folds are never touched); a finished fold is
            kept. A last call without ``fold`` (``resume=True``) fits any fold left and writes ``run.json``.
        jobs: ``task: segmentation`` with ``segmentation.folds`` only: fit up to ``jobs`` folds at the same time,
            each in its own fresh Python process (``fold=k`` there; logs in ``<run_dir>/fold_<k>.log``), then
            finish the run here. For a GPU, where a fold is compile-bound (BENCHMARKS.md, infection segmentation);
            on a CPU the processes share the cores. Each process must know the model: covidct's own are registered
            on import, a model registered by an importable module is imported by each process, one registered in a
            notebook is refused before any process starts (``covidct.train.folds.model_module``). Same result as
            ``jobs=1``.

    Returns:
        The run folder, holding ``config.yaml``, ``model.keras`` (best validation checkpoint),
        ``history.csv``, ``run.json`` (classes or lung input, preprocessing, best epoch, which split
        selected) and ``run_report.md``; segmentation runs also ``split.csv`` (rows of train/val/test)
        and, with folds, one such folder ``fold_<k>/`` per fold.

    Raises:
        CovidctError: finished run without overwrite, a model of another task, unusable splits, NaN
            loss (after keeping the last good checkpoint), a full disk.
    """
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.output_root) / cfg.run_name
    request = Request(cfg, run_dir, resume=resume, overwrite=overwrite, data=data, progress=progress, fold=fold,
                      jobs=jobs, entry=train)
    task = task_for(cfg, source=request.source)
    enable_compilation_cache()
    task.check_arguments(cfg, run_dir, fold, jobs)  # fold / jobs first: they apply to one task only
    task.check_config(cfg, request.source)
    if fold is not None:  # one fold beside others: the fold's own lock; the run's only from the parent (jobs)
        check_unlocked(run_dir, allowed_pids=(os.getppid(),))
    # Marked, locked, cleaned up after a failure: covidct.runs.writing_run (docs/data-safety.md).
    with writing_run(run_dir, lock=fold is None) as folder:
        request.folder = folder
        return run_task(task, request)


def run_task(task: Task, request: Request) -> Path:
    """The steps of a run in its marked and locked folder (see the module docstring); returns the folder."""
    cfg, run_dir = request.cfg, request.run_dir
    task.check_data(request.data)
    task.before_prepare(request)
    resuming = prepare_run_dir(cfg, run_dir, request.resume, request.overwrite, request.folder)
    started = time.perf_counter()
    prepared = task.load(request, resuming)
    dump_config(cfg, run_dir / CONFIG_FILE)
    outcome = task.fit(request, prepared, resuming, started)
    if outcome is None:  # one fold of several: the run stays unfinished
        return run_dir
    record_run(run_dir, outcome.info, task.report(cfg, outcome))
    if outcome.nan_error is not None:
        raise outcome.nan_error
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return run_dir


__all__ = ["build_configured_model", "gpu_names", "recalibration_source", "run_status", "run_task", "train",
           "validation_scores"]
