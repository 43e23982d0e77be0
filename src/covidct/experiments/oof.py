"""Out-of-fold predictions: every non-test slice predicted once, by the fold model that did not train on it.

The folds' held-out predictions (``predictions_val.csv`` of each fold run) are stacked into one table and
scored as one pool: macro-F1 at the argmax and AUC, with 95% CIs by bootstrap over groups, plus each
fold's own values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from covidct.errors import CovidctError
from covidct.evaluate.evaluator import metrics_with_ci
from covidct.experiments.rounds import POSITIVE


def out_of_fold(run_dirs: list[Path]) -> pd.DataFrame:
    """The folds' held-out predictions stacked (one row per non-test slice), with the fold number."""
    frames = [pd.read_csv(d / "predictions_val.csv").assign(fold=k) for k, d in enumerate(run_dirs)]
    table = pd.concat(frames, ignore_index=True)
    if table["path"].duplicated().any():
        raise CovidctError(f"out-of-fold predictions hold {int(table['path'].duplicated().sum())} repeated slices")
    return table.sort_values("path").reset_index(drop=True)


def binary_arrays(table: pd.DataFrame):
    y = (table["label"].astype(str) == POSITIVE).to_numpy().astype(int)
    p = table[f"prob_{POSITIVE}"].to_numpy(dtype=float)
    return y, np.stack([1 - p, p], axis=1), table["group"].astype(str).to_numpy()


def candidate_scores(table: pd.DataFrame, n_bootstrap: int) -> dict:
    """Pooled out-of-fold macro-F1 and AUC with CIs over groups, and the per-fold values."""
    y, probs, groups = binary_arrays(table)
    pooled = metrics_with_ci(y, probs, groups, ["other", POSITIVE], n_bootstrap)
    ci = pooled.get("ci", {})
    per_fold = []
    for fold, rows in table.groupby("fold"):
        fy, fp, fg = binary_arrays(rows)
        scores = metrics_with_ci(fy, fp, fg, ["other", POSITIVE], n_bootstrap=0)
        per_fold.append({"fold": int(fold), "slices": int(len(rows)), "groups": int(len(set(fg))),
                         "macro_f1": scores["macro_f1"], "auc": scores["auc_macro_ovr"]})
    return {
        "oof_macro_f1": pooled["macro_f1"],
        "oof_macro_f1_ci": [ci["macro_f1"]["low"], ci["macro_f1"]["high"]] if ci else None,
        "oof_auc": pooled["auc_macro_ovr"],
        "oof_auc_ci": [ci["auc_macro_ovr"]["low"], ci["auc_macro_ovr"]["high"]] if ci else None,
        "oof_balanced_accuracy": pooled["balanced_accuracy"],
        "slices": int(len(table)), "groups": int(len(set(groups))),
        "folds": per_fold,
    }
