"""The lung-focus column of ``covidct report``: lesion model high, shortcut model LOW and flagged.

Both models are the session fixtures of ``conftest.py``. The lesion run goes through the command line
(``covidct evaluate --lung-focus``, masks from the phantom dataset's cache); the shortcut run's test
images carry the corner marker, which no dataset has, so it is scored through the API with its masks.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from covidct.cli import main
from covidct.errors import CovidctError
from covidct.evaluate.report import LUNG_FOCUS_COLUMN, collect_results, lung_focus_cell, write_report
from covidct.explain.focus import LungFocusWarning

COLUMN = LUNG_FOCUS_COLUMN


def _save_run(run_dir, model, cfg, class_names):
    from covidct.config import dump_config

    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.keras")
    dump_config(cfg, run_dir / "config.yaml")
    info = {
        "status": "finished",
        "name": run_dir.name,
        "model": model.name,
        "dataset": cfg.data.dataset,
        "stage": "original",
        "size": 64,
        "class_names": class_names,
        "input_names": ["image"],
        "monitor": "val_loss",
    }
    (run_dir / "run.json").write_text(json.dumps(info))


@pytest.fixture(scope="module")
def focus_runs(tmp_path_factory, lesion_task, shortcut_task):
    from covidct.config import config_from_dict
    from covidct.evaluate import evaluate_run
    from covidct.explain.runs import run_lung_focus
    from covidct.train.data import data_from_arrays

    root = tmp_path_factory.mktemp("focus_report")
    runs = root / "runs"
    # The lesion CNN's config reads the registered phantom dataset (written and cached under tmp). Its
    # model name is a registered one so prepare_data can run; Grad-CAM finds the saved model's own layer.
    lesion_cfg = config_from_dict(
        {
            "name": "lesion",
            "data": {
                "dataset": "phantom",
                "options": {"n": 90, "size": 64, "seed": 3},
                "root": str(root / "phantom"),
                "cache_root": str(root / "cache"),
                "stage": "original",
                "size": 64,
                "label_map": {"COV": "COV", "Normal": "Normal", "OtherPneumonia": "drop"},
                "classes": ["Normal", "COV"],
                "split_fractions": [0.4, 0.2, 0.4],
            },
            "model": {"name": "small_cnn"},
            "evaluation": {"n_bootstrap": 20},
        }
    )
    _save_run(runs / "lesion", lesion_task["model"], lesion_cfg, ["Normal", "COV"])
    assert main(["evaluate", "--run", str(runs / "lesion"), "--lung-focus", "24", "--bootstrap", "20"]) == 0

    shortcut_cfg = config_from_dict(
        {"name": "shortcut", "data": {"stage": "original", "size": 64}, "model": {"name": "small_cnn"}}
    )
    _save_run(runs / "shortcut", shortcut_task["model"], shortcut_cfg, ["unmarked", "marked"])
    labels = shortcut_task["labels"]
    manifest = pd.DataFrame(
        {
            "path": [f"s{i}" for i in range(len(labels))],
            "label": np.where(labels == 1, "marked", "unmarked"),
            "group": [f"p{i}" for i in range(len(labels))],
            "split": "test",
            "source": "phantom",
        }
    )
    data = data_from_arrays(
        shortcut_task["images"].astype(np.uint8), manifest, classes=["unmarked", "marked"]
    )
    evaluate_run(runs / "shortcut", data=data, n_bootstrap=20, figures=False)
    with pytest.warns(LungFocusWarning, match="outside the lungs"):
        run_lung_focus(runs / "shortcut", n=40, data=data, masks=shortcut_task["lung_labels"])
    # A third run evaluated without --lung-focus: same metrics, no lung_focus.json.
    (runs / "plain").mkdir()
    for name in ("run.json", "config.yaml", "metrics_test.json"):
        shutil.copy(runs / "lesion" / name, runs / "plain" / name)
    return runs


def test_evaluate_lung_focus_writes_the_summary_of_the_test_split(focus_runs):
    from covidct.explain.runs import format_lung_focus

    summary = json.loads((focus_runs / "lesion" / "lung_focus.json").read_text())
    metrics = json.loads((focus_runs / "lesion" / "metrics_test.json").read_text())
    assert (
        summary["split"] == "test"
        and summary["explained"] == "predicted class"
        and summary["layer"] == "relu2"
    )
    assert summary["n_images"] == min(24, metrics["evaluated_on"]["n_images"]) == summary["overall"]["n"]
    assert set(summary["per_class"]) == {"Normal", "COV"}
    # The lesion CNN looks at the lungs: overall median above the threshold (about 0.36 at lung area ~0.14).
    assert (
        summary["warning"] is False and summary["overall"]["median"] > summary["overall"]["threshold"] + 0.05
    )
    printed = format_lung_focus(summary)  # what `covidct evaluate --lung-focus` prints
    overall = summary["overall"]
    assert printed.startswith(
        f"lung focus (gradcam at relu2, {summary['n_images']} test image(s), predicted class explained): "
        f"median {overall['median']:.2f}, threshold {overall['threshold']:.2f}\n"
    )
    assert "LOW" not in printed


def test_report_column_high_for_lesion_low_and_flagged_for_shortcut(focus_runs, tmp_path):
    table = collect_results(focus_runs).set_index("run")
    lesion = json.loads((focus_runs / "lesion" / "lung_focus.json").read_text())["overall"]
    shortcut_file = json.loads((focus_runs / "shortcut" / "lung_focus.json").read_text())
    shortcut = shortcut_file["overall"]
    assert (
        table.loc["lesion", COLUMN]
        == f"{lesion['median']:.2f} (>= {lesion['threshold']:.2f}, n={lesion['n']})"
    )
    assert lesion["median"] > 0.4
    assert shortcut_file["warning"] is True and "marked" in shortcut_file["low_focus_classes"]
    # Attention on the corner marker, not the lungs (measured: marked 0.00, overall 0.14 < threshold 0.36).
    assert (
        shortcut_file["per_class"]["marked"]["median"] < 0.05
        and shortcut["median"] < shortcut["threshold"] - 0.1
    )
    assert table.loc["shortcut", COLUMN].startswith(
        f"LOW {shortcut['median']:.2f} (< {shortcut['threshold']:.2f}, n="
    )
    assert "low: " in table.loc["shortcut", COLUMN] and "marked" in table.loc["shortcut", COLUMN]
    assert table.loc["plain", COLUMN] == ""  # not computed: blank, never recomputed by the report
    assert not (focus_runs / "plain" / "lung_focus.json").exists()
    assert table.loc["lesion", "command"].endswith(f"--split test --lung-focus {lesion['n']}`")
    written = write_report(focus_runs, out_dir=tmp_path)
    markdown = (tmp_path / "results.md").read_text()
    assert written["rows"] == 3 and COLUMN in markdown and "Blank: not computed" in markdown
    assert (
        pd.read_csv(tmp_path / "results.csv", keep_default_na=False)
        .set_index("run")
        .loc["shortcut", COLUMN]
        .startswith("LOW")
    )


def test_report_lung_focus_bad_files_and_other_splits(focus_runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(focus_runs / "lesion", run_dir)
    summary = json.loads((run_dir / "lung_focus.json").read_text())
    (run_dir / "lung_focus.json").write_text(json.dumps({**summary, "split": "val"}))
    assert lung_focus_cell(run_dir, "test") == "" and lung_focus_cell(run_dir, "val").endswith(
        f"n={summary['overall']['n']})"
    )
    (run_dir / "lung_focus.json").write_text("{not json")
    with pytest.raises(CovidctError, match=r"lung_focus.json is not valid JSON"):
        collect_results(tmp_path)
    (run_dir / "lung_focus.json").write_text(json.dumps({"per_class": {}}))
    with pytest.raises(CovidctError, match=r"lung_focus.json is not a lung-focus summary"):
        lung_focus_cell(run_dir, "test")


def test_lung_focus_refuses_bad_requests(focus_runs, capsys):
    from covidct.explain.runs import run_lung_focus

    run = str(focus_runs / "lesion")
    assert main(["evaluate", "--run", run, "--dataset", "covid-ct", "--lung-focus", "8"]) == 2
    assert "does not apply with --dataset" in capsys.readouterr().err
    with pytest.raises(CovidctError, match="Unknown split 'tset'"):
        run_lung_focus(run, split="tset")
    with pytest.raises(CovidctError, match="no cache, so no lung masks"):
        from covidct.train.data import data_from_arrays

        manifest = pd.DataFrame(
            {"path": ["a", "b"], "label": ["Normal", "COV"], "group": ["a", "b"], "split": "test"}
        )
        run_lung_focus(
            run,
            data=data_from_arrays(np.zeros((2, 64, 64, 1), np.uint8), manifest, classes=["Normal", "COV"]),
        )
