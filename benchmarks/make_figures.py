"""Regenerate the README gallery in images/ (`make figures`) from recorded results: nothing is trained here.

    python benchmarks/make_figures.py                  # every figure its inputs exist for
    python benchmarks/make_figures.py --run runs/sars-cov-2-ct/small_cnn-lungs-robust-dataaug
    python benchmarks/make_figures.py --demo-run runs/demo   # + images/demo_gradcam.png from a demo run

Inputs: the JSON files in benchmarks/results/ (the tables below name each one) and, for the confusion
matrix, ROC curve and training curves, one trained and evaluated run of the shipped recipe. That run is
made once by `make shipped-run`, i.e.

    covidct train --config sars-cov-2-ct/small_cnn-lungs-robust-dataaug --evaluate

(measured: 67 min on a shared, loaded 2-core CPU; 323-357 s per seed on an idle one). Without it those three
figures are skipped and the files already in images/ are kept. Pixels: synthetic phantoms only; no real CT
slice is drawn.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import pandas as pd  # noqa: E402

from covidct.data.io import CTImage  # noqa: E402
from covidct.data.phantom import make_slice, plot_phantom_classes  # noqa: E402
from covidct.evaluate import gallery  # noqa: E402
from covidct.evaluate.plots import (  # noqa: E402
    plot_confusion_matrix,
    plot_intervals,
    plot_roc_curves,
    plot_training_curves,
)

IMAGES = ROOT / "images"
RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED_CONFIG = "sars-cov-2-ct/small_cnn-lungs-robust-dataaug"
SHIPPED_RUN = ROOT / "runs" / "sars-cov-2-ct" / "small_cnn-lungs-robust-dataaug"
DPI = 100

#: The headline: small_cnn (128 px unless named) trained on sars-cov-2-ct, scored on its grouped test split and
#: on the COVID-CT-MD sample (COVID-19 vs CAP + Normal; lung-containing slices, 648 of 901). Seeds' ensembles.
GENERALIZATION = [
    ("original (whole slice), 1 seed; external: all 901 slices", "bench_quality.json", None),
    ("lungs (lung crop), 2 seeds", "generalization_gpu_h200_lungs_seeds01.json", "lungs"),
    ("lungs-robust (standardised lung crop), 3 seeds", "generalization_gpu_h100_standardize_histogram.json",
     "standardize"),
    ("lungs-hist (rank-equalised lung crop), 3 seeds", "generalization_gpu_h100_standardize_histogram.json",
     "histogram"),
    ("lungs-robust + appearance augmentation, 1 seed", "generalization_gpu_h200_ablation_seed0.json", "appearance"),
    ("robust recipe (+ AdamW, dropout), 1 seed", "generalization_gpu_h200_ablation_seed0.json", "robust"),
    ("robust recipe at 224 px, 2 seeds", "generalization_gpu_h100_robust_224.json", "robust"),
    ("lungs-robust, fixed 16 epochs, 3 seeds", "generalization_cpu_standardize_last_cos_seeds012_resize_mask.json",
     "standardize"),
    ("lungs-robust, 16 epochs, Genesis-pretrained, 3 seeds",
     "generalization_cpu_standardize_last_cos_genesis_seeds012.json", "standardize"),
    ("lungs-robust, 24 epochs, stage aug. (shipped), 3 seeds",
     "generalization_cpu_standardize_last_cos_aug_e24_seeds012.json", "standardize"),
]

#: Per stage, the same test split: macro-F1 (argmax) and AUC. Rows without a recorded F1 show n/a.
STAGE_ROWS = [
    ("original, 1 seed", "bench_quality.json", None),
    ("lungs, 2 seeds", "generalization_gpu_h200_lungs_seeds01.json", "lungs"),
    ("lungs-robust, 3 seeds", "generalization_gpu_h100_standardize_histogram.json", "standardize"),
    ("lungs-hist, 3 seeds", "generalization_gpu_h100_standardize_histogram.json", "histogram"),
    ("lungs-robust, fixed 16 epochs, 3 seeds", "generalization_cpu_standardize_last_cos_seeds012_resize_mask.json",
     "standardize"),
    ("lungs-robust + stage aug., 24 epochs, 3 seeds",
     "generalization_cpu_standardize_last_cos_aug_e24_seeds012.json", "standardize"),
]

#: Per model and recipe: pooled out-of-fold scores of 4-fold grouped CV over the 84 non-test groups (2,121
#: slices), lungs-robust at 128 px. Each round re-ran its reference, so machine-to-machine noise is visible.
CV_ROUNDS = [
    ("recipe_cv_gpu_h100_architectures.json", {
        "aug-e24": "small_cnn, aug., 24 ep [H100]",
        "aug-e24-resnet18": "resnet18, aug., 24 ep [H100]",
        "aug-e24-tsmall": "transfusion_small, aug., 24 ep [H100]",
    }),
    ("recipe_cv_gpu_h100_capacity.json", {
        "aug-e24": "small_cnn, aug., 24 ep [H100, 2nd round]",
        "aug-e24-wide": "small_cnn wide (32-256 filters) [H100]",
        "aug-e24-s192": "small_cnn at 192 px [H100]",
        "aug-e24-tta": "small_cnn + mirror TTA [H100]",
    }),
    ("recipe_cv_cpu_recipes.json", {
        "base": "small_cnn, 16 ep, no aug. [CPU]",
        "e24": "small_cnn, 24 ep, no aug. [CPU]",
        "aug": "small_cnn, aug., 16 ep [CPU]",
        "aug-e24": "small_cnn, aug., 24 ep [CPU] (shipped)",
    }),
]

#: Every finished 5-fold CV of the infection U-Net on MedSeg, in the order run (only Dice is drawn, no pixel).
INFECTION_RECIPES = [
    ("64 px, base 8, whole slices", "segmentation_infection_unet.json"),
    ("128 px, base 16, whole slices", "segmentation_infection_unet_128px_b16_masked.json"),
    ("128 px lung crops", "segmentation_infection_unet_128px_b16_masked_lungcrop.json"),
    ("160 px lung crops", "segmentation_infection_unet_160px_b16_masked_lungcrop.json"),
    ("128 px lung crops, fixed budget", "segmentation_infection_unet_128px_b16_masked_lungcrop_fixedbudget.json"),
    ("128 px lung crops, Genesis-pretrained",
     "segmentation_infection_unet_128px_b16_masked_lungcrop_unet-pretrain-genesis-sarscov2.json"),
    ("256 px, base 32, lung crops, GPU", "segmentation_infection_unet_256px_b32_masked_lungcrop_h200.json"),
    ("256 px, base 32, whole slices, GPU", "segmentation_infection_unet_256px_b32_masked_h200.json"),
    ("same, other fold partition", "segmentation_infection_unet_256px_b32_masked_seed1_h200.json"),
]

#: Stages drawn on the phantom (the study's stages, then the robust ones).
STAGES = ["original", "nobackg", "crop", "lungs-nocrop", "lungs", "lungs-3window", "lungs-robust", "lungs-hist"]


def read(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def row_for(label: str, name: str, arm: str | None) -> dict:
    """A generalisation row of a bench_generalization result, or of bench_quality's grouped/external pair."""
    if arm is not None:
        return gallery.generalization_row(read(name), arm, label)
    result = read(name)
    row = gallery.evaluation_row(result["grouped"], result["external"], label)
    f1 = gallery.evaluation_row(result["grouped"], result["external"], label, metric="macro_f1")
    return {**row, "internal macro_f1": f1["internal"], "internal macro_f1 low": f1["internal low"],
            "internal macro_f1 high": f1["internal high"]}


def stage_rows() -> pd.DataFrame:
    rows = []
    for label, name, arm in STAGE_ROWS:
        row = row_for(label, name, arm)
        rows.append({"label": label, "macro_f1": row["internal macro_f1"],
                     "macro_f1 low": row["internal macro_f1 low"], "macro_f1 high": row["internal macro_f1 high"],
                     "auc": row["internal"], "auc low": row["internal low"], "auc high": row["internal high"]})
    return pd.DataFrame(rows)


def save(figure, name: str, written: list, dpi: int = DPI) -> None:
    path = IMAGES / name
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    written.append(path)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KB)")


def shipped_run_figures(run: Path, written: list) -> bool:
    """Confusion matrix, ROC and training curves of the shipped recipe's run; False when the run is missing."""
    metrics_file, predictions_file = run / "metrics_test.json", run / "predictions_test.csv"
    if not (metrics_file.is_file() and predictions_file.is_file() and (run / "history.csv").is_file()):
        print(f"{run} has no evaluated test split: skipped the confusion matrix, ROC and training curves "
              f"(make them with `make shipped-run`, i.e. covidct train --config {SHIPPED_CONFIG} --evaluate)",
              file=sys.stderr)
        return False
    metrics = json.loads(metrics_file.read_text())
    block, names = metrics["slice"], metrics["slice"]["class_names"]
    groups = metrics.get("evaluated_on", {}).get("n_groups")
    where = f"sars-cov-2-ct test split, {block['n']} slices / {groups} groups"
    save(plot_confusion_matrix(block["confusion_matrix"], names,
                               title=f"shipped recipe: {where}\nmacro-F1 {block['macro_f1']:.3f} (argmax)"),
         "shipped_confusion.png", written)
    predictions = pd.read_csv(predictions_file)
    probabilities = predictions[[f"prob_{name}" for name in names]].to_numpy()
    save(plot_roc_curves(predictions["label_index"].to_numpy(), probabilities, names,
                         title=f"shipped recipe: ROC on the {where}"), "shipped_roc.png", written)
    save(plot_training_curves(pd.read_csv(run / "history.csv"),
                              title="shipped recipe: fixed 24-epoch budget, the last epoch is kept"),
         "shipped_training_curves.png", written)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=SHIPPED_RUN,
                        help="the shipped recipe's evaluated run folder (default: %(default)s)")
    parser.add_argument("--demo-run", default=None, help="a finished `covidct demo` run folder")
    args = parser.parse_args(argv)
    IMAGES.mkdir(exist_ok=True)
    written: list[Path] = []

    headline = pd.DataFrame([row_for(*entry) for entry in GENERALIZATION])
    save(gallery.plot_internal_vs_external(
        headline, internal_name="sars-cov-2-ct test split (own hospital)",
        external_name="COVID-CT-MD (another hospital)",
        title="small_cnn trained on sars-cov-2-ct: AUC on its own test split vs on another hospital"),
        "generalization_gap.png", written)
    save(gallery.plot_score_bars(stage_rows(), xlabel="sars-cov-2-ct test split",
                                 title="small_cnn at 128 px per preprocessing stage: test macro-F1 and AUC"),
         "scores_per_stage.png", written)
    cv = pd.DataFrame([row for name, labels in CV_ROUNDS for row in gallery.cv_rows(read(name), labels)
                       if row["candidate"] in labels])
    save(gallery.plot_score_bars(cv, xlabel="pooled out-of-fold, 4-fold grouped CV on 84 non-test groups",
                                 title="models and recipes on lungs-robust: macro-F1 and AUC"),
         "scores_per_model.png", written)

    phantom = make_slice("COV", size=256, seed=3)
    save(gallery.plot_stages(CTImage(array=phantom.image_hu.astype("float32"), unit="HU"), STAGES, size=128,
                             columns=4, title="preprocessing stages on a synthetic phantom (not patient data)"),
         "preprocessing_stages.png", written)
    save(plot_phantom_classes(), "phantom_classes.png", written, dpi=72)
    dice = [(label, read(name)["metrics"]["dice"]) for label, name in INFECTION_RECIPES]
    save(plot_intervals([label for label, _ in dice], [d["mean"] for _, d in dice], [d["low"] for _, d in dice],
                        [d["high"] for _, d in dice], target=0.70,
                        xlabel="Dice, 5-fold grouped CV on MedSeg (100 slices, 20 groups)",
                        title="Infection U-Net recipes: mean Dice and 95% CI"), "infection_dice_recipes.png", written)

    shipped_run_figures(args.run, written)
    if args.demo_run:
        sheet = Path(args.demo_run) / "gradcam" / "contact_sheet.png"
        if not sheet.is_file():
            print(f"{sheet} not found: run `covidct demo` first", file=sys.stderr)
            return 1
        shutil.copyfile(sheet, IMAGES / "demo_gradcam.png")
        print(f"wrote {IMAGES / 'demo_gradcam.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
