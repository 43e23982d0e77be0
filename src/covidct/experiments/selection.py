"""The fixed selection rule over pooled out-of-fold scores, and a candidate minus the base, paired.

The rule is fixed before any fold is trained: the candidate with the highest pooled out-of-fold
macro-F1 replaces the round's base only when it beats it by at least ``min_gain``; equal macro-F1 (to
six decimals) is broken by the higher pooled AUC. The difference of a candidate and the base is a
paired bootstrap over groups (the same resampled groups for both): its CI and the share of replicates
in which the candidate is better.
"""

from __future__ import annotations

import pandas as pd

from covidct.errors import CovidctError
from covidct.evaluate.bootstrap import paired_difference_ci
from covidct.evaluate.evaluator import metric_functions
from covidct.experiments.oof import binary_arrays
from covidct.experiments.rounds import CANDIDATES, MIN_GAIN, POSITIVE


def versus_base(base: pd.DataFrame, other: pd.DataFrame, n_bootstrap: int) -> dict:
    """Paired bootstrap (over groups) of the candidate's pooled out-of-fold scores minus ``base``'s."""
    if not base["path"].equals(other["path"]):
        raise CovidctError("the candidates' out-of-fold predictions cover different slices")
    y, probs_a, groups = binary_arrays(base)
    _, probs_b, _ = binary_arrays(other)
    functions = metric_functions(["other", POSITIVE])  # the evaluator's own macro-F1 and AUC
    return {name: paired_difference_ci(functions[key], y, probs_a, probs_b, groups=groups, n_bootstrap=n_bootstrap)
            for name, key in (("macro_f1", "macro_f1"), ("auc", "auc_macro_ovr"))}


def choose(candidates: dict, base: str = "base", min_gain: float = MIN_GAIN, overrides: dict | None = None) -> dict:
    """Apply the fixed rule to the candidates' pooled out-of-fold scores.

    Args:
        candidates: name -> ``{"oof_macro_f1": ..., "oof_auc": ...}``.
        base: the round's base (kept unless beaten by ``min_gain``).
        min_gain: the least macro-F1 gain over ``base`` that replaces it.
        overrides: name -> config overrides, to report the chosen one's (default ``rounds.CANDIDATES``).

    Returns:
        The rule, the best candidate by macro-F1, its gain over ``base``, the chosen one and its overrides.
    """
    overrides = CANDIDATES if overrides is None else overrides
    best = max(candidates, key=lambda n: (round(candidates[n]["oof_macro_f1"], 6), candidates[n]["oof_auc"]))
    gain = candidates[best]["oof_macro_f1"] - candidates[base]["oof_macro_f1"]
    chosen = best if best != base and gain >= min_gain else base
    return {"rule": f"highest pooled out-of-fold macro-F1 if it beats {base} by >= {min_gain}; else {base}",
            "base": base, "best_by_oof_macro_f1": best, "gain_over_base": gain, "chosen": chosen,
            "overrides": list(overrides.get(chosen, []))}
