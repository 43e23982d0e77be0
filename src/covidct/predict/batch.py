"""``covidct predict``: class probabilities of any number of slice images, in resumable shards.

The inputs (``covidct.predict.inputs``) are cut into shards of ``shard_size`` rows; each shard is one task
(``covidct.executor.run_tasks``: in this process, or on Dask workers) that reads its images a batch at a
time, predicts them with the run's own preprocessing (``covidct.train.run.predict_images``) and writes
``<out>/shards/part-<k>.csv`` (or ``.parquet``) atomically. Memory is bounded by one batch of images per
worker plus the list of paths; it does not grow with the number of images.

A rerun with the same run, inputs and shard size skips every shard already written, so an interrupted
job (or a dead worker) continues where it stopped; ``<out>/predict.json`` records what the shards hold
and a rerun with anything else is refused (``overwrite=True`` starts again). A file that cannot be read
gets a row with its ``error`` and empty probabilities instead of stopping the shard.

Columns of a shard: ``path``, ``source``, ``prob_<class>`` for each class of the run, ``predicted`` (the
arg-max class) and ``error``. Read them all with ``pandas.concat(map(pandas.read_csv, sorted(glob)))`` or
``dask.dataframe.read_csv("<out>/shards/*.csv")``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.data.io import read_image
from covidct.data.writes import atomic_write_text, remove_owned_tree, removing_on_error
from covidct.errors import CovidctError
from covidct.executor import Task, run_tasks
from covidct.predict.inputs import inputs_digest, list_inputs
from covidct.train.run import load_run, predict_images, require_slice_run

log = logging.getLogger(__name__)

PLAN_FILE = "predict.json"
FORMATS = ("csv", "parquet")
_LOADED: dict = {}  # run folder -> LoadedRun, loaded once per worker process


def _loaded_run(run_dir: str):

    if run_dir not in _LOADED:
        loaded = load_run(run_dir)
        require_slice_run(loaded, "covidct predict")
        _LOADED[run_dir] = loaded
    return _LOADED[run_dir]


def shard_path(out: str | os.PathLike, index: int, fmt: str = "csv") -> Path:
    """``<out>/shards/part-<index:05d>.<fmt>``."""
    return Path(out) / "shards" / f"part-{index:05d}.{fmt}"


def predict_rows(run_dir: str, paths: list, batch_size: int = 64) -> pd.DataFrame:
    """Probabilities of the images ``paths`` (read ``batch_size`` at a time) as a shard table (no source)."""
    loaded = _loaded_run(str(run_dir))
    names = list(loaded.class_names)
    probs = np.full((len(paths), len(names)), np.nan)
    errors = [""] * len(paths)
    for start in range(0, len(paths), batch_size):
        images, rows = [], []
        for row in range(start, min(start + batch_size, len(paths))):
            try:
                images.append(read_image(paths[row]))
                rows.append(row)
            except CovidctError as error:
                errors[row] = str(error)
        if images:

            probs[rows] = predict_images(loaded, images, batch_size=batch_size)
    table = pd.DataFrame({"path": list(paths)})
    for c, name in enumerate(names):
        table[f"prob_{name}"] = probs[:, c]
    valid = ~np.isnan(probs).any(axis=1)
    table["predicted"] = [names[int(i)] if ok else "" for i, ok in zip(np.argmax(np.nan_to_num(probs, nan=-1), 1), valid)]
    table["error"] = errors
    return table


def _write_table(table: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "csv":
        atomic_write_text(path, table.to_csv(index=False))
        return
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with removing_on_error(temporary, what=path):
        table.to_parquet(temporary, index=False)
        os.replace(temporary, path)


def predict_shard(run_dir: str, paths: list, sources: list, out: str, index: int, batch_size: int = 64,
                  fmt: str = "csv") -> int:
    """One task: predict a shard's rows and write its file atomically (nothing when it exists already).

    Returns:
        The rows written (0 when the shard was complete).
    """
    target = shard_path(out, index, fmt)
    if target.is_file():
        return 0
    table = predict_rows(run_dir, paths, batch_size)
    table.insert(1, "source", list(sources))
    _write_table(table, target, fmt)
    return len(table)


def _check_plan(out: Path, plan: dict, overwrite: bool) -> None:
    """Refuse an output folder that holds other predictions (or other files); start again with ``overwrite``."""
    plan_file = out / PLAN_FILE
    if overwrite:
        remove_owned_tree(out, marker=PLAN_FILE, what="prediction folder")
    elif plan_file.is_file():
        old = json.loads(plan_file.read_text())
        changed = [k for k in ("run", "inputs_sha256", "rows", "shard_size", "format") if old.get(k) != plan.get(k)]
        if changed:
            raise CovidctError(f"{out} holds predictions of other settings ({', '.join(changed)} differ from "
                               f"{plan_file}); its shards cannot be reused. Use another --out, or --overwrite.")
    elif out.is_dir() and any(out.iterdir()):
        raise CovidctError(f"{out}: the folder exists and holds files covidct predict did not write (no {PLAN_FILE}). "
                           "Use an empty or new --out folder.")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan_file, json.dumps(plan, indent=2) + "\n")


def prediction_tasks(run_dir, out, rows: pd.DataFrame, shard_size: int, batch_size: int, fmt: str) -> list[Task]:
    """The tasks of the shards not yet written."""
    tasks = []
    for index, start in enumerate(range(0, len(rows), shard_size)):
        if shard_path(out, index, fmt).is_file():
            continue
        part = rows.iloc[start : start + shard_size]
        tasks.append(Task(f"predict-shard-{index:05d}", predict_shard,
                          (str(run_dir), part["path"].tolist(), part["source"].tolist(), str(out), index),
                          {"batch_size": batch_size, "fmt": fmt}))
    return tasks


def predict_batch(run_dir, out, sources=(), manifests=(), dicom_series=(), shard_size: int = 1000,
                  batch_size: int = 64, executor: str = "local", workers: int | None = None, fmt: str = "csv",
                  overwrite: bool = False, progress: bool = True) -> dict:
    """Predict every input image with a run, writing (or completing) the shards under ``out``.

    Args:
        run_dir: a finished 2-D classification run folder.
        out: the output folder (``predict.json`` and ``shards/``).
        sources: image files or folders.
        manifests: CSV files with a ``path`` column.
        dicom_series: DICOM series folders.
        shard_size: rows per shard (one task; one file).
        batch_size: images read and predicted at a time.
        executor: ``local``, ``dask`` or ``dask:ADDRESS`` (``covidct.executor``).
        workers: LocalCluster worker processes for ``dask`` (default: the cores, at most 8).
        fmt: ``csv``, or ``parquet`` (needs pyarrow).
        overwrite: delete an earlier prediction folder at ``out`` and start again.
        progress: a progress bar over the shards.

    Returns:
        ``{"rows", "shards", "written", "skipped", "seconds", "out"}``.

    Raises:
        CovidctError: bad arguments, no inputs, a run that is not a slice classifier, an ``out`` of other
            predictions.
    """
    if fmt not in FORMATS:
        raise CovidctError(f"covidct predict: format {fmt!r} is not one of {', '.join(FORMATS)}.")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as error:
            raise CovidctError("covidct predict --format parquet needs pyarrow (pip install pyarrow); "
                               "or use --format csv.") from error
    if shard_size < 1 or batch_size < 1:
        raise CovidctError(f"covidct predict: shard size and batch size must be positive, got {shard_size} and {batch_size}.")
    started = time.perf_counter()
    run_dir, out = Path(run_dir).resolve(), Path(out)
    loaded = _loaded_run(str(run_dir))  # refuse a bad run before any file is written
    rows = list_inputs(sources, manifests, dicom_series)
    shards = -(-len(rows) // shard_size)
    plan = {"run": str(run_dir), "class_names": list(loaded.class_names), "inputs_sha256": inputs_digest(rows["path"]),
            "rows": len(rows), "shard_size": int(shard_size), "shards": shards, "format": fmt}
    _check_plan(out, plan, overwrite)
    tasks = prediction_tasks(run_dir, out, rows, shard_size, batch_size, fmt)
    log.info("%d rows in %d shards; %d to write.", len(rows), shards, len(tasks))
    written = run_tasks(tasks, executor, workers=workers, progress=progress, what="shards")
    return {"rows": len(rows), "shards": shards, "written": len(tasks), "skipped": shards - len(tasks),
            "rows_written": int(sum(written.values())), "seconds": round(time.perf_counter() - started, 2),
            "out": str(out)}


def read_predictions(out) -> pd.DataFrame:
    """All shards of a prediction folder in row order (for inspection; large outputs: read the shards)."""
    out = Path(out)
    plan_file = out / PLAN_FILE
    if not plan_file.is_file():
        raise CovidctError(f"{out}: no {PLAN_FILE}; not a covidct predict folder.")
    plan = json.loads(plan_file.read_text())
    paths = [shard_path(out, k, plan["format"]) for k in range(plan["shards"])]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CovidctError(f"{out}: {len(missing)} shard(s) not written yet ({missing[0]}, ...); rerun covidct predict "
                           "with the same arguments to complete them.")
    reader = pd.read_csv if plan["format"] == "csv" else pd.read_parquet
    table = pd.concat([reader(p) for p in paths], ignore_index=True)
    for column in ("predicted", "error"):  # CSV reads an empty text as NaN
        table[column] = table[column].fillna("").astype(str)
    return table


__all__ = ["FORMATS", "PLAN_FILE", "predict_batch", "predict_rows", "predict_shard", "prediction_tasks",
           "read_predictions", "shard_path"]
