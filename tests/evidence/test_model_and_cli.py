"""The small evidence model, the patient ranking and the CLI's refusal without a fitted model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covidct.cli import main
from covidct.evidence.features import FEATURES
from covidct.evidence.model import choose, fit_choice, grouped_cv, predict
from covidct.evidence.run import _ranking_summary, patient_table


def table(n_groups: int = 20, per_group: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        label = "COV" if g % 2 == 0 else "NonCOV"
        for s in range(per_group):
            row = {name: rng.uniform(0.0, 0.05) for name in FEATURES}
            row["burden"] = rng.uniform(0.1, 0.3) if label == "COV" else rng.uniform(0.0, 0.05)
            row.update(path=f"g{g}/{s}.png", label=label, group=f"g{g}", split="train", lung_fraction=0.3)
            rows.append(row)
    return pd.DataFrame(rows)


def test_grouped_cv_choice_separates_a_burden_signal():
    data = table()
    cv = grouped_cv(data, "COV", k=4)
    assert len(cv) == 10 and cv["cv_auc_mean"].max() == pytest.approx(1.0)
    choice = choose(cv)
    assert choice["features"] == "burden" and choice["family"] == "logistic"  # ties: fewest features, logistic
    model = fit_choice(data, choice, "COV")
    probs = predict(model, data, choice)
    assert probs[data["label"] == "COV"].min() > probs[data["label"] == "NonCOV"].max()


def test_patient_table_ranks_by_mean_probability_and_burden():
    rows = []
    for group, label, prob, burden in (("a", "COV", 0.9, 0.1), ("b", "COV", 0.7, 0.3), ("c", "Normal", 0.8, 0.05)):
        for _ in range(3):
            row = dict.fromkeys(FEATURES, 0.0)
            row.update(group=group, label=label, probability=prob, burden=burden, lung_fraction=0.2)
            rows.append(row)
    patients = patient_table(pd.DataFrame(rows))
    assert list(patients["group"]) == ["a", "c", "b"]
    assert list(patients["rank_by_burden"]) == [2, 3, 1]
    summary = _ranking_summary(patients)
    assert summary == {"all_COV_above_others_by_mean_probability": False, "all_COV_above_others_by_burden": True}


def test_cli_scoring_without_a_fitted_model_exits_2(tmp_path, capsys):
    code = main(["evidence", "--segmenter", str(tmp_path / "seg"), "--dataset", "covid-ct-md", "--out", str(tmp_path)])
    assert code == 2
    assert "No fitted evidence model" in capsys.readouterr().err


def test_only_the_cli_imports_the_evidence_package():
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "covidct"
    importers = sorted(path.relative_to(src).as_posix() for path in src.rglob("*.py")
                       if "evidence" not in path.relative_to(src).parts and "covidct.evidence" in path.read_text())
    assert importers == ["cli.py"]
