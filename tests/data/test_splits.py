"""Splits: groups never cross splits, classes are stratified, official splits are kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covidct.data.manifest import make_manifest
from covidct.data.splits import assign_splits, check_disjoint, grouped_kfold
from covidct.errors import CovidctError


def synthetic(n_groups: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        label = ["COV", "Normal", "OtherPneumonia"][g % 3] if g % 5 else "COV"
        for k in range(int(rng.integers(1, 12))):
            rows.append({"path": f"/x/{g}_{k}.png", "label": label, "group": f"p{g}", "split": "", "source": "t"})
    return make_manifest(rows)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_group_crosses_splits_and_fractions_hold(seed):
    manifest = synthetic(seed=seed)
    out = assign_splits(manifest, (0.7, 0.15, 0.15), seed=seed)
    assert (out.groupby("group")["split"].nunique() == 1).all()
    check_disjoint(out)
    for label, rows in out.groupby("label"):
        shares = rows["split"].value_counts(normalize=True)
        assert set(shares.index) == {"train", "val", "test"}, label
        # Greedy dealing of whole groups lands within one group's size (< 12 images) of each target.
        for split, target in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
            assert abs(shares[split] * len(rows) - target * len(rows)) <= 12
    assert out.attrs["split_source"].startswith("stratified by group")


def test_same_seed_same_split_and_other_seed_differs():
    manifest = synthetic()
    a = assign_splits(manifest, seed=5)["split"].tolist()
    assert a == assign_splits(manifest, seed=5)["split"].tolist()
    assert a != assign_splits(manifest, seed=6)["split"].tolist()


def test_official_split_kept_and_val_carved_from_train():
    manifest = synthetic()
    official = manifest.assign(split=np.where(manifest["group"].str[1:].astype(int) < 45, "train", "test"))
    out = assign_splits(official)
    assert out.attrs["split_source"].startswith("official train/test")
    assert (out.loc[official["split"] == "test", "split"] == "test").all()
    assert set(out.loc[official["split"] == "train", "split"]) == {"train", "val"}
    assert (out.groupby("group")["split"].nunique() == 1).all()
    full = official.assign(split=np.where(official["split"] == "test", "test", "val"))
    full.loc[full["group"].isin(["p1", "p2", "p3"]), "split"] = "train"
    assert assign_splits(full)["split"].tolist() == full["split"].tolist()


def test_official_split_with_crossing_group_is_an_error():
    manifest = synthetic().assign(split="train")
    manifest.loc[manifest.index[0], "split"] = "test"
    with pytest.raises(CovidctError, match="appear in several splits"):
        assign_splits(manifest)


def test_grouped_kfold_is_grouped_and_covers_everything():
    manifest = synthetic()
    folds = grouped_kfold(manifest, k=5, seed=0)
    assert len(folds) == 5
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(len(manifest)))
    groups = manifest["group"].to_numpy()
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    with pytest.raises(CovidctError, match="fewer than k=50"):
        grouped_kfold(manifest, k=50)


def test_bad_fractions():
    with pytest.raises(CovidctError, match="sum"):
        assign_splits(synthetic(), fractions=(0.5, 0.1, 0.1))
