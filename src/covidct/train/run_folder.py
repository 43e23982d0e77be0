"""The run-folder steps every task takes: prepare the folder (refuse, resume or overwrite) and record the run.

``prepare_run_dir`` decides from the folder's status what ``train`` may do: a finished run needs
``--overwrite``, an interrupted one ``--resume`` (with the same config) or ``--overwrite``.
``record_run`` writes ``run.json`` and ``run_report.md`` atomically. The folder itself is marked, locked and
cleaned up after a failure by ``covidct.runs.writing_run`` around the whole run.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from covidct.config import RunConfig, config_to_dict
from covidct.errors import CovidctError
from covidct.runs import RUN_FILE, clear_run_dir, run_status
from covidct.train.state import write_json_atomic, write_text_atomic

REPORT_FILE = "run_report.md"


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool, folder=None) -> bool:
    """Refuse or clean the (marked, locked) run folder; returns True when training resumes from a saved state.

    ``--overwrite`` empties the folder but its marker (``covidct.runs.clear_run_dir``, which refuses a folder
    without one); ``folder`` (the ``RunFolder`` of ``writing_run``) then counts as fresh.
    """
    if overwrite:
        status = "new" if not run_dir.exists() else _status_or_corrupt(run_dir)
    else:
        status = run_status(run_dir)
    if status == "finished" and not overwrite:
        raise CovidctError(
            f"Run folder {run_dir} holds a finished run; refusing to overwrite it. "
            "Pass overwrite=True (--overwrite) or choose another name (--run-dir / name=...)."
        )
    if status == "interrupted" and not (resume or overwrite):
        raise CovidctError(
            f"Run folder {run_dir} holds an interrupted run. Pass resume=True (--resume) to continue it "
            "or overwrite=True (--overwrite) to start again."
        )
    if overwrite and run_dir.exists():
        clear_run_dir(run_dir)
        if folder is not None:
            folder.fresh = True
    run_dir.mkdir(parents=True, exist_ok=True)
    resuming = status == "interrupted" and resume and not overwrite
    if resuming:
        _check_resumed_config(cfg, run_dir)
    return resuming


def _status_or_corrupt(run_dir: Path) -> str:
    """``run_status``, or ``"corrupt"`` for an unreadable ``run.json`` (which ``--overwrite`` may replace)."""
    try:
        return run_status(run_dir)
    except CovidctError:
        return "corrupt"


def _check_resumed_config(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to resume a run folder whose saved config differs from ``cfg`` (the result would mix two runs)."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    try:
        saved = yaml.safe_load(saved_file.read_text())
    except yaml.YAMLError as error:
        raise CovidctError(f"{saved_file}: cannot read the interrupted run's config ({error}).") from error

    def leaves(tree, prefix=""):
        if isinstance(tree, dict):
            for key, value in tree.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], tree

    now, before = dict(leaves(config_to_dict(cfg))), dict(leaves(saved or {}))
    # A key the saved config lacks was added by a later covidct: it ran with that key's default.
    defaults = dict(leaves(config_to_dict(RunConfig())))
    before.update({k: defaults[k] for k in now.keys() - before.keys() if k in defaults})
    changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise CovidctError(
            f"Run folder {run_dir} holds an interrupted run with another config ({shown}"
            f"{', ...' if len(changed) > 6 else ''}); resuming would mix two runs. Use the same settings, "
            "another run folder, or overwrite=True (--overwrite) to start again."
        )


def record_run(run_dir: Path, info: dict, report: str) -> None:
    """Write the run's record ``run.json`` (``info``) and its ``run_report.md`` (``report``), atomically."""
    write_json_atomic(run_dir / RUN_FILE, info)
    write_text_atomic(run_dir / REPORT_FILE, report)
