"""``covidct demo``: the whole pipeline on built-in CT phantoms, in one command, in a few minutes on a CPU.

Steps (each one is the package's real code path, nothing demo-specific):
phantom slices in HU → lung-window + ``lungs`` stage cache → patient-disjoint train/val/test split →
``train(cfg)`` with checkpoint selection on validation macro-F1 → ``evaluate_run`` on the untouched test split
(patient bootstrap CIs, calibration, figures) → Grad-CAM overlays with the lung-focus score.

The phantom classes are separable by design, so the demo must reach test macro-F1 ≥ 0.9; a demo that
learns nothing is a bug, and ``tests/integration/test_demo.py`` checks it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from covidct import DISCLAIMER
from covidct.config import config_from_dict, dump_config, load_config
from covidct.evaluate import evaluate_run
from covidct.explain.runs import gradcam_run
from covidct.runs import check_run_folder, is_run_dir
from covidct.train import train

# The demo experiment as data; configs/demo.yaml holds the same run for `covidct train`
# (tests/integration/test_demo.py checks that the two agree).
DEMO_CONFIG: dict = {
    "name": "demo",
    "output_root": "runs",
    "data": {
        "dataset": "phantom",
        "stage": "lungs",
        "size": 64,
        "split_fractions": [0.7, 0.15, 0.15],
        "seed": 0,
        "options": {"n": 600, "size": 128, "seed": 0},
    },
    "model": {"name": "small_cnn"},
    "training": {
        "epochs": 10,
        "batch_size": 32,
        "learning_rate": 0.002,
        "monitor": "val_macro_f1",
        # 13 steps an epoch: BatchNorm's running statistics need a faster momentum to follow.
        "bn_momentum": 0.9,
        "min_epochs": 5,
        "seed": 0,
    },
    "evaluation": {"n_bootstrap": 500},
}


@dataclass
class DemoResult:
    """What the demo produced: the run folder, the test metrics dict and the Grad-CAM output (or None)."""

    run_dir: Path
    metrics: dict
    gradcam: object | None
    seconds: float


def demo_config(overrides: list[str] | tuple = (), output_root: str | None = None):
    """The demo's RunConfig (``DEMO_CONFIG`` plus ``key=value`` overrides)."""
    tree = {**DEMO_CONFIG}
    if output_root is not None:
        tree["output_root"] = output_root
    cfg = config_from_dict(tree, source="covidct demo")
    if overrides:

        with tempfile.TemporaryDirectory() as folder:
            path = dump_config(cfg, Path(folder) / "demo.yaml")
            cfg = load_config(path, overrides)
    return cfg


def _format_ci(block: dict, key: str) -> str:
    interval = block.get("ci", {}).get(key)
    value = block[key]
    if interval and interval.get("low") is not None:
        return f"{value:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"
    return f"{value:.3f}"


def format_results(metrics: dict) -> str:
    """A short plain-text results table of a test-split ``evaluate_run`` result."""
    block = metrics["slice"]
    lines = [
        f"Test split ({block['n']} slices, {block['ci']['macro_f1']['n_groups']} patients); "
        f"checkpoint selected on: {metrics.get('selection', {}).get('split', 'val')}",
        f"{'class':<16} {'precision':>9} {'recall':>7} {'F1':>6} {'AUC':>6} {'n':>4}",
    ]
    for name in block["class_names"]:
        row = block["per_class"][name]
        lines.append(
            f"{name:<16} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} "
            f"{row.get('auc', float('nan')):>6.3f} {row['support']:>4d}"
        )
    lines.append(f"macro-F1  {_format_ci(block, 'macro_f1')}   (95% CI, bootstrap over patients)")
    lines.append(f"macro AUC {_format_ci(block, 'auc_macro_ovr')}   (one-vs-rest, on probabilities)")
    lines.append(f"accuracy  {_format_ci(block, 'accuracy')}   balanced accuracy {block['balanced_accuracy']:.3f}")
    if "calibration" in metrics:
        lines.append(f"expected calibration error {metrics['calibration']['ece']:.3f}")
    return "\n".join(lines)


def run_demo(
    output_root: str = "runs",
    overwrite: bool = True,
    gradcam: bool = True,
    overrides: list[str] | tuple = (),
    progress: bool = True,
) -> DemoResult:
    """Run the demo end to end and return its results.

    Args:
        output_root: parent folder of the run folder ``<output_root>/demo``.
        overwrite: replace a previous demo run (announced, never silent); False refuses to. Only a folder
            covidct created (with its ``.covidct-run`` marker) is ever replaced; any other folder is refused.
        gradcam: also write Grad-CAM overlays and the lung-focus score for a few test slices.
        overrides: ``key=value`` config overrides, e.g. ``("training.epochs=3",)``.
        progress: show progress bars.

    Returns:
        A ``DemoResult``.
    """
    started = time.perf_counter()
    cfg = demo_config(overrides, output_root=output_root)
    run_dir = Path(cfg.output_root) / cfg.run_name
    check_run_folder(run_dir)  # a folder of the user's is refused before anything is announced
    if is_run_dir(run_dir) and overwrite:
        print(f"Replacing the previous demo run in {run_dir} (pass --keep to refuse instead).")
    run_dir = train(cfg, run_dir=run_dir, overwrite=overwrite, progress=progress)
    metrics = evaluate_run(run_dir, split="test")
    cam_output = None
    if gradcam:
        cam_output = _demo_gradcam(run_dir)
    return DemoResult(run_dir=run_dir, metrics=metrics, gradcam=cam_output, seconds=time.perf_counter() - started)


def _demo_gradcam(run_dir: Path, per_class: int = 3):
    """Grad-CAM of a few test slices per class, with the run's own preprocessing."""

    predictions = pd.read_csv(run_dir / "predictions_test.csv")
    chosen = predictions.groupby("label", sort=True).head(per_class)["path"].tolist()
    # A fresh run folder holds no gradcam/ of an earlier model (train --overwrite emptied it).
    return gradcam_run(run_dir, chosen, out_dir=run_dir / "gradcam", max_per_class=per_class, overwrite=True)


def main_demo(output_root: str = "runs", keep: bool = False, epochs: int | None = None, gradcam: bool = True) -> int:
    """Entry point of ``covidct demo``: runs the demo and prints the results table."""
    print(DISCLAIMER)
    overrides = [f"training.epochs={epochs}"] if epochs is not None else []
    result = run_demo(output_root=output_root, overwrite=not keep, gradcam=gradcam, overrides=overrides)
    print()
    print(format_results(result.metrics))
    if result.gradcam is not None:
        summary = result.gradcam.summary
        median = summary.get("overall", {}).get("median", summary.get("median"))
        if median is not None:
            print(f"Grad-CAM lung-focus score (median over explained slices): {median:.2f}")
        print(f"Grad-CAM contact sheet: {result.gradcam.contact_sheet}")
    print(f"Run folder: {result.run_dir}  ({result.seconds:.0f} s)")
    print("These are synthetic phantoms: the score shows the pipeline works, not that it detects COVID-19.")
    return 0
