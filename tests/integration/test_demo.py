"""Workflow: `covidct demo` end to end on phantoms (the README's first quick-start command)."""

import json
import subprocess
import sys
from pathlib import Path

from covidct.config import config_to_dict, load_config
from covidct.demo import demo_config

REPO = Path(__file__).resolve().parents[2]


def test_demo_config_matches_configs_demo_yaml():
    assert config_to_dict(demo_config()) == config_to_dict(load_config(REPO / "configs" / "demo.yaml"))


def test_demo_reaches_macro_f1_on_test_split_and_writes_run_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "covidct", "demo", "--output-root", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not a diagnostic device" in result.stdout
    assert "Test split" in result.stdout and "macro-F1" in result.stdout
    run_dir = tmp_path / "demo"
    for name in ("config.yaml", "model.keras", "history.csv", "predictions_test.csv", "metrics_test.json", "run.json"):
        assert (run_dir / name).is_file(), name
    for name in ("test_confusion_counts.png", "test_roc.png", "test_reliability.png"):
        assert (run_dir / "figures" / name).is_file(), name
    assert (run_dir / "gradcam" / "contact_sheet.png").is_file()
    metrics = json.loads((run_dir / "metrics_test.json").read_text())
    # The phantom classes are separable by design: a demo below 0.9 learned nothing useful.
    assert metrics["slice"]["macro_f1"] >= 0.9
    assert metrics["slice"]["auc_macro_ovr"] >= 0.95
    # The numbers are test numbers, selected on validation.
    assert metrics["evaluated_on"]["split"] == "test"
    assert metrics["selection"]["split"] == "val"
    assert metrics["evaluated_on"]["is_selection_set"] is False
