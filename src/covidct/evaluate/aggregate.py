"""Slice → patient aggregation of class probabilities.

A CT study is many slices of one patient; a patient-level score summarises the slice probabilities of
one group. ``mean`` is the default; ``max`` flags a patient when any slice looks positive (sensitive,
but one noisy slice decides); ``topk`` averages the k most positive slices (a compromise); ``fraction``
is the share of slices whose probability is above a threshold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from covidct.errors import CovidctError, unknown_name_error

METHODS = ("mean", "max", "topk", "fraction")


def aggregate_scores(scores: np.ndarray, method: str = "mean", k: int = 5, threshold: float = 0.5) -> float:
    """Aggregate the scores of one group's slices for one class into one number.

    Args:
        scores: 1-D probabilities of one class for the slices of one group.
        method: ``"mean"``, ``"max"``, ``"topk"`` (mean of the k largest) or ``"fraction"`` (share of
            slices with score >= threshold).
        k: number of slices for ``"topk"`` (all slices when the group has fewer).
        threshold: probability cut-off for ``"fraction"``.

    Returns:
        The aggregated score in [0, 1].
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise CovidctError("aggregate_scores: a group has no slices.")
    if method == "mean":
        return float(values.mean())
    if method == "max":
        return float(values.max())
    if method == "topk":
        if int(k) < 1:
            raise CovidctError(f"aggregate_scores: k must be >= 1, got {k}.")
        return float(np.sort(values)[::-1][: int(k)].mean())
    if method == "fraction":
        return float((values >= threshold).mean())
    raise unknown_name_error("aggregation method", method, METHODS)


def aggregate_groups(
    probs: np.ndarray,
    groups,
    labels=None,
    method: str = "mean",
    k: int = 5,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Aggregate slice probabilities (N, C) into one row per group.

    Every class column is aggregated with the same method; for ``"mean"`` the rows still sum to one,
    for the other methods they are per-class scores (use them for AUC, not as a distribution).

    Args:
        probs: (N, C) class probabilities of N slices.
        groups: N group ids (patients).
        labels: optional N integer labels; a group's label is its most frequent slice label, and a
            group whose slices disagree raises (a patient has one diagnosis).
        method: see ``aggregate_scores``.
        k: slices for ``"topk"``.
        threshold: cut-off for ``"fraction"``.

    Returns:
        DataFrame with columns ``group``, ``n_slices``, ``score_0 .. score_{C-1}`` and, when labels are
        given, ``label``; sorted by group.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise CovidctError(f"aggregate_groups: probs must be (N, C), got shape {probs.shape}.")
    groups = np.asarray(groups).astype(str)
    if len(groups) != len(probs):
        raise CovidctError(f"aggregate_groups: {len(groups)} groups for {len(probs)} rows of probabilities.")
    if method not in METHODS:
        raise unknown_name_error("aggregation method", method, METHODS)
    label_array = None if labels is None else np.asarray(labels)
    rows = []
    for group in sorted(set(groups)):
        index = np.flatnonzero(groups == group)
        row = {"group": group, "n_slices": int(index.size)}
        for c in range(probs.shape[1]):
            row[f"score_{c}"] = aggregate_scores(probs[index, c], method=method, k=k, threshold=threshold)
        if label_array is not None:
            values = np.unique(label_array[index])
            if values.size > 1:
                raise CovidctError(
                    f"aggregate_groups: group {group!r} has slices with different labels {values.tolist()}; "
                    "a patient-level score needs one label per patient (check the manifest's group column)."
                )
            row["label"] = int(values[0])
        rows.append(row)
    return pd.DataFrame(rows)
