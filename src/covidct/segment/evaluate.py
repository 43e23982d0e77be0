"""Per-image test evaluation of a segmentation run folder written by ``train(cfg)`` (``task: segmentation``).

Validation selects, test reports: ``train(cfg)`` chose each checkpoint (and the lung input) on a
validation part of the training data and wrote which rows were train / val / test to ``split.csv``;
this module scores only the ``test`` rows, with the checkpoint that was selected, and writes::

    runs/<name>/per_image_test.csv  metrics_test.json            (the dataset's test split)
    runs/<name>/fold_<k>/per_image_test.csv  metrics_test.json   (grouped k-fold CV: each fold's held-out part)
    runs/<name>/per_image_cv.csv  metrics_cv.json                 (every image once, by the fold that held it out)

Each metrics file holds the mean Dice, IoU and HD95 with 95% bootstrap intervals over groups
(``covidct.segment.metrics.summarize``), the split it was computed on and the one that selected.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.config import load_config
from covidct.errors import CovidctError
from covidct.models.inference import load_model_file, predict_mask_probabilities
from covidct.runs import check_writable, read_run_info, write_json_atomic, write_text_atomic
from covidct.segment.data import paste_crops
from covidct.segment.metrics import per_image_metrics, summarize
from covidct.train import segmentation as seg
from covidct.train.segmentation import load_segmentation_pairs

logger = logging.getLogger(__name__)

THRESHOLD = 0.5  # probability cut-off of the reported masks (sigmoid(logit) >= 0.5, i.e. logit >= 0)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CovidctError(
            f"{path} is missing: is {path.parent} a finished segmentation run from train(cfg)?"
        )
    if path.name == "run.json":
        return read_run_info(path.parent)  # a corrupt run.json is named, not a JSONDecodeError
    return json.loads(path.read_text())


def _rows_of(names: pd.Series, pairs, split_file: Path) -> np.ndarray:
    """Row indices of ``names`` in the pairs (names are the source image paths)."""
    where = {str(name): i for i, name in enumerate(pairs.names)}
    missing = [name for name in names if name not in where]
    if missing:
        raise CovidctError(
            f"{split_file} names {len(missing)} image(s) that the loaded pairs do not hold (e.g. {missing[0]!r}): "
            "evaluate with the data the run was trained on (same data.root, data.size, data.options)."
        )
    return np.array([where[name] for name in names], dtype=np.int64)


def predict_test_masks(
    model, pairs, lung_input: str, crop: str = "none", tta: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) binary masks of every pair, in the frame the run is scored in.

    Whole slices: the model's masks against ``pairs.masks``. Lung crops: the probabilities pasted back into the
    whole slice at ``pairs.frame_masks``' size and compared with ``pairs.frame_masks``. With ``tta`` the
    probability map is the mean of the image's and of its left-right mirror's (mirrored back), as
    ``evaluation.tta`` does for classifiers.
    """
    probabilities = predict_mask_probabilities(model, seg.model_inputs(pairs, lung_input == "masked"), tta=tta)
    if crop != "lungs":
        return probabilities >= THRESHOLD, pairs.masks

    probabilities = paste_crops(probabilities, pairs.boxes, pairs.frame_masks.shape[1])
    return probabilities >= THRESHOLD, pairs.frame_masks


def evaluate_split(
    split_dir: Path,
    pairs,
    lung_input: str,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    crop: str = "none",
    tta: bool = False,
) -> tuple[dict, pd.DataFrame]:
    """Score the ``test`` rows of one split folder with its ``model.keras``; writes per_image_test.csv.

    Args:
        split_dir: the run folder (test split) or one ``fold_<k>`` folder, holding split.csv and model.keras.
        pairs: the SegmentationPairs the run was trained on.
        lung_input: ``"none"`` or ``"masked"`` (what the checkpoint was trained on).
        n_bootstrap: bootstrap replicates; ci: interval coverage; seed: bootstrap seed.
        crop: ``"lungs"`` when the checkpoint was trained on lung crops: its probabilities are pasted back
            into the whole slice (``covidct.segment.data.paste_crops``) and scored against the whole slice's
            mask, so infection outside the crop counts as missed.
        tta: average the probabilities of each image and of its left-right mirror (``evaluation.tta``).

    Returns:
        (``summarize`` dict of the test rows: Dice, IoU, HD95 with bootstrap CIs; the per-image table).
    """
    split_file = split_dir / seg.SPLIT_FILE
    if not split_file.is_file():
        raise CovidctError(f"{split_file} is missing: is {split_dir} a segmentation run from train(cfg)?")
    split = pd.read_csv(split_file, dtype=str, keep_default_na=False)
    test = _rows_of(split.loc[split["split"] == "test", "name"], pairs, split_file)
    if not len(test):
        raise CovidctError(f"{split_file} lists no test rows; nothing to report.")
    if crop == "lungs" and (pairs.boxes is None or pairs.frame_masks is None):
        raise CovidctError(
            f"{split_dir} was trained on lung crops: load the pairs with crop='lungs' to evaluate it."
        )
    if lung_input == "masked" and pairs.lungs is None:
        raise CovidctError(
            f"{split_dir} was trained on lung-masked images: load the pairs with with_lungs=True to evaluate it."
        )
    model = load_model_file(split_dir / "model.keras", "Segmenter checkpoint")
    subset = pairs.subset(test)
    predicted, true = predict_test_masks(model, subset, lung_input, crop, tta)
    per_image = per_image_metrics(predicted, true, names=subset.names, groups=subset.groups)
    write_text_atomic(split_dir / "per_image_test.csv", per_image.to_csv(index=False))
    return summarize(per_image, n_bootstrap=n_bootstrap, ci=ci, seed=seed), per_image


def evaluate_segmentation(run_dir, pairs=None, n_bootstrap: int | None = None) -> dict:
    """Per-image Dice / IoU / HD95 of a finished segmentation run on its test rows (see the module doc).

    Args:
        run_dir: run folder written by ``train(cfg)`` with ``task: segmentation``.
        pairs: the ``SegmentationPairs`` it was trained on (default: loaded from its ``config.yaml``).
        n_bootstrap: bootstrap replicates (default: the config's ``evaluation.n_bootstrap``).

    Returns:
        The summary written to ``metrics_test.json`` (``metrics_cv.json`` for a cross-validation run).

    Raises:
        CovidctError: not a finished segmentation run, or pairs that do not hold its test images.
    """
    run_dir = Path(run_dir)
    info = _read_json(run_dir / "run.json")
    if info.get("task") != "segmentation":
        raise CovidctError(
            f"{run_dir} is not a segmentation run (run.json task {info.get('task')!r}); use covidct evaluate."
        )
    if info.get("status") != "finished":
        raise CovidctError(
            f"{run_dir} has status {info.get('status')!r}: finish it first (covidct segment train ... --resume)."
        )
    check_writable(run_dir)  # before any mask is predicted
    cfg = load_config(run_dir / "config.yaml", validate=False)
    e = cfg.evaluation
    n_bootstrap = e.n_bootstrap if n_bootstrap is None else int(n_bootstrap)
    seed = cfg.training.seed
    if pairs is None:
        pairs = load_segmentation_pairs(cfg)
    selection = {
        "split": info.get("selection_split", "val"),
        "monitor": info.get("monitor", "val_dice"),
        "what": info.get("selection", ""),
    }

    def split_summary(split_dir: Path, split_info: dict) -> tuple[dict, pd.DataFrame]:
        summary, per_image = evaluate_split(
            split_dir, pairs, split_info["lung_input"], n_bootstrap, e.ci, seed, split_info.get("crop", "none"), e.tta
        )
        counts = split_info["split_counts"]
        summary.update(
            {
                "split": "test",
                "selection": selection,
                "evaluated_on": {
                    "split": "test",
                    "n_images": summary["n_images"],
                    "n_groups": summary["n_groups"],
                },
                "threshold": THRESHOLD,
                "tta": bool(e.tta),
                "n_train": counts["train"]["images"],
                "n_val": counts["val"]["images"],
                "epochs_run": split_info["epochs_run"],
                "best_epoch": split_info["best_epoch"],
                "val_dice": split_info["val_dice"],
                "lung_input": split_info["lung_input"],
                "crop": split_info.get("crop", "none"),
                "scored_on": "whole slice (lung-crop predictions pasted back)"
                if split_info.get("crop", "none") == "lungs"
                else "whole slice",
                "val_dice_by_input": split_info["val_dice_by_input"],
            }
        )
        write_json_atomic(split_dir / "metrics_test.json", summary)
        return summary, per_image

    if not info.get("folds"):
        summary, _ = split_summary(run_dir, info)
        return summary
    fold_summaries, tables = [], []
    for k in range(int(info["folds"])):
        fold_dir = run_dir / f"fold_{k}"
        summary, per_image = split_summary(fold_dir, _read_json(fold_dir / "run.json"))
        fold_summaries.append(summary)
        tables.append(per_image.assign(fold=k))
    per_image = pd.concat(tables, ignore_index=True)
    write_text_atomic(run_dir / "per_image_cv.csv", per_image.to_csv(index=False))
    summary = summarize(per_image, n_bootstrap=n_bootstrap, ci=e.ci, seed=seed)
    infected = per_image[per_image["true_fraction"] > 0]
    summary.update(
        {
            "split": f"{info['folds']}-fold grouped cross-validation (each image predicted once, by the fold that held it out)",
            "selection": selection,
            "evaluated_on": {"split": "cv", "n_images": summary["n_images"], "n_groups": summary["n_groups"]},
            "threshold": THRESHOLD,
            "tta": bool(e.tta),
            "fold_dice": [s["dice"]["mean"] for s in fold_summaries],
            "fold_lung_input": [s["lung_input"] for s in fold_summaries],
            "fold_val_dice": [s["val_dice"] for s in fold_summaries],
            "fold_epochs_run": [s["epochs_run"] for s in fold_summaries],
            "dice_slices_with_infection": summarize(infected, n_bootstrap=n_bootstrap, ci=e.ci, seed=seed)[
                "dice"
            ]
            if len(infected)
            else None,
            "n_slices_with_infection": int(len(infected)),
            "group_proxy": info.get("group_proxy", ""),
        }
    )
    write_json_atomic(run_dir / "metrics_cv.json", summary)
    return summary


__all__ = ["evaluate_segmentation", "evaluate_split", "predict_test_masks"]
