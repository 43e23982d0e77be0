"""Grouped folds and hold-outs without classes (``covidct.data.splits``), checked by hand."""

import numpy as np
import pytest

from covidct.data.splits import group_folds, holdout_groups
from covidct.errors import CovidctError

GROUPS = np.array(["a", "a", "b", "c", "c", "c", "d", "e"])


def test_group_folds_keep_groups_whole_and_cover_every_row_once():
    folds = group_folds(GROUPS, 3, seed=0)
    assert len(folds) == 3
    assert sorted(np.concatenate(folds).tolist()) == list(range(8))
    owner = {}
    for k, test in enumerate(folds):
        for group in set(GROUPS[test]):
            assert owner.setdefault(group, k) == k  # a group never in two folds
    # GroupKFold deals the largest groups first into the emptiest fold: c (3 rows) then a (2) fill two folds.
    sizes = sorted(len(test) for test in folds)
    assert sizes == [2, 3, 3]
    assert group_folds(GROUPS, 3, seed=0)[0].tolist() == folds[0].tolist()  # a function of the seed


def test_group_folds_refuse_k_outside_two_to_the_number_of_groups():
    with pytest.raises(CovidctError, match=r"segmentation.folds must lie in 2..5 \(number of groups\), got 6"):
        group_folds(GROUPS, 6, setting="segmentation.folds")
    with pytest.raises(CovidctError, match="got 1"):
        group_folds(GROUPS, 1)


def test_holdout_groups_hold_out_a_share_of_whole_groups():
    kept, held = holdout_groups(GROUPS, 0.4, seed=1)
    assert sorted(kept.tolist() + held.tolist()) == list(range(8))
    assert not set(GROUPS[kept]) & set(GROUPS[held])
    assert len(set(GROUPS[held])) == 2  # round(0.4 * 5 groups)
    kept_one, held_one = holdout_groups(np.array(["x", "x"]), 0.5, seed=0)
    assert kept_one.tolist() == [0, 1] and held_one.tolist() == []  # one group: nothing to hold out
