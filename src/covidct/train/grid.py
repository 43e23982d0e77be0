"""Experiment grids: the cross product models × stages × settings, run one after another.

A grid file (``configs/grids/*.yaml``)::

    base: ../sars-cov-2-ct/base.yaml     # a run config (path relative to the grid file) or a mapping
    output_root: runs/sars-cov-2-ct-small
    models: [small_cnn, simple_cnn]
    stages: [original, lungs]
    settings: [baseline, classw-dataaug]
    overrides: ["training.epochs=20"]    # applied to every run
    model_overrides:                     # per model (optional)
      efficientnet_b0: {model: {weights: imagenet, freeze: frozen-then-finetune}}

Finished runs are skipped, interrupted ones resumed, so rerunning the command after an interruption
continues where it stopped. Each finished run is evaluated on its test split; the summary table is
printed and written to ``<output_root>/grid_summary.{csv,md}``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
import yaml

from covidct.config import (
    RunConfig,
    apply_setting,
    config_from_dict,
    parse_override,
    set_nested,
    validate_config,
)
from covidct.errors import CovidctError, did_you_mean
from covidct.evaluate.report import markdown_table
from covidct.runs import run_status
from covidct.train.grid_tasks import run_grid_tasks
from covidct.train.state import write_text_atomic
from covidct.train.tasks import check_config
from covidct.train.trainer import train
from covidct.train.workflow import evaluate_after_training

log = logging.getLogger(__name__)

GRID_KEYS = ("base", "output_root", "models", "stages", "settings", "overrides", "model_overrides", "description")


def _merge(tree: dict, extra: dict) -> dict:
    out = dict(tree)
    for key, value in (extra or {}).items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_grid(path: str | os.PathLike, overrides: list[str] | tuple = (), validate: bool = True) -> list[RunConfig]:
    """Expand a grid file into one RunConfig per (model, stage, setting), named ``<model>-<stage>-<setting>``.

    Args:
        path: the grid YAML.
        overrides: extra ``key=value`` overrides applied to every run after the grid's own.
        validate: check that every model and stage is registered.

    Returns:
        The run configs in grid order (models outermost, settings innermost).
    """

    path = Path(path)
    if not path.is_file():
        raise CovidctError(f"Grid file {path} does not exist.")
    grid = yaml.safe_load(path.read_text()) or {}
    unknown = [k for k in grid if k not in GRID_KEYS]
    if unknown:
        raise CovidctError(f"{path}: unknown key {unknown[0]!r}.{did_you_mean(unknown[0], GRID_KEYS)} Known keys: {', '.join(GRID_KEYS)}.")
    base = grid.get("base") or {}
    if isinstance(base, str):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise CovidctError(f"{path}: base config {base_path} does not exist.")
        base = yaml.safe_load(base_path.read_text()) or {}
    for key in ("models", "stages", "settings"):
        if not grid.get(key):
            raise CovidctError(f"{path}: '{key}' must be a non-empty list.")
    configs = []
    for model in grid["models"]:
        for stage in grid["stages"]:
            for setting in grid["settings"]:
                tree = _merge(base, {"model": {"name": model}, "data": {"stage": stage}})
                tree = _merge(tree, (grid.get("model_overrides") or {}).get(model, {}))
                tree.pop("name", None)
                if grid.get("output_root"):
                    tree["output_root"] = grid["output_root"]
                for text in list(grid.get("overrides") or []) + list(overrides or []):
                    parts, value = parse_override(text)
                    set_nested(tree, parts, value)
                cfg = apply_setting(config_from_dict(tree, source=str(path)), setting)
                cfg = validate_config(cfg, source=str(path), check_registries=validate)
                configs.append(check_config(cfg, source=str(path)) if validate else cfg)
    return configs


def _summary_row(cfg: RunConfig, run_dir: Path, status: str, error: str = "") -> dict:
    row = {"run": cfg.run_name, "model": cfg.model.name, "stage": cfg.data.stage, "setting": cfg.setting, "status": status}
    info_file, metrics_file = run_dir / "run.json", run_dir / "metrics_test.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if info.get("monitor") != "last":  # a fixed budget selects nothing
            row[f"val {info.get('monitor', '')} (selection)"] = info.get("best_score")
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())["slice"]
        for key, label in (("macro_f1", "test macro-F1"), ("auc_macro_ovr", "test AUC")):
            ci = (metrics.get("ci") or {}).get(key) or {}
            value = metrics.get(key)
            row[label] = f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" if ci.get("low") is not None and value is not None else value
    if error:
        row["error"] = error
    return row


def run_grid(
    path: str | os.PathLike,
    overrides: list[str] | tuple = (),
    dry_run: bool = False,
    evaluate: bool = True,
    progress: bool = True,
    n_bootstrap: int | None = None,
    executor: str = "local",
) -> pd.DataFrame:
    """Run (or resume) every experiment of a grid and return the summary table.

    Args:
        path: the grid YAML.
        overrides: ``key=value`` overrides for every run.
        dry_run: only list the runs and their status.
        evaluate: evaluate each finished run on its test split (skipped when already done).
        progress: progress bars.
        n_bootstrap: bootstrap replicates of the evaluation (default: the config's).
        executor: ``local`` (one run after another, here), ``dask`` or ``dask:ADDRESS``: every unfinished run is
            trained and evaluated as a task first (``covidct.train.grid_tasks``), then summarised here.

    Returns:
        DataFrame with one row per run (status, selection score, test macro-F1 and AUC with CIs).
    """
    configs = load_grid(path, overrides)
    if executor != "local" and not dry_run:  # the runs as tasks first (covidct.train.grid_tasks)
        run_grid_tasks(configs, executor, evaluate, n_bootstrap)
    rows = []
    for i, cfg in enumerate(configs, start=1):
        run_dir = Path(cfg.output_root) / cfg.run_name
        status = run_status(run_dir)
        log.info("[%d/%d] %s: %s", i, len(configs), cfg.run_name, status)
        if dry_run:
            rows.append(_summary_row(cfg, run_dir, status))
            continue
        error = ""
        try:
            if status != "finished":
                train(cfg, run_dir=run_dir, resume=status == "interrupted", overwrite=status == "failed", progress=progress)
                status = "finished"
            if evaluate and not any((run_dir / name).is_file() for name in ("metrics_test.json", "metrics_cv.json")):
                evaluate_after_training(run_dir, n_bootstrap=n_bootstrap, progress=progress)
        except CovidctError as failure:
            # One failed experiment (NaN loss, a model that does not fit the size) must not stop the grid.
            status, error = "failed", str(failure)
            log.error("%s failed: %s", cfg.run_name, failure)
        rows.append(_summary_row(cfg, run_dir, status, error))
    table = pd.DataFrame(rows)
    if configs and not dry_run:
        root = Path(configs[0].output_root)
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / "grid_summary.csv", table.to_csv(index=False))
        write_text_atomic(root / "grid_summary.md", markdown_table(table))
    return table



__all__ = ["load_grid", "run_grid"]
