"""Calibration: expected calibration error (ECE), reliability bins, temperature scaling.

Temperature scaling (Guo et al. 2017, arXiv:1706.04599) divides the logits by one scalar T > 0 fitted
on the *validation* set by minimising the negative log-likelihood; it changes confidence, not the
argmax. It must never be fitted on the set that is reported.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from covidct.errors import CovidctError
from covidct.evaluate.metrics import logits_to_probs


def reliability_bins(y_true, probs, n_bins: int = 15) -> dict:
    """Equal-width confidence bins of the top-class probability.

    Args:
        y_true: (N,) integer labels.
        probs: (N, C) probabilities.
        n_bins: number of equal-width bins on [0, 1]; bin i holds confidences in (i/n, (i+1)/n] (the
            first bin also holds 0).

    Returns:
        dict of arrays ``edges`` (n_bins + 1), ``confidence`` (mean confidence per bin, NaN when
        empty), ``accuracy`` (per bin), ``count`` (per bin).
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise CovidctError(f"calibration: probs must be (N, C) with N={len(y_true)}, got {probs.shape}.")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    bin_index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bin_index, minlength=n_bins).astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bin_index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bin_index, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


def expected_calibration_error(y_true, probs, n_bins: int = 15) -> float:
    """ECE: sum over bins of (bin size / N) * |accuracy - mean confidence| on the top-class probability."""
    bins = reliability_bins(y_true, probs, n_bins=n_bins)
    count = bins["count"]
    used = count > 0
    gaps = np.abs(bins["accuracy"][used] - bins["confidence"][used])
    return float(np.sum(count[used] / count.sum() * gaps))


def negative_log_likelihood(y_true, logits, temperature: float = 1.0) -> float:
    """Mean NLL of the true class under ``softmax(logits / temperature)``."""
    probs = logits_to_probs(logits, temperature)
    y_true = np.asarray(y_true).astype(int)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0))))


def fit_temperature(y_true, logits, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Fit the temperature T that minimises validation NLL of ``softmax(logits / T)``.

    Args:
        y_true: (N,) validation labels.
        logits: (N, C) validation logits (or (N,) single sigmoid logits).
        bounds: search interval for T.

    Returns:
        The fitted temperature (a float > 0).
    """
    y_true = np.asarray(y_true).astype(int)
    logits = np.asarray(logits, dtype=np.float64)
    if len(y_true) < 2:
        raise CovidctError("fit_temperature: needs at least two validation samples.")
    # Optimise log T so the search is symmetric around T = 1.
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(y_true, logits, float(np.exp(log_t))),
        bounds=(np.log(bounds[0]), np.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))
