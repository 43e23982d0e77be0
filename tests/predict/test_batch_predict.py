"""``covidct predict``: shards that a rerun skips, equal results on Dask workers, a killed worker retried."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidct.errors import CovidctError

CLASSES = ["COV", "Normal", "Other"]
pytestmark = pytest.mark.filterwarnings("ignore::covidct.preprocess.lungs.LungMaskWarning")  # 32 px phantoms


@pytest.fixture(scope="module")
def slice_run(tmp_path_factory):
    """A run folder a prediction needs (config, run.json, model.keras): an untrained 32 px conv net."""
    import keras

    from covidct.config import config_from_dict, dump_config

    folder = tmp_path_factory.mktemp("run") / "tiny"
    folder.mkdir()
    cfg = config_from_dict({"name": "tiny", "data": {"dataset": "phantom", "stage": "original", "size": 32},
                            "model": {"name": "simple_cnn"}})
    dump_config(cfg, folder / "config.yaml")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(len(CLASSES))])
    model.save(folder / "model.keras")
    (folder / "run.json").write_text(json.dumps({"class_names": CLASSES, "stage": "original", "size": 32,
                                                 "input_names": ["image"], "status": "finished"}))
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """40 phantom slices (HU, .npy, 32 px) of the three classes in two sub-folders."""
    from covidct.data.phantom import CLASSES as PHANTOM_CLASSES
    from covidct.data.phantom import make_slice

    root = tmp_path_factory.mktemp("images")
    for i in range(40):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        np.save(folder / f"slice_{i:03d}.npy", make_slice(PHANTOM_CLASSES[i % 3], size=32, seed=i).image_hu)
    return root


@pytest.fixture(scope="module")
def sequential(slice_run, images, tmp_path_factory):
    from covidct.predict.batch import predict_batch

    out = tmp_path_factory.mktemp("sequential") / "out"
    summary = predict_batch(slice_run, out, [images], shard_size=10, batch_size=4, progress=False)
    return out, summary


def _shard_bytes(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def test_shards_hold_the_runs_own_predictions_and_a_rerun_skips_them(slice_run, images, sequential):
    from covidct.predict.batch import predict_batch, read_predictions
    from covidct.train.run import load_run, predict_images

    out, summary = sequential
    assert (summary["rows"], summary["shards"], summary["written"], summary["skipped"]) == (40, 4, 4, 0)
    assert sorted(_shard_bytes(out)) == [f"part-{k:05d}.csv" for k in range(4)]
    table = read_predictions(out)
    paths = sorted(str(p) for p in images.rglob("*.npy"))
    assert table["path"].tolist() == paths
    expected = predict_images(load_run(slice_run), paths, batch_size=40)
    np.testing.assert_allclose(table[[f"prob_{c}" for c in CLASSES]].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert table["predicted"].tolist() == [CLASSES[i] for i in expected.argmax(1)]
    assert (table["error"] == "").all() and (table["source"] == str(images)).all()

    before = _shard_bytes(out)
    assert predict_batch(slice_run, out, [images], shard_size=10, batch_size=4, progress=False)["written"] == 0
    (out / "shards" / "part-00002.csv").unlink()  # an interrupted job: one shard missing
    again = predict_batch(slice_run, out, [images], shard_size=10, batch_size=4, progress=False)
    assert (again["written"], again["skipped"]) == (1, 3) and _shard_bytes(out) == before
    with pytest.raises(CovidctError, match="shard_size differ"):
        predict_batch(slice_run, out, [images], shard_size=20, progress=False)


def test_an_unreadable_file_gets_its_error_and_the_manifest_and_cli_work(slice_run, images, tmp_path, capsys):
    from covidct.cli import main
    from covidct.predict.batch import read_predictions

    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    good = sorted(images.rglob("*.npy"))[:3]
    pd.DataFrame({"path": [str(p) for p in good] + ["broken.png"]}).to_csv(tmp_path / "list.csv", index=False)
    code = main(["predict", "--run", str(slice_run), "--manifest", str(tmp_path / "list.csv"),
                 "--out", str(tmp_path / "out"), "--shard-size", "3"])
    assert code == 0
    assert "4 images in 2 shards" in capsys.readouterr().out
    table = read_predictions(tmp_path / "out")
    assert table["error"].iloc[:3].eq("").all() and "broken.png" in table["error"].iloc[3]
    assert table["predicted"].iloc[3] == "" and np.isnan(table["prob_COV"].iloc[3])
    assert main(["predict", "--run", str(slice_run), "--out", str(tmp_path / "none")]) == 2


def _die_once(marker: str, function, *args, **kwargs):
    """Task body for the test below: the first attempt kills its own worker process mid-task."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return function(*args, **kwargs)


@pytest.mark.slow
def test_dask_workers_write_the_sequential_shards_even_when_one_dies(slice_run, images, sequential, tmp_path):
    """LocalCluster, 2 worker processes on loopback; the worker running shard 1 is killed during it."""
    import cloudpickle

    from covidct.executor import Task, run_tasks
    from covidct.predict.batch import _check_plan, prediction_tasks
    from covidct.predict.inputs import inputs_digest, list_inputs

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    out, marker = tmp_path / "out", tmp_path / "killed"
    rows = list_inputs([images])
    plan = json.loads((sequential[0] / "predict.json").read_text())
    assert plan["inputs_sha256"] == inputs_digest(rows["path"])
    _check_plan(out, plan, overwrite=False)
    tasks = prediction_tasks(slice_run.resolve(), out, rows, shard_size=10, batch_size=4, fmt="csv")
    tasks[1] = Task(tasks[1].key, _die_once, (str(marker), tasks[1].function, *tasks[1].args), tasks[1].kwargs)
    results = run_tasks(tasks, "dask", workers=2, progress=False)
    assert marker.is_file()  # a worker did die in the task
    assert results == {f"predict-shard-{k:05d}": 10 for k in range(4)}
    assert _shard_bytes(out) == _shard_bytes(sequential[0])
    assert not list((out / "shards").glob("*.tmp"))
