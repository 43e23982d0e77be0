"""Fault injection, a killed trainer: ``covidct train`` in a subprocess is SIGKILLed at a random point of its
epochs; the lock it leaves names a dead process, ``--resume`` takes it over and gives the uninterrupted history.
While it runs, a second ``covidct train`` on its folder exits 2 naming it (two processes, one run folder)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

import covidct.train  # noqa: F401  (Keras imported first: the second trainer below starts at once)
from covidct.cli import main
from covidct.runs import LOCK_FILE, MARKER_FILE, lock_owner, run_status


def _wait_for(condition, process, seconds: float = 240.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the trainer ended (exit {process.returncode}) before the kill: {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the trainer did not reach the kill point in time")
        time.sleep(0.02)


def _rows(path) -> int:
    try:
        return len(pd.read_csv(path))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def test_sigkill_at_a_random_point_then_resume_gives_the_uninterrupted_history(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    epochs = 5
    config.write_text(yaml.safe_dump({
        "name": "killed",
        "data": {"dataset": "phantom", "stage": "original", "size": 32, "cache_root": str(tmp_path / "cache"),
                 "options": {"n": 90, "size": 32, "seed": 0}},
        "model": {"name": "small_cnn"},  # BatchNorm and Dropout: every random draw must be replayed
        "training": {"epochs": epochs, "batch_size": 16, "max_steps_per_epoch": 2, "shortcut_probe": False,
                     "mixed_precision": "off", "min_epochs": 0, "early_stopping_patience": 0},
    }))
    run = tmp_path / "run"
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    kill_after, extra_delay = rng.randint(1, epochs - 2), rng.uniform(0.0, 0.3)  # a random point, logged on failure
    print(f"kill after history row {kill_after} + {extra_delay:.2f} s")
    trainer = subprocess.Popen(
        [sys.executable, "-m", "covidct", "train", "--config", str(config), "--run-dir", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_for(lambda: (run / LOCK_FILE).is_file(), trainer)
        # a second trainer on the same folder: refused at once, naming the running one
        assert main(["train", "--config", str(config), "--run-dir", str(run), "--overwrite"]) == 2
        assert f"is being written by process {trainer.pid}" in capsys.readouterr().err
        assert trainer.poll() is None
        _wait_for(lambda: _rows(run / "history.csv") >= kill_after, trainer)
        time.sleep(extra_delay)
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    assert trainer.returncode == -signal.SIGKILL
    assert lock_owner(run / LOCK_FILE)[1] == trainer.pid  # left behind by the killed process
    assert run_status(run) in ("interrupted", "new")  # "new": killed before the first state was saved

    assert main(["train", "--config", str(config), "--run-dir", str(run), "--resume"]) == 0
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "reference")]) == 0
    histories = [pd.read_csv(folder / "history.csv").drop(columns=["seconds"]) for folder in (run, tmp_path / "reference")]
    pd.testing.assert_frame_equal(*histories, rtol=1e-5)
    assert len(histories[0]) == epochs and run_status(run) == "finished"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (tmp_path / "reference").iterdir())
    assert (run / MARKER_FILE).is_file() and not (run / LOCK_FILE).exists()
