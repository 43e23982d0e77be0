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
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    if len(y_true) != len(scores):
        raise CovidctError(f"bootstrap_ci: {len(y_true)} labels for {len(scores)} scores.")
    if not 0 < ci < 1:
        raise CovidctError(f"bootstrap_ci: ci must lie in (0, 1), got {ci}.")
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
    if not replicates:
        low = high = float("nan")
    else:
        alpha = (1.0 - ci) / 2.0
        low, high = (float(v) for v in np.quantile(replicates, [alpha, 1.0 - alpha]))
    return {
        "value": value,
        "low": low,
        "high": high,
        "ci": ci,
        "n_groups": int(n_groups),
        "n_bootstrap": len(replicates),
        "unit": unit,
    }
