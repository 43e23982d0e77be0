"""The protocol's numbers against independent computations: pooled out-of-fold scores (scikit-learn), the
paired bootstrap (a bootstrap written here), seed ensembles and patient tables (by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from covidct.experiments.cli import parse_args
from covidct.experiments.ensembles import ensemble, external_summary, patient_table
from covidct.experiments.oof import candidate_scores, out_of_fold
from covidct.experiments.selection import choose, versus_base


def _write_folds(tmp_path, table: pd.DataFrame, fold_of) -> list:
    run_dirs = []
    for k in sorted(set(fold_of)):
        run_dir = tmp_path / f"fold{k}"
        run_dir.mkdir()
        table[np.asarray(fold_of) == k].to_csv(run_dir / "predictions_val.csv", index=False)
        run_dirs.append(run_dir)
    return run_dirs


def test_pooled_out_of_fold_scores_equal_scikit_learn_on_the_stacked_table(tmp_path):
    table = pd.DataFrame({
        "path": [f"s{i}.png" for i in range(8)],
        "group": ["a", "a", "b", "b", "c", "c", "d", "d"],
        "label": ["COV", "NonCOV", "COV", "COV", "NonCOV", "NonCOV", "COV", "NonCOV"],
        "prob_COV": [0.9, 0.6, 0.4, 0.8, 0.3, 0.7, 0.55, 0.1],
    })
    stacked = out_of_fold(_write_folds(tmp_path, table, [0, 0, 1, 1, 0, 0, 1, 1]))
    assert stacked["path"].tolist() == sorted(table["path"]) and sorted(stacked["fold"]) == [0] * 4 + [1] * 4
    scores = candidate_scores(stacked, n_bootstrap=0)
    y = (stacked["label"] == "COV").to_numpy().astype(int)
    p = stacked["prob_COV"].to_numpy()
    # Argmax of (1 - p, p): COV when p > 0.5. By hand: 3 of 4 COV and 2 of 4 NonCOV right.
    assert scores["oof_macro_f1"] == pytest.approx(f1_score(y, (p > 0.5).astype(int), average="macro"))
    assert scores["oof_macro_f1"] == pytest.approx((2 * 3 / (2 * 3 + 1 + 2) + 2 * 2 / (2 * 2 + 2 + 1)) / 2)
    assert scores["oof_auc"] == pytest.approx(roc_auc_score(y, p)) and scores["oof_auc"] == pytest.approx(12 / 16)
    assert [f["slices"] for f in scores["folds"]] == [4, 4] and scores["groups"] == 4


def test_the_paired_bootstrap_equals_a_group_bootstrap_written_here():
    """Same resampling definition (whole groups drawn with replacement by ``default_rng(0).integers``, groups in
    sorted order, percentile interval), metric counted here: the interval must match to rounding."""
    rng = np.random.default_rng(5)
    groups = np.repeat([f"g{i:02d}" for i in range(20)], 4)
    labels = np.tile(["COV", "COV", "NonCOV", "NonCOV"], 20)
    y = (labels == "COV").astype(int)
    base_p = np.clip(y * 0.35 + rng.uniform(0.1, 0.6, len(y)), 0, 1)
    other_p = np.clip(y * 0.5 + rng.uniform(0.05, 0.5, len(y)), 0, 1)
    frame = pd.DataFrame({"path": [f"{i:03d}.png" for i in range(len(y))], "group": groups, "label": labels})
    diff = versus_base(frame.assign(prob_COV=base_p), frame.assign(prob_COV=other_p), n_bootstrap=60)["macro_f1"]

    def macro_f1(rows, p):  # the mean of the two classes' F1, counted here
        truth, guess = y[rows], (p[rows] > 0.5).astype(int)
        f1 = [2 * np.sum((truth == c) & (guess == c)) / (np.sum(truth == c) + np.sum(guess == c)) for c in (0, 1)]
        return float(np.mean(f1))

    everything = np.arange(len(y))
    assert diff["value"] == pytest.approx(macro_f1(everything, other_p) - macro_f1(everything, base_p))
    assert diff["value"] == pytest.approx(f1_score(y, other_p > 0.5, average="macro") - f1_score(y, base_p > 0.5, average="macro"))
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    draws = np.random.default_rng(0)
    replicates = []
    for _ in range(60):
        rows = np.concatenate([members[g] for g in draws.integers(0, len(members), size=len(members))])
        replicates.append(macro_f1(rows, other_p) - macro_f1(rows, base_p))
    low, high = np.quantile(replicates, [0.025, 0.975])
    assert (diff["low"], diff["high"]) == (pytest.approx(low), pytest.approx(high))
    assert diff["share_b_better"] == pytest.approx(np.mean(np.asarray(replicates) > 0))
    assert low < diff["value"] < high


def test_the_rule_on_a_tiny_table_by_hand():
    scores = {"base": {"oof_macro_f1": 0.800, "oof_auc": 0.90}, "a": {"oof_macro_f1": 0.809, "oof_auc": 0.99},
              "b": {"oof_macro_f1": 0.805, "oof_auc": 0.80}}
    kept = choose(scores, "base", min_gain=0.01, overrides={"base": [], "a": ["x=1"], "b": ["y=2"]})
    assert (kept["best_by_oof_macro_f1"], kept["chosen"], kept["overrides"]) == ("a", "base", [])
    assert kept["gain_over_base"] == pytest.approx(0.009)
    taken = choose(scores, "base", min_gain=0.005, overrides={"base": [], "a": ["x=1"], "b": ["y=2"]})
    assert (taken["chosen"], taken["overrides"]) == ("a", ["x=1"])


def test_a_seed_ensemble_averages_the_probabilities_and_the_patient_table_their_means(tmp_path):
    paths = ["p1.png", "p2.png", "p3.png", "p4.png"]
    first = pd.DataFrame({"path": paths, "group": ["A", "A", "B", "C"], "label": ["COV", "COV", "NonCOV", "NonCOV"],
                          "prob_COV": [0.9, 0.5, 0.4, 0.2]})
    second = first.assign(prob_COV=[0.7, 0.3, 0.6, 0.0]).iloc[::-1]  # other row order: matched by path
    for name, frame in (("s0", first), ("s1", second)):
        (tmp_path / name).mkdir()
        frame.to_csv(tmp_path / name / "predictions_test.csv", index=False)
    averaged = ensemble([tmp_path / "s0", tmp_path / "s1"], "test").set_index("path")["prob_COV"]
    assert averaged.loc[paths].tolist() == pytest.approx([0.8, 0.4, 0.5, 0.1])
    table = patient_table(averaged.reset_index().merge(first.drop(columns="prob_COV"), on="path"))
    assert table["group"].tolist() == ["A", "B", "C"] and table["score"].tolist() == pytest.approx([0.6, 0.5, 0.1])
    assert table["slices"].tolist() == [2, 1, 1]


def test_the_external_summary_ranks_patients_and_scores_their_means():
    predictions = pd.DataFrame({
        "group": ["P1", "P1", "P2", "P2", "N1", "N1", "N2", "N2"],
        "label": ["COV"] * 4 + ["NonCOV"] * 4,
        "prob_COV": [0.9, 0.7, 0.6, 0.4, 0.45, 0.35, 0.2, 0.1],
    })
    summary = external_summary(predictions, n_bootstrap=0, class_names=["NonCOV", "COV"])
    assert summary["patient_mean_auc"] == 1.0 and summary["covid_patients_ranked_first"]
    y = (predictions["label"] == "COV").astype(int)
    assert summary["slice_auc"] == pytest.approx(roc_auc_score(y, predictions["prob_COV"]))
    assert summary["patients"]["P2"]["mean_prob_covid"] == pytest.approx(0.5)
    swapped = predictions.assign(prob_COV=[0.9, 0.7, 0.3, 0.3, 0.45, 0.35, 0.2, 0.1])  # P2's mean 0.3 < N1's 0.4
    assert not external_summary(swapped, 0, ["NonCOV", "COV"])["covid_patients_ranked_first"]
    assert external_summary(swapped, 0, ["NonCOV", "COV"])["patient_mean_auc"] == pytest.approx(3 / 4)


def test_covidct_cv_is_a_subcommand_that_refuses_contradictory_options(capsys):
    from covidct.cli import build_parser

    args = build_parser().parse_args(["cv", "--round", "capacity", "--folds", "3"])
    assert args.command == "cv" and args.folds == 3
    with pytest.raises(SystemExit) as stopped:
        args.func(build_parser().parse_args(["cv", "--train-only", "--score-only"]))
    assert stopped.value.code == 2 and "exclude each other" in capsys.readouterr().err
    filled = parse_args(["--round", "capacity"])
    assert filled.candidates == ["aug-e24", "aug-e24-wide", "aug-e24-s192", "aug-e24-tta"]
