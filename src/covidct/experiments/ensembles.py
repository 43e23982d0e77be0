"""Seed ensembles, patient tables and their scores (internal test and external data).

``ensemble`` averages the seeds' probabilities of one evaluation (rows matched by path and slice);
``patient_table`` is the mean positive-class probability per patient (group); ``external_summary`` scores a
predictions table at slice level (AUC with a CI over patients) and at patient level (the patient-mean AUC,
and whether every positive patient ranks above every other).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from covidct.evaluate.evaluator import metrics_with_ci
from covidct.experiments.rounds import POSITIVE


def patient_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Mean COVID probability per patient (group) with the patient's label."""
    table = predictions.groupby("group").agg(label=("label", "first"), score=(f"prob_{POSITIVE}", "mean"), slices=("label", "size"))
    return table.reset_index().sort_values("score", ascending=False)


def external_summary(predictions: pd.DataFrame, n_bootstrap: int, class_names: list) -> dict:
    """Slice AUC (CI over patients), patient-mean AUC and the ranking check from a predictions table."""
    y = (predictions["label"].astype(str) == POSITIVE).to_numpy().astype(int)
    probs = np.stack([1 - predictions[f"prob_{POSITIVE}"].to_numpy(), predictions[f"prob_{POSITIVE}"].to_numpy()], axis=1)
    slice_metrics = metrics_with_ci(y, probs, predictions["group"].astype(str).to_numpy(), ["other", POSITIVE], n_bootstrap)
    patients = patient_table(predictions)
    covid = patients.loc[patients["label"] == POSITIVE, "score"]
    others = patients.loc[patients["label"] != POSITIVE, "score"]
    patient_auc = float(roc_auc_score(patients["label"] == POSITIVE, patients["score"])) if len(covid) and len(others) else float("nan")
    return {
        "slice_auc": slice_metrics["auc_macro_ovr"],
        "slice_auc_ci": [slice_metrics["ci"]["auc_macro_ovr"]["low"], slice_metrics["ci"]["auc_macro_ovr"]["high"]] if n_bootstrap else None,
        "slice_balanced_accuracy": slice_metrics["balanced_accuracy"],
        "n_slices": int(len(predictions)),
        "patient_mean_auc": patient_auc,
        "covid_patients_ranked_first": bool(len(covid) and len(others) and covid.min() > others.max()),
        "patients": {row.group: {"label": row.label, "mean_prob_covid": float(row.score), "slices": int(row.slices)}
                     for row in patients.itertuples()},
    }


def ensemble(run_dirs: list[Path], tag: str) -> pd.DataFrame:
    """Average the seeds' predictions of one evaluation tag (rows matched by path and slice)."""
    keys = ["path", "slice_index"] if tag.startswith("external") else ["path"]
    frames = [pd.read_csv(d / f"predictions_{tag}.csv") for d in run_dirs]
    keys = [k for k in keys if k in frames[0]]
    merged = frames[0][keys + ["group", "label", f"prob_{POSITIVE}"]].copy()
    for i, frame in enumerate(frames[1:], start=1):
        merged = merged.merge(frame[keys + [f"prob_{POSITIVE}"]].rename(columns={f"prob_{POSITIVE}": f"p{i}"}), on=keys)
    columns = [f"prob_{POSITIVE}"] + [f"p{i}" for i in range(1, len(frames))]
    merged[f"prob_{POSITIVE}"] = merged[columns].mean(axis=1)
    return merged.drop(columns=columns[1:])


def internal_scores(predictions: pd.DataFrame, n_bootstrap: int) -> dict:
    """Slice AUC and macro-F1 (argmax of the averaged probabilities) of internal test predictions, CIs over groups."""
    y = (predictions["label"].astype(str) == POSITIVE).to_numpy().astype(int)
    p = predictions[f"prob_{POSITIVE}"].to_numpy()
    result = metrics_with_ci(y, np.stack([1 - p, p], 1), predictions["group"].astype(str).to_numpy(), ["other", POSITIVE], n_bootstrap)
    ci = result.get("ci", {})
    return {
        "internal_test_auc": result["auc_macro_ovr"],
        "internal_test_auc_ci": [ci["auc_macro_ovr"]["low"], ci["auc_macro_ovr"]["high"]] if ci else None,
        "internal_test_macro_f1": result["macro_f1"],
        "internal_test_macro_f1_ci": [ci["macro_f1"]["low"], ci["macro_f1"]["high"]] if ci else None,
    }
