"""Classification metrics on class probabilities, computed with scikit-learn.

Every AUC here is computed on probabilities (softmax or sigmoid outputs), never on raw logits or on
thresholded labels, and the headline AUC is the one-vs-rest *macro* average (the original study's micro AUC on
logits over-stated its models). Macro F1 is reported next to weighted F1 so a minority class cannot
hide. A class that is absent from ``y_true`` has no defined AUC: it is reported as NaN and left out of
the macro average, with the list of absent classes in the result.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from covidct.errors import CovidctError, unknown_name_error


def logits_to_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Convert logits to class probabilities (N, C).

    Args:
        logits: (N, C) logits for softmax models, or (N,) / (N, 1) for a single sigmoid logit.
        temperature: divide the logits by this before the softmax/sigmoid (temperature scaling).

    Returns:
        (N, C) float64 probabilities; a single logit gives two columns ``[1 - p, p]``.
    """
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if z.ndim == 1 or z.shape[-1] == 1:
        p = 1.0 / (1.0 + np.exp(-z.reshape(-1)))
        return np.stack([1.0 - p, p], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_labels(probs: np.ndarray, threshold: float | None = None, positive_index: int = 1) -> np.ndarray:
    """Class predictions: argmax, or for two classes ``p[positive] >= threshold`` when a threshold is given."""
    probs = np.asarray(probs)
    if threshold is not None and probs.shape[1] == 2:
        negative_index = 1 - positive_index
        return np.where(probs[:, positive_index] >= threshold, positive_index, negative_index)
    return probs.argmax(axis=1)


def choose_threshold(y_true, positive_probs) -> dict:
    """The decision threshold on the positive-class probability that maximises macro-F1 on these labels.

    Meant for the **validation** split: the threshold is then applied unchanged to test or external data
    (validation selects, test reports). Candidates are 0.5 and the midpoints between consecutive distinct
    probabilities; among equally good thresholds the one closest to 0.5 wins, so a model whose argmax is
    already best keeps 0.5.

    Args:
        y_true: (N,) 1 for the positive class, 0 otherwise.
        positive_probs: (N,) probability of the positive class.

    Returns:
        ``{"value": threshold, "criterion": "macro_f1", "score": macro-F1 at it, "score_at_0.5": ...}``.

    Raises:
        CovidctError: fewer than one sample of each class, or mismatched lengths.
    """
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(positive_probs, dtype=np.float64).ravel()
    if len(y) != len(p):
        raise CovidctError(f"choose_threshold: {len(y)} labels but {len(p)} probabilities.")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise CovidctError(
            "choose_threshold: the labels must hold both classes (0 and 1) to choose a threshold; "
            f"got classes {sorted(set(y.tolist()))}."
        )
    levels = np.unique(p)
    candidates = np.unique(np.concatenate([[0.5], (levels[:-1] + levels[1:]) / 2]))
    predicted = p[None, :] >= candidates[:, None]  # (T, N)
    positive = y[None, :] == 1
    tp = (predicted & positive).sum(axis=1)
    fp = (predicted & ~positive).sum(axis=1)
    fn = (~predicted & positive).sum(axis=1)
    tn = (~predicted & ~positive).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_pos = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
        f1_neg = np.where(2 * tn + fn + fp > 0, 2 * tn / np.maximum(2 * tn + fn + fp, 1), 0.0)
    macro = (f1_pos + f1_neg) / 2
    best = np.flatnonzero(np.isclose(macro, macro.max(), rtol=0, atol=1e-12))
    pick = best[np.argmin(np.abs(candidates[best] - 0.5))]
    at_half = int(np.flatnonzero(candidates == 0.5)[0])
    return {"value": float(candidates[pick]), "criterion": "macro_f1", "score": float(macro[pick]),
            "score_at_0.5": float(macro[at_half])}


def _check(y_true: np.ndarray, probs: np.ndarray, class_names) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y_true = np.asarray(y_true).astype(int).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise CovidctError(f"metrics: probs must be (N, C) with N={len(y_true)}, got shape {probs.shape}.")
    if len(y_true) == 0:
        raise CovidctError("metrics: no samples to evaluate.")
    n_classes = probs.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    if len(names) != n_classes:
        raise CovidctError(f"metrics: {len(names)} class names for {n_classes} probability columns.")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise CovidctError(f"metrics: labels must lie in 0..{n_classes - 1}, got {sorted(set(y_true.tolist()))}.")
    return y_true, probs, names


def roc_auc_per_class(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class (NaN for a class absent from, or the only class in, y_true)."""
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    out = np.full(probs.shape[1], np.nan)
    for c in range(probs.shape[1]):
        positives = y_true == c
        if 0 < positives.sum() < len(y_true):
            out[c] = skm.roc_auc_score(positives, probs[:, c])
    return out


def macro_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest macro ROC AUC on probabilities over the classes present in y_true (NaN if undefined).

    For two classes this is the ordinary AUC of the positive-class probability (both one-vs-rest curves
    are the same curve).
    """
    per_class = roc_auc_per_class(y_true, probs)
    if np.all(np.isnan(per_class)):
        return float("nan")
    if probs.shape[1] == 2:
        return float(per_class[1])
    return float(np.nanmean(per_class))


def binary_auc(is_positive, scores) -> float:
    """ROC AUC of ``scores`` for a yes/no truth (e.g. one class against the rest); NaN when only one side occurs.

    Args:
        is_positive: N booleans (or 0/1), True for the positive cases.
        scores: N scores, higher meaning more likely positive (e.g. a class probability).
    """
    truth = np.asarray(is_positive).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if len(truth) != len(scores):
        raise CovidctError(f"binary_auc: {len(truth)} truths for {len(scores)} scores.")
    if not 0 < truth.sum() < len(truth):
        return float("nan")
    return float(skm.roc_auc_score(truth, scores))


def compute_metrics(
    y_true,
    probs,
    class_names=None,
    threshold: float | None = None,
    positive_class: str | int | None = None,
) -> dict:
    """All protocol metrics for one set of predictions.

    Args:
        y_true: (N,) integer labels.
        probs: (N, C) probabilities (rows sum to one).
        class_names: C names (default "0".."C-1").
        threshold: for two classes, predict positive when ``p[positive] >= threshold`` (default: argmax,
            which equals threshold 0.5).
        positive_class: name or index of the positive class for sensitivity/specificity (two classes
            only); default: the class whose name starts with "cov" (case-insensitive), else index 1.

    Returns:
        A JSON-ready dict: ``n``, ``macro_f1``, ``weighted_f1``, ``accuracy``, ``balanced_accuracy``,
        ``auc_macro_ovr``, ``auc_micro``, ``pr_auc_macro``, ``per_class`` (precision, recall, f1, support,
        auc, pr_auc), ``confusion_matrix`` (rows = true), ``absent_classes`` and, for two classes,
        ``positive_class``, ``threshold``, ``sensitivity``, ``specificity``.
    """
    y_true, probs, names = _check(y_true, probs, class_names)
    n_classes = probs.shape[1]
    positive_index = resolve_positive_index(names, positive_class) if n_classes == 2 else None
    y_pred = predict_labels(probs, threshold, positive_index if positive_index is not None else 1)
    labels = list(range(n_classes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    present = [c for c in labels if (y_true == c).any()]
    per_auc = roc_auc_per_class(y_true, probs)
    per_ap = np.full(n_classes, np.nan)
    for c in present:
        if (y_true == c).sum() < len(y_true):
            per_ap[c] = skm.average_precision_score(y_true == c, probs[:, c])
    onehot = np.eye(n_classes)[y_true]
    auc_micro = float("nan")
    if len(present) > 1:
        auc_micro = float(skm.roc_auc_score(onehot.ravel(), probs.ravel()))
    result = {
        "n": int(len(y_true)),
        "class_names": names,
        # Macro F1 averages over the classes present in y_true: a class with no samples and no
        # predictions would otherwise add a meaningless 0 or 1.
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean([recall[c] for c in present])),
        "auc_macro_ovr": macro_auc(y_true, probs),
        "auc_micro": auc_micro,
        "pr_auc_macro": float(np.nanmean(per_ap[1:] if n_classes == 2 else per_ap))
        if not np.all(np.isnan(per_ap))
        else float("nan"),
        "per_class": {
            names[c]: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
                "auc": float(per_auc[c]),
                "pr_auc": float(per_ap[c]),
            }
            for c in labels
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "absent_classes": [names[c] for c in labels if c not in present],
    }
    if n_classes == 2:
        pos = positive_index
        neg = 1 - pos
        tp = int(((y_pred == pos) & (y_true == pos)).sum())
        fn = int(((y_pred == neg) & (y_true == pos)).sum())
        tn = int(((y_pred == neg) & (y_true == neg)).sum())
        fp = int(((y_pred == pos) & (y_true == neg)).sum())
        result.update(
            positive_class=names[pos],
            threshold=0.5 if threshold is None else float(threshold),
            sensitivity=tp / (tp + fn) if tp + fn else float("nan"),
            specificity=tn / (tn + fp) if tn + fp else float("nan"),
        )
    return result


def resolve_positive_index(class_names, positive_class: str | int | None = None) -> int:
    """Index of the positive class among two: explicit name/index, else a name starting with "cov", else 1."""
    names = list(class_names)
    if positive_class is None:
        for i, name in enumerate(names):
            if str(name).lower().startswith("cov"):
                return i
        return 1
    if isinstance(positive_class, (int, np.integer)):
        if not 0 <= int(positive_class) < len(names):
            raise CovidctError(f"positive_class index {positive_class} is out of range for classes {names}.")
        return int(positive_class)
    if positive_class not in names:
        raise unknown_name_error("class", str(positive_class), names)
    return names.index(positive_class)
