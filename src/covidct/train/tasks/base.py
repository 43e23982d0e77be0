"""The ``Task`` interface: what ``train(cfg)`` asks of classification, volume, segmentation and pretraining.

``train(cfg)`` (``covidct.train.trainer``) takes every run through the same steps, and a task fills them in:

1. ``check_config`` — the task's own settings (its config section, the recipes it names), before any work;
   ``check_arguments`` — the ``fold`` / ``jobs`` arguments (only segmentation takes them).
2. ``check_data`` — the kind of data handed to ``train(cfg, data=...)``.
3. the run folder is prepared (``covidct.train.run_folder.prepare_run_dir``), then ``load`` reads the data
   (``load_data``), checks it and plans the fit, and ``config.yaml`` is written;
4. ``fit`` builds the model(s), the batches and the validation of each unit and runs them through the one
   epoch loop (``covidct.train.loop``); it returns the run's record (``Outcome``), or None for a run left
   unfinished on purpose (one fold of several);
5. ``report`` turns the record into ``run_report.md``; ``run.json`` and the report are written once
   (``covidct.train.run_folder.record_run``); a NaN loss is raised after the record is written.

A finished run is scored on its test rows by its task's evaluator (``covidct.train.workflow``, above the
training and evaluation layers: "evaluate after training" of ``covidct train --evaluate``, ``covidct grid`` and
``covidct segment train``); ``describe`` states that result in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from covidct.config import RunConfig
from covidct.errors import CovidctError


@dataclass
class Request:
    """What ``train(cfg, ...)`` was asked: the config, the run folder and the call's arguments.

    Attributes:
        entry: the ``train`` function itself (a fold process of ``jobs`` calls it again).
        folder: the ``covidct.runs.RunFolder`` of the marked and locked run folder.
    """

    cfg: RunConfig
    run_dir: Path
    resume: bool = False
    overwrite: bool = False
    data: object = None
    progress: bool = True
    fold: int | None = None
    jobs: int = 1
    folder: object = None
    entry: object = None

    @property
    def source(self) -> str:
        """How messages name the config of this run."""
        return f"config of {self.run_dir}"


@dataclass
class Outcome:
    """The record of a fitted run: ``info`` (``run.json``), the loop's ``history``, a NaN error to raise."""

    info: dict
    history: list = field(default_factory=list)
    nan_error: CovidctError | None = None


class Task:
    """One kind of training run; subclasses fill in the steps (see the module docstring)."""

    #: The task's name (``cfg.task`` and the registered models' ``task``).
    name: str = ""

    def check_config(self, cfg: RunConfig, source: str) -> None:
        """Refuse settings that this task cannot run (its section, its recipes), naming ``source``."""

    def check_arguments(self, cfg: RunConfig, run_dir: Path, fold, jobs) -> None:
        """Refuse ``fold`` / ``jobs`` (segmentation cross-validation only) before the run folder is touched."""
        if fold is not None or jobs != 1:
            what = f"fold={fold}" if fold is not None else f"jobs={jobs}"
            raise CovidctError(f"train(cfg, {what}): fitting folds separately applies to task segmentation, not "
                               f"{self.name}.")

    def check_data(self, data) -> None:
        """Refuse data of another kind handed to ``train(cfg, data=...)`` (None: loaded from ``cfg.data``)."""

    def before_prepare(self, request: Request) -> None:
        """Adjust the request before the run folder is prepared (a fold joins the run of the other folds)."""

    def load_data(self, cfg: RunConfig, progress: bool):
        """Read the run's data from ``cfg.data``."""
        raise NotImplementedError

    def load(self, request: Request, resuming: bool):
        """Seed, read (unless given), check the data and plan the fit; returns what ``fit`` needs."""
        raise NotImplementedError

    def fit(self, request: Request, prepared, resuming: bool, started: float) -> Outcome | None:
        """Fit the run's unit(s) through the epoch loop; the record of the run, or None (left unfinished)."""
        raise NotImplementedError

    def report(self, cfg: RunConfig, outcome: Outcome) -> str:
        """``run_report.md`` of the run."""
        raise NotImplementedError

    def describe(self, run_dir: Path, result: dict | None) -> str:
        """One line stating the result of evaluating a finished run (None: the task's runs are not evaluated)."""
        return ""
