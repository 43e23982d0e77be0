"""Grid files expand to the cross product models × stages × settings with the study's names."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidct.errors import CovidctError
from covidct.train.grid import load_grid, run_grid

GRID = """
output_root: {root}
base:
  data: {{dataset: phantom, size: 48}}
  training: {{epochs: 30}}
models: [simple_cnn, small_cnn]
stages: [original, lungs]
settings: [baseline, classw-dataaug]
overrides: ["training.epochs=2"]
model_overrides:
  small_cnn: {{model: {{kwargs: {{dropout_rate: 0.0}}}}}}
"""


def test_grid_expansion_and_dry_run(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(root=tmp_path / "runs"))
    configs = load_grid(path)
    assert [c.run_name for c in configs][:4] == [
        "simple_cnn-original-baseline",
        "simple_cnn-original-classw-dataaug",
        "simple_cnn-lungs-baseline",
        "simple_cnn-lungs-classw-dataaug",
    ]
    assert len(configs) == 8 and all(c.training.epochs == 2 for c in configs)
    second = configs[1]
    assert second.training.class_weight == "balanced" and second.training.augmentation == "stage"
    assert configs[4].model.kwargs == {"dropout_rate": 0.0} and configs[0].model.kwargs == {}
    table = run_grid(path, dry_run=True)
    assert table["status"].tolist() == ["new"] * 8


def test_grid_errors(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("modles: [simple_cnn]\nstages: [original]\nsettings: [baseline]\n")
    with pytest.raises(CovidctError, match="Did you mean: models"):
        load_grid(path)
    path.write_text("models: [simple_cnn]\nstages: [original]\nsettings: [baseline, clasw]\n")
    with pytest.raises(CovidctError, match="Did you mean: classw"):
        load_grid(path)


def _kill_worker_while_training(marker: str, run_dir: str, function, *args, **kwargs):
    """Task body of the test below: on its first attempt the worker process is SIGKILLed once the run has begun
    writing its folder (its training child dies with it), whatever the run has reached by then."""
    import os
    import signal
    import threading
    import time

    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))

        def kill_when_started():
            deadline = time.time() + 120
            while not Path(run_dir).exists() and time.time() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_when_started, daemon=True).start()
    return function(*args, **kwargs)


@pytest.mark.slow
def test_a_grid_on_a_dask_local_cluster_equals_the_sequential_grid_even_when_a_worker_dies(tmp_path):
    """Four phantom runs on a LocalCluster of 2 worker processes; the worker of one run is killed during it."""
    pytest.importorskip("dask.distributed")
    import sys

    import cloudpickle
    import pandas as pd

    from covidct.executor import Task, run_tasks
    from covidct.train.grid_tasks import grid_run_task

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    grid = """
output_root: {root}
base:
  data: {{dataset: phantom, size: 32, options: {{n: 48}}}}
  training: {{epochs: 2, batch_size: 8}}
  evaluation: {{n_bootstrap: 5}}
models: [simple_cnn]
stages: [original, lungs]
settings: [baseline, classw]
"""
    tables = {}
    for name in ("sequential", "dask"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(grid.format(root=tmp_path / name))
        if name == "dask":
            configs = load_grid(path)
            tasks = [Task(c.run_name, grid_run_task, (c,), {"n_bootstrap": 5}) for c in configs]
            victim = configs[1]
            tasks[1] = Task(tasks[1].key, _kill_worker_while_training,
                            (str(tmp_path / "killed"), str(tmp_path / name / victim.run_name), grid_run_task, victim),
                            {"n_bootstrap": 5})
            assert set(run_tasks(tasks, "dask", workers=2, progress=False).values()) == {"finished"}
            assert (tmp_path / "killed").is_file()  # a worker did die during a run
        tables[name] = run_grid(path, progress=False, n_bootstrap=5)
    assert tables["dask"]["status"].tolist() == ["finished"] * 4
    for run in tables["sequential"]["run"]:
        mine, theirs = tmp_path / "dask" / run, tmp_path / "sequential" / run
        pd.testing.assert_frame_equal(pd.read_csv(mine / "history.csv").drop(columns=["seconds"]),
                                      pd.read_csv(theirs / "history.csv").drop(columns=["seconds"]))
        assert (mine / "predictions_test.csv").read_bytes() == (theirs / "predictions_test.csv").read_bytes()
