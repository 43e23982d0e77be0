"""Config faults: files that are not a config, and loader options that do not fit the dataset.

What may fail, and what then:

- the config file is empty, a YAML list or a single value, binary, or a folder: refused by name, with what to
  write instead (an empty file used to train on every default and write data/ and .cache/ where it ran);
- ``data.options`` name an option the loader does not take, or a value it does not allow: refused when the
  config is loaded, before any folder exists, with close names;
- the command line changes ``data.dataset`` of a config whose options were written for its own dataset (the
  README's ``--config configs/demo.yaml --set data.dataset=folder``): the file's options the new loader does
  not take are dropped with a logged warning; options given on the command line are always checked.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from covidct.cli import main
from covidct.config import load_config
from covidct.data.datasets import load_dataset
from covidct.errors import CovidctError


@pytest.mark.parametrize("text, kind", [("- data\n- model\n", "got a list"), ("just words\n", "got a single str"),
                                        ("42\n", "got a single int")])
def test_a_config_that_is_not_a_mapping_is_refused_by_name(tmp_path, text, kind):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(CovidctError) as caught:
        load_config(path, ["training.epochs=1"])
    assert str(caught.value).startswith(f"{path}: the top level must be a mapping of sections")
    assert kind in str(caught.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_config_file_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(CovidctError, match=r"empty\.yaml: the config file is empty .* pass no config at all"):
        load_config(path)


def test_a_binary_file_as_config_is_refused(tmp_path):
    path = tmp_path / "scan.yaml"
    path.write_bytes(cv2.imencode(".png", np.eye(8, dtype=np.uint8) * 255)[1].tobytes())
    with pytest.raises(CovidctError, match=r"scan\.yaml: not a text file"):
        load_config(path)


def test_cli_train_with_an_empty_config_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.yaml").write_text("")
    assert main(["train", "--config", "empty.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("covidct train: error: empty.yaml: the config file is empty") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]  # no data/, .cache/ or runs/


def test_cli_a_folder_as_config_is_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"covidct train: error: {tmp_path} is a folder, not a config file; pass a YAML file or a shipped config name."


def test_shipped_config_names_still_load():
    assert load_config("demo").data.options == {"n": 600, "size": 128, "seed": 0}


# ----------------------------------------------------------------------------------------- data.options
def test_changing_the_dataset_drops_the_files_foreign_options_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="covidct.config"):
        cfg = load_config("configs/demo.yaml", ["data.dataset=folder", f"data.root={tmp_path}"])
    assert cfg.data.dataset == "folder" and cfg.data.options == {}
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "data.options {'n': 600, 'seed': 0, 'size': 128} were written for dataset 'phantom'" in message
    assert "dropped" in message


def test_options_the_new_loader_takes_are_kept_and_command_line_options_checked(caplog):
    cfg = load_config("configs/demo.yaml", ["data.dataset=phantom-volumes", "model.name=cnn3d_covidscan"])
    assert cfg.data.options == {"n": 600, "seed": 0}  # size is the slice phantom's; shape would be the volumes'
    cfg = load_config("configs/demo.yaml", ["data.dataset=folder", "data.options.groups=image"])
    assert cfg.data.options == {"groups": "image"}
    with pytest.raises(CovidctError, match=r"dataset 'folder' has no option 'n'\. .*--set data\.options=\{\}"):
        load_config("configs/demo.yaml", ["data.dataset=folder", "data.options.n=5"])


@pytest.mark.parametrize("overrides, message", [
    (["data.options.nn=3"], r"dataset 'phantom' has no option 'nn'\. Did you mean: n\? Its options: groups_per_class, n, seed, size\."),
    (["data.dataset=folder", "data.options={groups: bogus}"],
     r"data\.options\.groups='bogus' is not one of \['subfolder', 'image'\] for dataset 'folder'"),
    (["data.dataset=folder", "data.options={groups: imag}"], r"Did you mean: image\?"),
    (["data.options.n=many"], r"data\.options\.n='many' must be an integer for dataset 'phantom'"),
    (["data.dataset=sars-cov-2-ct", "data.options={group_proxy: block}"], r"Did you mean: blocks"),
    (["data.dataset=ct-cov19", "data.options={n: 5}"], r"dataset 'ct-cov19' has no option 'n'\. Its options: groups_per_class\."),
])
def test_bad_data_options_are_refused_when_the_config_loads(overrides, message):
    with pytest.raises(CovidctError, match=message):
        load_config("configs/demo.yaml", overrides)


def test_segmentation_phantom_options_are_checked_against_the_pairs_loader():
    base = ["task=segmentation", "model.name=unet", "data.stage=original", "training.loss=dice_bce",
            "training.monitor=val_dice", "data.dataset=phantom"]
    with pytest.raises(CovidctError, match=r"data\.options\.target='lung' is not one of \['lungs', 'lesion'\]"):
        load_config(None, [*base, "data.options={target: lung}"])
    with pytest.raises(CovidctError, match=r"segmentation dataset 'medseg' \(image/mask pairs\) has no option 'n'"):
        load_config(None, [*base[:-1], "data.dataset=medseg", "data.options={n: 5}"])
    assert load_config(None, [*base, "data.options={target: lesion, n: 8}"]).data.options == {"target": "lesion", "n": 8}


def test_cli_train_refuses_a_bad_groups_value_before_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tree" / "COV").mkdir(parents=True)
    run_dir = tmp_path / "run"
    code = main(["train", "--config", "configs/demo.yaml", "--set", "data.dataset=folder", "--set",
                 f"data.root={tmp_path / 'tree'}", "--set", "data.options={groups: bogus}", "--run-dir", str(run_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "data.options.groups='bogus' is not one of ['subfolder', 'image']" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # no run folder, no data/, no .cache/


def test_load_dataset_refuses_unknown_options_and_values(tmp_path):
    for k in range(2):
        folder = tmp_path / ("A", "B")[k]
        folder.mkdir()
        cv2.imwrite(str(folder / "x.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(CovidctError, match=r"groups='bogus' is not one of"):
        load_dataset("folder", root=tmp_path, groups="bogus")
    with pytest.raises(CovidctError, match=r"dataset 'folder' has no option 'group'\. Did you mean: groups\?"):
        load_dataset("folder", root=tmp_path, group="image")
    assert len(load_dataset("folder", root=tmp_path, groups="image")) == 2
