"""The training tasks and their registry: ``task_for(cfg)`` is the one place a run's task is looked up.

``TASKS`` maps each task name of ``covidct.config.TASKS`` to its ``Task`` (``covidct.train.tasks.base``).
``check_config`` runs a config's task check (its section and the recipes it names) after
``covidct.config.load_config``; ``load_run_config`` does both; ``task_of_run`` reads a run folder's task.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from covidct.config import RunConfig, config_path, load_config, resolve_task
from covidct.train.tasks.base import Outcome, Request, Task
from covidct.train.tasks.classification import ClassificationTask, VolumeTask
from covidct.train.tasks.pretrain import PretrainTask
from covidct.train.tasks.segmentation import SegmentationTask

#: Task name -> its implementation (one instance each: tasks hold no state).
TASKS: dict[str, Task] = {
    task.name: task for task in (ClassificationTask(), VolumeTask(), SegmentationTask(), PretrainTask())
}


def task_for(cfg: RunConfig, source: str = "config") -> Task:
    """The ``Task`` of a run (``cfg.task`` checked against the model's registered task)."""
    return TASKS[resolve_task(cfg, source=source)]


def check_config(cfg: RunConfig, source: str = "config") -> RunConfig:
    """Run the task's own check of ``cfg`` (its section, the recipes it names); returns ``cfg``.

    Raises:
        CovidctError: naming ``source`` and the bad key.
    """
    task_for(cfg, source).check_config(cfg, source)
    return cfg


def load_run_config(
    path: str | os.PathLike | None = None, overrides: list[str] | tuple = (), validate: bool = True
) -> RunConfig:
    """``covidct.config.load_config`` followed by the task's check (``check_config``), naming the file."""
    cfg = load_config(path, overrides, validate=validate)
    if validate:
        check_config(cfg, str(config_path(path)) if path is not None else "config")
    return cfg


def task_of_run(run_dir: str | os.PathLike) -> Task:
    """The ``Task`` of a finished run folder, from its ``run.json`` (classification when it names none)."""
    try:
        name = str(json.loads((Path(run_dir) / "run.json").read_text()).get("task") or "")
    except (OSError, ValueError):
        name = ""
    return TASKS.get(name, TASKS["classification"])


__all__ = ["TASKS", "Outcome", "Request", "Task", "check_config", "load_run_config", "task_for", "task_of_run"]
