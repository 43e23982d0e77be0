"""Fault injection, run files: a full disk at each write site of a run, read-only folders, and truncated or
foreign model.keras, run.json and train_state.npz. Each fault ends in one clear line naming the file (exit
code 2 on the command line) and leaves nothing half-written that a later run would trust."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from covidct.cli import main
from covidct.errors import CovidctError
from covidct.runs import MARKER_FILE, run_status
from covidct.train import train


@pytest.fixture(scope="module")
def tiny(tiny_config):
    """``tiny(epochs=...)``: the fast test config, one step an epoch."""
    return lambda **training: tiny_config(max_steps_per_epoch=1, **training)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, phantom_data, tiny):
    """A finished tiny run (copied by each test that damages it)."""
    return train(tiny(epochs=1), run_dir=tmp_path_factory.mktemp("faults") / "finished", data=phantom_data,
                 progress=False)


def _copy(run, tmp_path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes left in ``folder`` (there must be none)."""
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name or p.name.startswith(".config-"))


# ------------------------------------------------------------------------------------------------------
# A full disk at each write site
# ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def disk_full_at(name: str, occurrence: int = 1):
    """``os.replace`` into a file called ``name`` fails with ENOSPC the ``occurrence``-th time (every atomic
    write of a run ends in ``os.replace``: the temporary file is complete, moving it into place is refused)."""
    real, count = os.replace, {"n": 0}

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            count["n"] += 1
            if count["n"] == occurrence:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *args, **kwargs)

    os.replace = replace
    try:
        yield count
    finally:
        os.replace = real


@pytest.mark.parametrize(
    ("name", "occurrence", "resumable"),
    [
        ("config.yaml", 1, False),  # before training
        ("model.keras", 1, False),  # the first checkpoint
        ("history.csv", 1, False),
        ("train_state.npz", 1, False),  # the first resumable state: nothing to resume from
        ("train_state.npz", 2, True),  # epoch 1's state is saved: --resume continues from it
        ("run.json", 1, True),  # the run's record, after the last epoch
    ],
)
def test_a_full_disk_at_each_write_site(phantom_data, tmp_path, tiny, name, occurrence, resumable):
    cfg = tiny(epochs=2 if resumable else 1)
    run = tmp_path / "run"
    with disk_full_at(name, occurrence), pytest.raises(CovidctError) as caught:
        train(cfg, run_dir=run, data=phantom_data, progress=False)
    message = str(caught.value)
    assert message.startswith(f"{run / name}: disk full. Free space on that disk")
    if resumable:  # the message promises --resume, and resuming gives the finished run
        assert f"A resumable state was saved in {run}: rerun with --resume" in message
        assert run_status(run) == "interrupted" and not _leftovers(run)
        train(cfg, run_dir=run, data=phantom_data, progress=False, resume=True)
        assert run_status(run) == "finished" and len(pd.read_csv(run / "history.csv")) == 2
    else:  # no --resume promised, and no folder left that a later run could take for a run
        assert "--resume" not in message and "Nothing resumable was saved" in message
        assert not run.exists()


# ------------------------------------------------------------------------------------------------------
# Read-only folders
# ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` read-only: ``chmod`` for an ordinary user; as root (whom permissions do not stop) every
    write below it is refused with EROFS, as a read-only mount would, at the calls that create, open for
    writing, rename or remove files."""
    folder = Path(folder).resolve()
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for path in modes:
            path.chmod(0o555)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return

    def below(path) -> bool:
        try:
            return Path(os.fspath(path)).resolve().is_relative_to(folder)
        except TypeError:  # a file descriptor
            return False

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))

    real = {name: getattr(os, name) for name in ("open", "mkdir", "replace", "rename", "remove", "unlink", "rmdir")}
    real_open = builtins.open

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and below(path):
            refuse(path)
        return real["open"](path, flags, *args, **kwargs)

    def guard(name):
        def call(path, *args, **kwargs):
            if below(path):
                refuse(path)
            return real[name](path, *args, **kwargs)

        return call

    def file_open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and set(mode) & set("wax+") and below(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    patches = {"open": os_open, **{name: guard(name) for name in real if name != "open"}}
    for name, function in patches.items():
        setattr(os, name, function)
    builtins.open = io.open = file_open
    try:
        yield
    finally:
        for name, function in real.items():
            setattr(os, name, function)
        builtins.open = io.open = real_open


def test_read_only_output_folders_are_named_before_any_work(phantom_data, tmp_path, tiny, finished_run, monkeypatch,
                                                             capsys):
    # train: stops before loading or fitting anything
    parent = tmp_path / "readonly"
    parent.mkdir()
    with read_only(parent), pytest.raises(CovidctError, match=rf"{parent / 'run'}: (read-only file system|permission denied)\. "):
        train(tiny(epochs=1), run_dir=parent / "run", data=phantom_data, progress=False)
    assert not (parent / "run").exists()
    # evaluate: refused before the model predicts, and nothing half-written
    run = _copy(finished_run, tmp_path)
    from covidct.evaluate import evaluator

    def no_prediction(*args, **kwargs):
        raise AssertionError("evaluate computed predictions for a folder it cannot write")

    monkeypatch.setattr(evaluator, "_predict", no_prediction)
    before = sorted(p.name for p in run.iterdir())
    with read_only(run):
        code = main(["evaluate", "--run", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and (f"{run}: read-only file system. Write to a folder" in err or f"{run}: permission denied." in err)
    assert sorted(p.name for p in run.iterdir()) == before
    # gradcam: refused before any heatmap is computed
    from covidct.data.phantom import make_slice

    image = tmp_path / "images" / "COV.npy"
    image.parent.mkdir()
    import numpy as np

    np.save(image, np.rint(make_slice("COV", size=48, seed=1).image_hu).astype(np.int16))
    out = tmp_path / "cams"
    out.mkdir()
    from covidct.explain import runs as explain_runs

    monkeypatch.setattr(explain_runs, "lung_focus_of_samples", no_prediction)
    with read_only(out):
        code = main(["gradcam", "--run", str(run), "--images", str(image), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and (f"{out / 'overlays'}: read-only file system." in err or f"{out / 'overlays'}: permission denied." in err)
    assert not list(out.iterdir())


# ------------------------------------------------------------------------------------------------------
# Truncated and foreign files
# ------------------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")


@pytest.mark.parametrize("damage", [_truncate, _foreign_zip, lambda p: p.write_text("hello")],
                         ids=["truncated", "foreign-zip", "text"])
def test_a_damaged_model_file_is_named(finished_run, tmp_path, damage, capsys):
    run = _copy(finished_run, tmp_path)
    damage(run / "model.keras")
    assert main(["evaluate", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"Run checkpoint {run / 'model.keras'} cannot be loaded" in err and "--overwrite" in err
    assert "File not found" not in err.split("(")[0]
    assert not (run / "predictions_test.csv").exists()


def test_a_damaged_run_record_is_named(finished_run, phantom_data, tmp_path, tiny, capsys):
    run = _copy(finished_run, tmp_path)
    _truncate(run / "run.json")
    assert main(["evaluate", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{run / 'run.json'} is not a readable run record" in err and "--overwrite" in err
    # training into it needs --overwrite (its status is unknown); the marker lets --overwrite replace it
    with pytest.raises(CovidctError, match="run.json is not a readable run record"):
        train(tiny(epochs=1), run_dir=run, data=phantom_data, progress=False)
    train(tiny(epochs=1), run_dir=run, data=phantom_data, progress=False, overwrite=True)
    assert run_status(run) == "finished" and (run / MARKER_FILE).is_file()


def test_a_damaged_training_state_is_named(phantom_data, tmp_path, tiny, crash_after_epoch):
    cfg = tiny(epochs=2)
    run = tmp_path / "run"
    with crash_after_epoch(0):
        train(cfg, run_dir=run, data=phantom_data, progress=False)
    assert run_status(run) == "interrupted"
    for damage in (_truncate, _foreign_zip):
        damage(run / "train_state.npz")
        with pytest.raises(CovidctError, match=rf"{run / 'train_state.npz'}: the saved training state cannot be read"
                                               r".*Rerun with --overwrite"):
            train(cfg, run_dir=run, data=phantom_data, progress=False, resume=True)
        assert run_status(run) == "interrupted" and not _leftovers(run)  # kept for the user to decide
