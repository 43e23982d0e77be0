"""The slice classifier the notebooks share: trained once (notebook 06), read by the ones after it.

On a real dataset it is the shipped recipe for that dataset (``sars-cov-2-ct/small_cnn-lungs-robust-dataaug``);
without one, the phantom demo (``demo``). Smoke mode keeps it tiny: 64 px, two epochs, a few whole groups per
class (real data) or 90 phantom slices. Every notebook that asks for the same data and mode gets the same
run folder, ``<output_root>/<run name>``, so the first one trains and the others reuse it.
"""

from __future__ import annotations

import os
from pathlib import Path

from covidct.config import RunConfig, load_config
from covidct.errors import CovidctError
from covidct.train.run import train_or_reuse
from covidct.train.tasks import load_run_config
from covidct.train.trainer import run_status

RECIPES = {"sars-cov-2-ct": "sars-cov-2-ct/small_cnn-lungs-robust-dataaug"}
"""The shipped config a notebook trains for each real dataset (others: ``sars-cov-2-ct/base`` re-pointed)."""
SMOKE_GROUPS_PER_CLASS = 6
SMOKE_OVERRIDES = ("data.size=64", "training.epochs=2", "evaluation.n_bootstrap=50")


def classifier_config(data, smoke: bool = False, output_root: str | os.PathLike = "runs/notebooks",
                      overrides: list[str] | tuple = ()) -> RunConfig:
    """The RunConfig of the notebooks' slice classifier for ``data`` (a ``covidct.data.datasets.DataChoice``).

    Args:
        data: the data choice (real dataset with its folder, or phantoms).
        smoke: tiny and fast (CI): 64 px, 2 epochs, 50 bootstrap resamples, a subset of the data.
        output_root: the folder that holds the run folders.
        overrides: further ``key=value`` overrides, applied last.

    Returns:
        The validated RunConfig; its ``run_name`` names the shared run folder.
    """
    if data.is_real:
        name = RECIPES.get(data.dataset, "sars-cov-2-ct/base")
        options = f"{{groups_per_class: {SMOKE_GROUPS_PER_CLASS}"
        options += ", group_proxy: blocks}" if data.dataset == "sars-cov-2-ct" else "}"
        base = [f"data.dataset={data.dataset}", f"data.root={Path(data.root).resolve()}"]
        smoke_overrides = [*SMOKE_OVERRIDES, f"data.options={options}", "training.shortcut_probe=false"]
        stem = f"{data.dataset}-{Path(name).name}"
    else:
        name = "demo"
        base = []
        smoke_overrides = [*SMOKE_OVERRIDES, "data.options={n: 90, size: 64, seed: 0}"]
        stem = "phantom-demo"
    run_name = stem + ("-smoke" if smoke else "")
    every = [*base, f"output_root={output_root}", f"name={run_name}", *(smoke_overrides if smoke else []), *overrides]
    return load_run_config(name, every)


def classifier_run(data, smoke: bool = False, run: str | os.PathLike = "", output_root: str | os.PathLike = "runs/notebooks",
                   overrides: list[str] | tuple = (), progress: bool = False) -> tuple[Path, RunConfig]:
    """A finished run of the notebooks' slice classifier and its config: ``run`` when given, else trained or reused.

    Args:
        data: the data choice (``covidct.data.datasets.choose_data``).
        smoke: tiny and fast (see :func:`classifier_config`).
        run: a finished run folder to reuse (a notebook's ``RUN``); empty: ``<output_root>/<run name>``,
            trained here unless an earlier notebook already finished it (never retrained).
        output_root: the folder that holds the run folders.
        overrides: further ``key=value`` overrides of the config (only when training here).
        progress: show training progress.

    Returns:
        ``(run folder, its RunConfig)``.

    Raises:
        CovidctError: ``run`` is given but is not a finished run folder.
    """
    if run:
        run_dir = Path(run)
        if run_status(run_dir) != "finished":
            raise CovidctError(f"{run_dir}: not a finished run folder (no finished run.json); "
                               "set RUN to a folder `covidct train` finished, or to '' to train one here.")
        return run_dir, load_config(run_dir / "config.yaml", validate=False)
    cfg = classifier_config(data, smoke=smoke, output_root=output_root, overrides=overrides)
    run_dir = train_or_reuse(cfg, Path(cfg.output_root) / cfg.run_name, progress=progress)
    return Path(run_dir), cfg
