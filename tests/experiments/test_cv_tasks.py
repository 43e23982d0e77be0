"""``covidct cv --executor``: the folds as executor tasks write what the sequential protocol writes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pandas as pd
import pytest

from covidct.experiments import cli, cv_tasks
from covidct.experiments.cv import run_cv


def _args(tmp_path: Path, runs: str, *extra: str):
    return cli.parse_args(["--smoke", "--candidates", "base", "--folds", "2", "--max-steps", "1", "--n-bootstrap", "5",
                           "--runs-root", str(tmp_path / runs), "--cache-root", str(tmp_path / "cache"), *extra])


def _assert_same_folds(results: dict, reference: dict) -> None:
    dirs = [list(map(Path, r["candidates"]["base"]["run_dirs"])) for r in (results, reference)]
    assert [d.name for d in dirs[0]] == [d.name for d in dirs[1]] and len(dirs[0]) == 2
    for mine, theirs in zip(*dirs):
        pd.testing.assert_frame_equal(pd.read_csv(mine / "history.csv").drop(columns=["seconds"]),
                                      pd.read_csv(theirs / "history.csv").drop(columns=["seconds"]))
        assert (mine / "predictions_val.csv").read_bytes() == (theirs / "predictions_val.csv").read_bytes()
    for key in ("oof_macro_f1", "oof_auc", "folds"):
        assert results["candidates"]["base"][key] == reference["candidates"]["base"][key]


def test_a_fold_task_trains_the_fold_run_cv_trains(tmp_path, monkeypatch):
    """The task rebuilds the fold's data itself (it may run on another machine): the same candidate, fold number
    and held-out rows as the sequential protocol's call, once per unfinished fold."""
    from covidct.experiments import cv as cv_module

    calls = []

    def fake_run_fold(name, fold, data, args):
        calls.append((name, fold, tuple(data.manifest.loc[data.manifest["split"] == "val", "path"]), len(data.images)))
        return Path(args.runs_root) / f"{name}-{fold}", 0.0

    monkeypatch.setattr(cv_module, "run_fold", fake_run_fold)
    monkeypatch.setattr(cv_tasks, "run_fold", fake_run_fold)
    args = _args(tmp_path, "runs", "--train-only")
    cv_module.run_cv(args)
    sequential, calls[:] = list(calls), []
    assert cv_tasks.run_fold_tasks(args, "local", fresh_process=False) == {"cv-base-fold0": "finished",
                                                                           "cv-base-fold1": "finished"}
    assert calls == sequential and len({c[2] for c in calls}) == 2 and all(c[2] for c in calls)


@pytest.mark.slow
def test_folds_as_local_tasks_write_what_the_sequential_run_writes(tmp_path):
    sequential = run_cv(_args(tmp_path, "sequential"))
    args = _args(tmp_path, "tasks")
    assert [t.key for t in cv_tasks.fold_tasks(args)] == ["cv-base-fold0", "cv-base-fold1"]
    statuses = cv_tasks.run_fold_tasks(args, "local", fresh_process=False)
    assert statuses == {"cv-base-fold0": "finished", "cv-base-fold1": "finished"}
    assert cv_tasks.fold_tasks(args) == []  # resumable: nothing left to run
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "tasks").rglob("*") if p.is_file()}
    tasked = run_cv(args)  # the scoring pass reads the finished folds and trains nothing
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    _assert_same_folds(tasked, sequential)


def test_evaluation_only_candidates_are_no_tasks_and_finished_folds_are_skipped(tmp_path):
    args = cli.parse_args(["--smoke", "--round", "capacity", "--candidates", "aug-e24", "aug-e24-tta", "--folds", "3",
                           "--runs-root", str(tmp_path / "runs"), "--train-only", "--fold", "0", "2"])
    assert [t.key for t in cv_tasks.fold_tasks(args)] == ["cv-aug-e24-fold0", "cv-aug-e24-fold2"]
    args.func = lambda parsed: 0  # as `covidct cv` sets it: the tasks carry the options only, picklable
    tasks = cv_tasks.fold_tasks(args)
    assert all(t.kwargs == {"fresh_process": True} for t in tasks)
    assert pickle.loads(pickle.dumps(tasks[0].args))[2].fold == [0, 2]


def test_an_unknown_executor_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args(["--smoke", "--executor", "spark"])
    assert stopped.value.code == 2
    assert "--executor 'spark': use local, dask" in capsys.readouterr().err


@pytest.mark.slow
def test_folds_on_a_dask_local_cluster_match_the_sequential_run(tmp_path):
    """Two worker processes, each fold trained in a fresh process (as ``covidct cv --executor dask``)."""
    pytest.importorskip("dask.distributed")
    sequential = run_cv(_args(tmp_path, "sequential"))
    out = tmp_path / "dask.json"
    tasked = cv_tasks.run_cv_tasks(_args(tmp_path, "dask", "--executor", "dask", "--out", str(out)))
    _assert_same_folds(tasked, sequential)
    assert json.loads(out.read_text())["candidates"]["base"]["oof_macro_f1"] == sequential["candidates"]["base"]["oof_macro_f1"]
