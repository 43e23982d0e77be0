"""Fault injection, run folders: covidct deletes only what it created, one writer per run, no empty leftovers."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from covidct.cli import main
from covidct.errors import CovidctError
from covidct.runs import LOCK_FILE, MARKER_FILE, clear_run_dir, remove_run_dir, remove_run_output, run_status
from covidct.train import loop as loop_module
from covidct.train import train


def _precious(folder):
    folder.mkdir(parents=True)
    (folder / "thesis.txt").write_text("three years of work")
    return folder


def test_overwrite_refuses_a_folder_that_covidct_did_not_create(phantom_data, tmp_path, tiny_config, capsys, repo_root):
    precious = _precious(tmp_path / "precious")
    cfg = tiny_config(epochs=1, max_steps_per_epoch=1)
    for overwrite in (True, False):  # neither replaced nor written into
        with pytest.raises(CovidctError, match=rf"{precious} is not a covidct run folder \(no \.covidct-run marker\) "
                                               "and holds thesis.txt"):
            train(cfg, run_dir=precious, data=phantom_data, progress=False, overwrite=overwrite)
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    # the command line, refused before any data is read: exit code 2, one line naming the folder
    code = main(["train", "--config", str(repo_root / "configs" / "demo.yaml"), "--set", "training.epochs=1", "--run-dir", str(precious),
                 "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and f"{precious} is not a covidct run folder" in err and len(err.strip().splitlines()) == 1
    assert (precious / "thesis.txt").read_text() == "three years of work"


def test_demo_refuses_to_replace_a_folder_it_did_not_create(tmp_path, capsys):
    precious = _precious(tmp_path / "X" / "demo")
    assert main(["demo", "--output-root", str(tmp_path / "X"), "--epochs", "1", "--no-gradcam"]) == 2
    captured = capsys.readouterr()
    assert f"{precious} is not a covidct run folder" in captured.err
    assert "Replacing the previous demo run" not in captured.out
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]


def test_overwrite_empties_only_a_marked_folder_and_keeps_its_marker(phantom_data, tmp_path, tiny_config):
    cfg = tiny_config(epochs=1, max_steps_per_epoch=1)
    run = train(cfg, run_dir=tmp_path / "run", data=phantom_data, progress=False)
    marker = json.loads((run / MARKER_FILE).read_text())
    assert marker["created_by"].startswith("covidct ") and not (run / LOCK_FILE).exists()  # released
    (run / "figures").mkdir()
    (run / "figures" / "old.png").write_bytes(b"stale")
    train(cfg, run_dir=run, data=phantom_data, progress=False, overwrite=True)
    assert not (run / "figures").exists() and json.loads((run / MARKER_FILE).read_text()) == marker
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [MARKER_FILE, "config.yaml", "history.csv", "model.keras", "run.json", "run_report.md"])
    # the guarded removers refuse a folder without the marker, and paths outside the run
    precious = _precious(tmp_path / "precious")
    for remove in (clear_run_dir, remove_run_dir):
        with pytest.raises(CovidctError, match=f"Refusing to .*{precious}: it has no .covidct-run marker"):
            remove(precious)
    with pytest.raises(CovidctError, match="not inside the run folder"):
        remove_run_output(precious / "thesis.txt", run)
    assert (precious / "thesis.txt").is_file()


def test_a_run_that_fails_before_saving_anything_leaves_no_folder(phantom_data, tmp_path, tiny_config):
    manifest = phantom_data.manifest.copy()
    manifest.loc[manifest["split"] == "val", "split"] = "train"  # no validation split: refused after set-up
    from covidct.train.data import data_from_arrays

    no_val = data_from_arrays(phantom_data.images, manifest, source="phantom")
    cfg = tiny_config(epochs=1, max_steps_per_epoch=1)
    with pytest.raises(CovidctError, match="val") as caught:
        train(cfg, run_dir=tmp_path / "new", data=no_val, progress=False)
    assert "--resume" not in str(caught.value)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()  # an empty folder of the user's is adopted, and handed back as it was
    with pytest.raises(CovidctError):
        train(cfg, run_dir=tmp_path / "empty", data=no_val, progress=False)
    assert [p.name for p in (tmp_path / "empty").iterdir()] == [MARKER_FILE]


def test_a_second_trainer_of_one_run_folder_stops_at_once(phantom_data, tmp_path, tiny_config, monkeypatch, capsys):
    """While a run is being trained, a second ``covidct train`` on its folder exits 2 naming the owner; the
    first run finishes with its own config and history, not a mixture."""
    run = tmp_path / "shared"
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump({"name": "other", "data": {"dataset": "phantom", "size": 32},
                                      "training": {"epochs": 5}}))
    original, seen = loop_module.Trainer.end_epoch, {}

    def end_epoch(self, epoch, logs, seconds):
        original(self, epoch, logs, seconds)
        if epoch == 0:
            for flags in ([], ["--overwrite"], ["--resume"]):
                seen[tuple(flags)] = main(["train", "--config", str(config), "--run-dir", str(run), *flags])

    monkeypatch.setattr(loop_module.Trainer, "end_epoch", end_epoch)
    cfg = tiny_config(epochs=2, max_steps_per_epoch=1)
    train(cfg, run_dir=run, data=phantom_data, progress=False)
    err = capsys.readouterr().err
    assert seen == {(): 2, ("--overwrite",): 2, ("--resume",): 2}
    assert err.count(f"Run folder {run} is being written by process") == 3 and str(run / LOCK_FILE) in err
    assert run_status(run) == "finished" and not (run / LOCK_FILE).exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["name"] == "tiny" and saved["data"]["size"] == 48 and saved["training"]["epochs"] == 2
    assert len(pd.read_csv(run / "history.csv")) == 2


@pytest.mark.parametrize("task", ["segmentation", "pretrain"])
def test_segmentation_and_pretraining_runs_keep_the_same_guard(tmp_path, task):
    """Every task goes through one run-folder guard: a folder of the user's is refused before data is read."""
    from covidct.config import config_from_dict, validate_config
    from covidct.segment.train import segmentation_config

    if task == "segmentation":
        cfg = segmentation_config("unet", dataset="phantom", size=32, epochs=1, model_kwargs={"base_filters": 4})
    else:
        cfg = validate_config(config_from_dict({
            "task": "pretrain", "data": {"dataset": "phantom", "size": 32}, "model": {"name": "unet"},
            "segmentation": {"val_fraction": 0.3}}))
    precious = _precious(tmp_path / "precious")
    with pytest.raises(CovidctError, match=f"{precious} is not a covidct run folder"):
        train(cfg, run_dir=precious, overwrite=True, progress=False)
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
