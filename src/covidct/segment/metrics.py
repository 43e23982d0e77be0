"""Segmentation metrics: Dice, IoU, Hausdorff distance (95th percentile), per image and summarised.

Conventions (the usual ones, e.g. MONAI's): masks are binary (any non-zero value is foreground).
When both masks are empty Dice and IoU are 1 and the Hausdorff distance is 0; when exactly one is
empty Dice and IoU are 0 and the Hausdorff distance is undefined (NaN, counted in ``n_undefined``).
Distances are in pixels unless ``spacing`` (mm per row, column) is given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from covidct.errors import CovidctError
from covidct.evaluate.bootstrap import bootstrap_ci

METRICS = ("dice", "iou", "hausdorff95")


def _pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred) > 0
    true = np.asarray(true) > 0
    if pred.shape != true.shape:
        raise CovidctError(
            f"Predicted mask shape {pred.shape} differs from the true mask shape {true.shape}."
        )
    return pred, true


def dice(pred, true) -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|) of two binary masks (1.0 when both are empty)."""
    pred, true = _pair(pred, true)
    total = pred.sum() + true.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, true).sum() / total)


def iou(pred, true) -> float:
    """Intersection over union |P∩T| / |P∪T| of two binary masks (1.0 when both are empty)."""
    pred, true = _pair(pred, true)
    union = np.logical_or(pred, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, true).sum() / union)


def boundary(mask) -> np.ndarray:
    """Boundary pixels of a binary mask: the mask minus its erosion (3x3 cross)."""
    mask = np.asarray(mask) > 0
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff(pred, true, percentile: float = 95.0, spacing=None) -> float:
    """Symmetric Hausdorff distance between the boundaries of two masks, at a percentile.

    Args:
        pred: binary mask (2D or 3D).
        true: binary mask of the same shape.
        percentile: 95 gives the robust HD95; 100 the classical (maximum) Hausdorff distance.
        spacing: pixel spacing per axis (mm); default 1 (distances in pixels).

    Returns:
        max(percentile of pred->true distances, percentile of true->pred distances); 0 when both masks
        are empty, NaN when exactly one is.
    """
    pred, true = _pair(pred, true)
    if not pred.any() and not true.any():
        return 0.0
    if not pred.any() or not true.any():
        return float("nan")
    pred_edge, true_edge = boundary(pred), boundary(true)
    to_true = ndimage.distance_transform_edt(~true_edge, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=spacing)
    return float(
        max(np.percentile(to_true[pred_edge], percentile), np.percentile(to_pred[true_edge], percentile))
    )


def hausdorff95(pred, true, spacing=None) -> float:
    """95th-percentile symmetric Hausdorff distance (see ``hausdorff``)."""
    return hausdorff(pred, true, 95.0, spacing)


def per_image_metrics(preds, trues, names=None, groups=None) -> pd.DataFrame:
    """Dice, IoU and HD95 for each image of a stack.

    Args:
        preds: (N, H, W) binary predictions.
        trues: (N, H, W) binary ground truth.
        names: optional N image names (e.g. paths).
        groups: optional N group ids (patients) for grouped bootstrap intervals.

    Returns:
        DataFrame with columns name, group, dice, iou, hausdorff95, true_fraction, pred_fraction.
    """
    preds, trues = np.asarray(preds), np.asarray(trues)
    if len(preds) != len(trues):
        raise CovidctError(f"{len(preds)} predicted masks for {len(trues)} true masks.")
    rows = []
    for index, (pred, true) in enumerate(zip(preds, trues)):
        rows.append(
            {
                "name": str(names[index]) if names is not None else str(index),
                "group": str(groups[index]) if groups is not None else str(index),
                "dice": dice(pred, true),
                "iou": iou(pred, true),
                "hausdorff95": hausdorff95(pred, true),
                "true_fraction": float((np.asarray(true) > 0).mean()),
                "pred_fraction": float((np.asarray(pred) > 0).mean()),
            }
        )
    return pd.DataFrame(rows)


def summarize(per_image: pd.DataFrame, n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """Mean of each metric with a bootstrap confidence interval over groups.

    Args:
        per_image: output of ``per_image_metrics`` (the ``group`` column defines the resampling unit).
        n_bootstrap: bootstrap replicates.
        ci: interval coverage.
        seed: random seed.

    Returns:
        ``{metric: {"mean", "low", "high", "median", "n_undefined"}, "n_images", "n_groups"}``.
    """
    summary = {"n_images": int(len(per_image)), "n_groups": int(per_image["group"].nunique())}
    groups = per_image["group"].to_numpy()
    for metric in METRICS:
        values = per_image[metric].to_numpy(dtype=np.float64)
        undefined = int(np.isnan(values).sum())
        if undefined == len(values):
            summary[metric] = {
                "mean": float("nan"),
                "low": float("nan"),
                "high": float("nan"),
                "median": float("nan"),
                "n_undefined": undefined,
            }
            continue
        result = bootstrap_ci(
            lambda y, s: float(np.nanmean(y)),
            values,
            values,
            groups=groups,
            n_bootstrap=n_bootstrap,
            ci=ci,
            seed=seed,
        )
        summary[metric] = {
            "mean": float(np.nanmean(values)),
            "low": float(result["low"]),
            "high": float(result["high"]),
            "median": float(np.nanmedian(values)),
            "n_undefined": undefined,
        }
    return summary
