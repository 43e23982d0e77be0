"""`covidct config list|show|copy` and `covidct data`: the shipped configs, and where the datasets are looked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from covidct.cli import main
from covidct.config import list_configs, load_config
from covidct.data.datasets import DATASETS
from covidct.data.locations import format_locations, locate_datasets
from covidct.errors import CovidctError

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "covidct" / "configs"


def test_config_list_prints_every_shipped_config_by_name(capsys):
    assert main(["config", "list"]) == 0
    printed = capsys.readouterr().out.split()
    expected = sorted(p.relative_to(SHIPPED).with_suffix("").as_posix() for p in SHIPPED.rglob("*.yaml"))
    assert printed == expected == list_configs()
    for name in ("demo", "sars-cov-2-ct/base", "sars-cov-2-ct/small_cnn-lungs-robust-dataaug", "grids/ct-cov19",
                 "medseg/unet-infection-lungcrop", "robust/standardize"):
        assert name in printed


def test_config_show_prints_the_file_unchanged(capsys):
    assert main(["config", "show", "sars-cov-2-ct/base"]) == 0
    assert capsys.readouterr().out == (SHIPPED / "sars-cov-2-ct" / "base.yaml").read_text()


def test_config_show_unknown_name_suggests_the_close_one(capsys):
    assert main(["config", "show", "sars-cov-2-ct/bse"]) == 2
    error = capsys.readouterr().err
    assert "sars-cov-2-ct/bse" in error and "Did you mean: sars-cov-2-ct/base" in error
    assert "covidct config list" in error


def test_config_copy_to_folder_file_and_default(tmp_path, monkeypatch, capsys):
    original = (SHIPPED / "sars-cov-2-ct" / "base.yaml").read_bytes()
    folder = tmp_path / "mine"
    folder.mkdir()
    assert main(["config", "copy", "sars-cov-2-ct/base", str(folder)]) == 0
    assert (folder / "base.yaml").read_bytes() == original
    assert main(["config", "copy", "demo", str(tmp_path / "new" / "my-demo.yaml")]) == 0
    assert (tmp_path / "new" / "my-demo.yaml").read_bytes() == (SHIPPED / "demo.yaml").read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["config", "copy", "robust/standardize"]) == 0
    assert (tmp_path / "standardize.yaml").read_bytes() == (SHIPPED / "robust" / "standardize.yaml").read_bytes()
    assert "use it with --config standardize.yaml" in capsys.readouterr().out
    # the copy loads as a config file and equals the shipped one
    assert load_config(folder / "base.yaml", validate=False) == load_config("sars-cov-2-ct/base", validate=False)


def test_config_copy_refuses_to_overwrite_without_force(tmp_path, capsys):
    target = tmp_path / "base.yaml"
    target.write_text("edited: true\n")
    assert main(["config", "copy", "sars-cov-2-ct/base", str(target)]) == 2
    assert f"{target} already exists; pass --force" in capsys.readouterr().err
    assert target.read_text() == "edited: true\n"
    assert main(["config", "copy", "sars-cov-2-ct/base", str(tmp_path)]) == 2  # the folder form too
    assert target.read_text() == "edited: true\n"
    assert main(["config", "copy", "sars-cov-2-ct/base", str(tmp_path), "--force"]) == 0
    assert yaml.safe_load(target.read_text())["data"]["dataset"] == "sars-cov-2-ct"


def _make_folders(root: Path, *names: str) -> None:
    for name in names:
        (root / name).mkdir(parents=True)


def test_data_reports_present_and_missing_datasets_under_the_env_root(tmp_path, monkeypatch, capsys):
    root = tmp_path / "datasets"
    _make_folders(root, "sars-cov-2-ct-scan", "medseg")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("COVIDCT_DATA_ROOT", str(root))
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.split() and line.split()[0] in DATASETS}
    assert out.splitlines()[0] == f"Data root: {root} ($COVIDCT_DATA_ROOT; resolved: {root})"
    assert lines["sars-cov-2-ct"].split() == ["sars-cov-2-ct", "present", str(root / "sars-cov-2-ct-scan")]
    assert lines["medseg"].split() == ["medseg", "present", str(root / "medseg")]
    assert lines["covid-ct-md"].split()[1] == "missing"
    assert lines["covid-ct-md"].endswith(
        f"looked in {root / 'covid-ct-md'}, {root / 'covid-ct-md-sample'}, data/raw/covid-ct-md")
    assert lines["phantom"].split()[1] == "synthetic"
    assert lines["folder"].split()[1:3] == ["any", "tree"]
    assert set(lines) == set(DATASETS)
    assert "2 real dataset(s) present." in out


def test_data_default_root_is_dot_data_and_finds_downloads_in_data_raw(tmp_path, monkeypatch):
    monkeypatch.delenv("COVIDCT_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    _make_folders(tmp_path, "data/raw/ct-cov19", "data/kaggle-lungs-ct-64px")
    found = {loc.name: loc for loc in locate_datasets()}
    assert found["ct-cov19"].found == Path("data/raw/ct-cov19")
    assert found["kaggle-lungs"].found == Path("data/kaggle-lungs-ct-64px")
    assert not found["sars-cov-2-ct"].present and not found["phantom"].present
    assert found["sars-cov-2-ct"].candidates == (Path("data/sars-cov-2-ct"), Path("data/sars-cov-2-ct-scan"),
                                                 Path("data/raw/sars-cov-2-ct"))
    text = format_locations()
    assert text.splitlines()[0] == f"Data root: data (the default, ./data: COVIDCT_DATA_ROOT is not set; resolved: {tmp_path / 'data'})"
    assert "2 real dataset(s) present." in text


@pytest.mark.parametrize("via_cli", [True, False])
def test_data_root_option_wins_over_the_environment(tmp_path, monkeypatch, capsys, via_cli):
    elsewhere = tmp_path / "elsewhere"
    _make_folders(elsewhere, "covid-ct")
    monkeypatch.setenv("COVIDCT_DATA_ROOT", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    if via_cli:
        assert main(["data", "--root", str(elsewhere)]) == 0
        text = capsys.readouterr().out
    else:
        text = format_locations(elsewhere)
    assert text.splitlines()[0].startswith(f"Data root: {elsewhere} (--root;")
    assert f"covid-ct         present    {elsewhere / 'covid-ct'}" in text
    assert "1 real dataset(s) present." in text


def test_copying_a_grid_says_how_to_copy_its_base_and_then_the_grid_loads(tmp_path, capsys):
    from covidct.train.grid import load_grid

    grids = tmp_path / "grids"
    assert main(["config", "copy", "grids/sars-cov-2-ct-small", f"{grids}/"]) == 0
    out = capsys.readouterr().out
    grid = grids / "sars-cov-2-ct-small.yaml"
    assert f"run it with covidct grid {grid}." in out
    assert f"(covidct config copy sars-cov-2-ct/base {tmp_path / 'sars-cov-2-ct'}/)" in out
    with pytest.raises(CovidctError, match="base config .* does not exist"):
        load_grid(grid, validate=False)
    assert main(["config", "copy", "sars-cov-2-ct/base", f"{tmp_path / 'sars-cov-2-ct'}/"]) == 0
    assert len(load_grid(grid, validate=False)) == 8  # 2 models x 2 stages x 2 settings
