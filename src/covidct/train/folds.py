"""Folds of a segmentation cross-validation fitted apart: the ``fold`` / ``jobs`` arguments, per-fold locks,
and the fresh worker processes of ``train(cfg, jobs=N)``.

``train(cfg, fold=k)`` fits fold ``k`` alone under ``<run>/.fold_<k>.lock`` beside other processes on the
same run folder; ``jobs=N`` starts up to N fresh (spawned) processes, each calling ``train(cfg, fold=k)``,
then the run finishes in the calling process. A model registered outside covidct is imported by each
process (``model_module``); one registered in a notebook is refused before any process starts.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from covidct.config import RunConfig
from covidct.errors import CovidctError
from covidct.models import get_spec
from covidct.runs import run_lock, run_status

log = logging.getLogger(__name__)


def check_fold_arguments(cfg: RunConfig, run_dir: Path, fold, jobs) -> None:
    """Refuse bad ``fold`` / ``jobs`` arguments of a segmentation run before its folder is touched."""
    if not _is_count(jobs) or jobs < 1:
        raise CovidctError(f"train(cfg, jobs={jobs!r}): jobs must be a positive integer (parallel fold processes).")
    if jobs > 1 and (not cfg.segmentation.folds or fold is not None):
        raise CovidctError(
            f"train(cfg, jobs={jobs}): parallel folds need a cross-validation (segmentation.folds >= 2) and no fold "
            f"argument (config of {run_dir}: segmentation.folds {cfg.segmentation.folds}, fold {fold})."
        )
    if fold is not None:
        folds = cfg.segmentation.folds
        if not folds:
            raise CovidctError(
                f"train(cfg, fold={fold}): the config of {run_dir} fits the dataset's test split "
                "(segmentation.folds 0); one fold can be fitted only in a cross-validation (segmentation.folds >= 2)."
            )
        if not _is_count(fold) or not 0 <= fold < folds:
            raise CovidctError(f"train(cfg, fold={fold!r}): fold must be an integer in 0..{folds - 1} "
                               f"(segmentation.folds {folds}).")


def _is_count(value) -> bool:
    """A plain integer (not a bool): what fold numbers and job counts must be."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def model_module(name: str) -> str | None:
    """The module a new process must import to have model ``name`` registered: None for covidct's own models
    and for a script's (a spawned process runs the script's top level again); an error for a model registered in
    an interactive session (a notebook), which no new process can import."""
    builder = get_spec(name).builder
    module = getattr(getattr(builder, "func", builder), "__module__", None) or "__main__"  # functools.partial too
    if module == "covidct" or module.startswith("covidct."):
        return None
    if module in ("__main__", "__mp_main__"):
        if getattr(sys.modules.get("__main__"), "__file__", None):
            return None
        raise CovidctError(
            f"Model {name!r} is registered in this interactive session (a notebook or a shell): the new processes of "
            "train(cfg, jobs=N) cannot see it. Put its builder and the register_model call in a module (a .py file on "
            "the Python path) and import that module, or fit the folds with jobs=1."
        )
    return module


def fold_process(entry, cfg: RunConfig, run_dir: str, pairs, fold: int, module: str | None = None) -> str:
    """One fold of a segmentation CV in a fresh process (``train(cfg, jobs=...)``); its log goes to a file.
    ``module`` (``model_module``) is imported first, so that a model registered outside covidct is known."""
    handler = logging.FileHandler(Path(run_dir) / f"fold_{fold}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    log.info("fold_%d in process %d", fold, os.getpid())
    try:
        if module:
            importlib.import_module(module)  # an ImportError fails this fold like any error (the caller names it)
        entry(cfg, run_dir=run_dir, data=pairs, progress=False, fold=fold)
    finally:
        root.removeHandler(handler)
        handler.close()
    return run_status(Path(run_dir) / f"fold_{fold}")


def fit_folds_in_processes(entry, cfg: RunConfig, run_dir: Path, pairs, pending: list[int], jobs: int) -> None:
    """Fit the ``pending`` folds, ``jobs`` at a time, each in a new (spawned) process; wait for all of them.

    A failed fold does not stop the others (their work is kept); the first failure is raised at the end,
    naming the fold and its log. The new processes do not take a GPU's memory up front.
    """
    if not pending:
        return
    module = model_module(cfg.model.name)  # before any process starts
    log.info("fitting %s in %d process(es) at a time (logs: %s/fold_<k>.log)",
             ", ".join(f"fold_{k}" for k in pending), min(jobs, len(pending)), run_dir)
    saved = {name: os.environ.get(name) for name in ("XLA_PYTHON_CLIENT_PREALLOCATE", "TF_FORCE_GPU_ALLOW_GROWTH")}
    os.environ.update(XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_FORCE_GPU_ALLOW_GROWTH="true")  # inherited
    failures = []
    try:
        # a fresh process per fold (Python >= 3.11): nothing of one fold's model or GPU memory outlives it
        fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(pending)), mp_context=context, **fresh) as pool:
            running = {pool.submit(fold_process, entry, cfg, str(run_dir), pairs, k, module): k for k in pending}
            done_count = 0
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    k = running.pop(future)
                    done_count += 1
                    try:
                        status = future.result()
                    except Exception as error:  # a crashed process (BrokenProcessPool) or an error inside train()
                        failures.append((k, error))
                        log.error("fold_%d failed (%d/%d): %s", k, done_count, len(pending), error)
                        continue
                    log.info("fold_%d %s (%d/%d)", k, status, done_count, len(pending))
                    if status != "finished":
                        failures.append((k, CovidctError(f"fold_{k} ended {status}")))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if failures:
        k, error = failures[0]
        others = f" (and {len(failures) - 1} other fold(s))" if len(failures) > 1 else ""
        raise CovidctError(
            f"fold_{k} of {run_dir} failed{others}: {error}. Log: {run_dir / f'fold_{k}.log'}. The finished folds "
            "are kept; fix the cause and resume the run (resume=True / --resume)."
        ) from error


def fold_lock(split_dir: Path):
    """Hold ``<run>/.<fold>.lock`` while this process fits the fold (``covidct.runs.run_lock``).

    Two processes fitting the same fold (``fold=k`` started twice, or a finishing call beside a running fold)
    would write the same files; the second stops with an error naming the owner instead. A lock left by a
    process of this host that no longer runs is taken over with a warning.
    """
    lock = split_dir.parent / f".{split_dir.name}.lock"
    return run_lock(lock, f"{split_dir.name} of {split_dir.parent}", doing="fitted")
