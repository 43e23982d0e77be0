"""Bootstrap confidence intervals that resample groups (patients), never single slices.

Slices of one patient are correlated: resampling slices treats them as independent and gives
intervals that are too narrow. Here each bootstrap replicate draws groups with replacement and keeps
every slice of each drawn group.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from covidct.errors import CovidctError


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true,
    scores,
    groups=None,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap confidence interval of ``metric_fn(y_true, scores)`` over groups.

    Args:
        metric_fn: function of (y_true subset, scores subset) returning a float (NaN allowed, e.g. an
            AUC on a replicate with one class; such replicates are dropped).
        y_true: (N,) labels.
        scores: (N, ...) probabilities or predictions, indexed along axis 0 like y_true.
        groups: (N,) group ids; None treats every row as its own group (slice bootstrap).
        n_bootstrap: number of replicates.
        ci: coverage, e.g. 0.95.
        seed: random seed.

    Returns:
        dict with ``value`` (on all data), ``low``, ``high``, ``n_groups``, ``n_bootstrap`` (valid
        replicates) and ``unit`` (``"group"`` or ``"sample"``).
    """
    if not 0 < ci < 1:
        raise CovidctError(f"bootstrap_ci: ci must lie in (0, 1), got {ci}.")
    value, replicates, n_groups, unit = _replicates(metric_fn, y_true, scores, groups, n_bootstrap, seed, "bootstrap_ci")
    low, high = _percentiles(replicates, ci)
    return {
        "value": value,
        "low": low,
        "high": high,
        "ci": ci,
        "n_groups": int(n_groups),
        "n_bootstrap": len(replicates),
        "unit": unit,
    }


def _replicates(metric_fn, y_true, scores, groups, n_bootstrap: int, seed: int, caller: str):
    """``metric_fn`` on all rows and on ``n_bootstrap`` resamples of whole groups (non-finite replicates dropped).

    Returns:
        (value on all rows, list of replicate values, number of groups, ``"group"`` or ``"sample"``).
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    if len(y_true) != len(scores):
        raise CovidctError(f"{caller}: {len(y_true)} labels for {len(scores)} scores.")
    unit = "group" if groups is not None else "sample"
    if groups is None:
        groups = np.arange(len(y_true))
    codes, group_index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups = len(codes)
    members = [np.flatnonzero(group_index == g) for g in range(n_groups)]
    value = float(metric_fn(y_true, scores))
    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(int(n_bootstrap)):
        drawn = rng.integers(0, n_groups, size=n_groups)
        index = np.concatenate([members[g] for g in drawn])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            replicate = metric_fn(y_true[index], scores[index])
        if replicate is not None and np.isfinite(replicate):
            replicates.append(float(replicate))
    return value, replicates, n_groups, unit


def _percentiles(replicates: list, ci: float) -> tuple[float, float]:
    """The percentile interval of the replicates at coverage ``ci`` (NaN, NaN when there are none)."""
    if not replicates:
        return float("nan"), float("nan")
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_difference_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true,
    scores_a,
    scores_b,
    groups=None,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict:
    """Bootstrap interval of ``metric_fn(y, scores_b) - metric_fn(y, scores_a)`` on the same rows.

    Both systems are scored on the same resampled groups in every replicate (a paired bootstrap), so the
    interval is that of the difference, not the two systems' noise added up. Used to compare two recipes
    on the same out-of-fold predictions.

    Args:
        metric_fn: function of (y_true subset, scores subset) returning a float.
        y_true: (N,) labels.
        scores_a: (N, ...) scores of the reference system.
        scores_b: (N, ...) scores of the other system, rows aligned with ``scores_a``.
        groups: (N,) group ids; None: every row is its own group.
        n_bootstrap: replicates.
        ci: coverage.
        seed: random seed.

    Returns:
        dict with ``value`` (b - a on all rows), ``low``, ``high``, ``ci``, ``n_groups``, ``n_bootstrap``,
        ``unit`` and ``share_b_better`` (the share of replicates in which b scores strictly higher).
    """
    scores_a, scores_b = np.asarray(scores_a), np.asarray(scores_b)
    if scores_a.shape != scores_b.shape:
        raise CovidctError(f"paired_difference_ci: scores of shape {scores_a.shape} and {scores_b.shape} are not paired.")
    if not 0 < ci < 1:
        raise CovidctError(f"paired_difference_ci: ci must lie in (0, 1), got {ci}.")

    def difference(y, pair):
        return metric_fn(y, pair[:, 1]) - metric_fn(y, pair[:, 0])

    value, replicates, n_groups, unit = _replicates(difference, y_true, np.stack([scores_a, scores_b], axis=1), groups,
                                                    n_bootstrap, seed, "paired_difference_ci")
    low, high = _percentiles(replicates, ci)
    share = float(np.mean(np.asarray(replicates) > 0)) if replicates else float("nan")
    return {"value": value, "low": low, "high": high, "ci": ci, "n_groups": int(n_groups),
            "n_bootstrap": len(replicates), "unit": unit, "share_b_better": share}
