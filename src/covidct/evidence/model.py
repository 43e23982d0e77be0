"""A small, interpretable model on lesion features, chosen by grouped cross-validation on training rows only.

Candidates (``CANDIDATES``) are a handful of feature sets crossed with two model families: an
L2 logistic regression on standardised features and a depth-2 decision tree. Missing density features
(lesion-free slices, windows that could not be estimated) are filled with the training median. The
candidate with the best mean grouped-CV ROC AUC (``covidct.data.splits.grouped_kfold``, folds by group)
is refitted on all training rows. Nothing here ever sees an external dataset.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from covidct.data.splits import grouped_kfold
from covidct.errors import CovidctError, unknown_name_error
from covidct.evaluate.metrics import binary_auc

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "burden": ("burden",),
    "burden+sides": ("burden", "burden_min_side"),
    "burden+sides+periphery": ("burden", "burden_min_side", "peripheral_share"),
    "pattern": ("burden", "burden_min_side", "peripheral_share", "ggo_share", "n_lesions"),
    "pattern+position+density": ("burden", "burden_min_side", "peripheral_share", "ggo_share", "n_lesions",
                                 "posterior_share", "lesion_hu"),
}
MODEL_FAMILIES = ("logistic", "tree")
CANDIDATES = [(features, family) for features in FEATURE_SETS for family in MODEL_FAMILIES]


def make_model(family: str, seed: int = 0):
    """An unfitted sklearn pipeline: median imputation, then standardised logistic regression or a depth-2 tree."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    if family == "logistic":
        return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    if family == "tree":
        return make_pipeline(SimpleImputer(strategy="median"),
                             DecisionTreeClassifier(max_depth=2, min_samples_leaf=20, random_state=seed))
    raise unknown_name_error("evidence model family", family, MODEL_FAMILIES)


def _matrix(table: pd.DataFrame, features: tuple[str, ...]) -> np.ndarray:
    missing = [name for name in features if name not in table.columns]
    if missing:
        raise CovidctError(f"Feature table lacks {missing}; recompute it with `covidct evidence`.")
    return table[list(features)].to_numpy(dtype=float)


def grouped_cv(table: pd.DataFrame, positive: str, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """Mean and per-fold grouped-CV AUC of every candidate on the rows of ``table`` (label, group, features).

    Args:
        table: training rows only.
        positive: the label counted as positive.
        k: folds (by group, stratified).
        seed: fold shuffling seed.

    Returns:
        DataFrame with ``features``, ``family``, ``cv_auc_mean``, ``cv_auc_sd`` and ``fold_aucs``.
    """
    rows_only = table[["path", "label", "group"]].reset_index(drop=True).assign(split="train", source="evidence")
    folds = grouped_kfold(rows_only, k=k, seed=seed)
    truth = (table["label"] == positive).to_numpy()
    rows = []
    for features, family in CANDIDATES:
        x = _matrix(table, FEATURE_SETS[features])
        aucs = []
        for train, test in folds:
            model = make_model(family, seed).fit(x[train], truth[train])
            aucs.append(binary_auc(truth[test], model.predict_proba(x[test])[:, 1]))
        rows.append({"features": features, "family": family, "cv_auc_mean": float(np.mean(aucs)),
                     "cv_auc_sd": float(np.std(aucs)), "fold_aucs": [float(a) for a in aucs]})
    return pd.DataFrame(rows)


def choose(cv: pd.DataFrame) -> dict:
    """The best candidate by mean CV AUC (ties: fewer features, then logistic first)."""
    order = cv.assign(n=cv["features"].map(lambda f: len(FEATURE_SETS[f])), fam=cv["family"].map(MODEL_FAMILIES.index))
    best = order.sort_values(["cv_auc_mean", "n", "fam"], ascending=[False, True, True]).iloc[0]
    return {"features": str(best["features"]), "feature_names": list(FEATURE_SETS[best["features"]]),
            "family": str(best["family"]), "cv_auc_mean": float(best["cv_auc_mean"]), "cv_auc_sd": float(best["cv_auc_sd"])}


def fit_choice(table: pd.DataFrame, choice: dict, positive: str, seed: int = 0):
    """The chosen candidate fitted on all rows of ``table``."""
    truth = (table["label"] == positive).to_numpy()
    return make_model(choice["family"], seed).fit(_matrix(table, tuple(choice["feature_names"])), truth)


def predict(model, table: pd.DataFrame, choice: dict) -> np.ndarray:
    """Positive-class probabilities of ``table``'s rows."""
    return model.predict_proba(_matrix(table, tuple(choice["feature_names"])))[:, 1]


def describe(model, choice: dict) -> dict:
    """Readable parameters: logistic coefficients (per standardised feature) or the tree's rules as text."""
    from sklearn.tree import export_text

    last = model[-1]
    if choice["family"] == "logistic":
        return {"intercept": float(last.intercept_[0]),
                "coefficients": dict(zip(choice["feature_names"], map(float, last.coef_[0])))}
    return {"tree": export_text(last, feature_names=list(choice["feature_names"]))}


__all__ = ["CANDIDATES", "FEATURE_SETS", "choose", "describe", "fit_choice", "grouped_cv", "make_model", "predict"]
