"""Patient-disjoint splits: keep official splits, otherwise stratified splits by group.

Every split is made over ``group`` (the patient or its proxy), never over images: slices of one
patient are correlated, and an image-level random split lets a model recognise patients instead of
disease. Groups are stratified by their class so that every split keeps the class balance.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from covidct.data.manifest import SPLITS, validate_manifest
from covidct.errors import CovidctError


def _group_labels(manifest: pd.DataFrame) -> pd.Series:
    """The class of each group (its most frequent label); warns when a group mixes labels."""
    labels = manifest.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    mixed = manifest.groupby("group")["label"].nunique()
    if (mixed > 1).any():
        warnings.warn(
            f"{int((mixed > 1).sum())} group(s) hold more than one label (e.g. {mixed[mixed > 1].index[0]!r}); "
            "they are stratified by their most frequent label.",
            stacklevel=3,
        )
    return labels


def _check_fractions(fractions) -> np.ndarray:
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise CovidctError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}.")
    return fractions


def split_groups(
    manifest: pd.DataFrame, fractions=(0.7, 0.15, 0.15), seed: int = 0, names=SPLITS
) -> dict[str, str]:
    """Assign every group to a split, stratified by class and balanced by image count.

    Within each class the groups are shuffled (``seed``) and dealt one by one to the split whose
    image count is furthest below its target fraction, so that splits hit their fractions in images
    while no group is ever divided.

    Args:
        manifest: rows with ``group`` and ``label``.
        fractions: target fractions of images per split (sum 1).
        seed: shuffling seed.
        names: split names, one per fraction.

    Returns:
        dict group -> split name.
    """
    fractions = _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    sizes = manifest.groupby("group").size()
    labels = _group_labels(manifest)
    assignment: dict[str, str] = {}
    for label in sorted(labels.unique()):
        groups = sorted(labels.index[labels == label])
        groups = [groups[k] for k in rng.permutation(len(groups))]
        total = float(sizes[groups].sum())
        counts = np.zeros(len(names))
        active = fractions > 0
        if len(groups) < active.sum():
            warnings.warn(
                f"class {label!r} has {len(groups)} group(s), fewer than the {int(active.sum())} splits: "
                "some splits will have no image of it.",
                stacklevel=2,
            )
        for group in groups:
            deficit = np.where(active, fractions * total - counts, -np.inf)
            # Fill empty splits first so that each split gets every class when there are enough groups.
            empty = active & (counts == 0)
            choice = int(np.argmax(np.where(empty, np.inf, deficit))) if empty.any() else int(np.argmax(deficit))
            assignment[group] = names[choice]
            counts[choice] += sizes[group]
    return assignment


def assign_splits(
    manifest: pd.DataFrame, fractions=(0.7, 0.15, 0.15), seed: int = 0, keep_official: bool = True
) -> pd.DataFrame:
    """Give every row a split, keeping an official split when the dataset has one.

    - All rows already split and ``keep_official``: kept as they are.
    - Official train/test without val (e.g. Kaggle lungs): val is carved out of train by group, with
      ``fractions[1] / (fractions[0] + fractions[1])`` of its images.
    - Otherwise: a stratified split by group (``split_groups``).

    Args:
        manifest: a Manifest.
        fractions: train/val/test fractions of images (sum 1).
        seed: random seed.
        keep_official: keep splits present in the manifest.

    Returns:
        A copy with ``split`` filled; ``attrs["split_source"]`` says how.

    Raises:
        CovidctError: when kept official splits put one group in several splits.
    """
    validate_manifest(manifest)
    out = manifest.copy()
    given = out["split"].astype(str)
    if keep_official and (given != "").all():
        check_disjoint(out)
        present = set(given)
        if "val" not in present and {"train", "test"} <= present:
            train = out[given == "train"]
            share = fractions[0] + fractions[1]
            inner = split_groups(train, (fractions[0] / share, fractions[1] / share, 0.0), seed)
            out.loc[given == "train", "split"] = train["group"].map(inner).to_numpy()
            out.attrs["split_source"] = f"official train/test; val carved from train by group (seed {seed})"
        else:
            out.attrs["split_source"] = "official"
        return out
    if keep_official and (given != "").any():
        warnings.warn(
            f"{int((given == '').sum())} row(s) have no official split; all rows are re-split by group.",
            stacklevel=2,
        )
    assignment = split_groups(out, fractions, seed)
    out["split"] = out["group"].map(assignment)
    fr = ", ".join(f"{f:g}" for f in fractions)
    out.attrs["split_source"] = f"stratified by group, fractions ({fr}), seed {seed}"
    return out


def check_disjoint(manifest: pd.DataFrame) -> None:
    """Raise ``CovidctError`` when any group appears in more than one split."""
    splits_per_group = manifest[manifest["split"] != ""].groupby("group")["split"].nunique()
    crossing = splits_per_group[splits_per_group > 1]
    if len(crossing):
        raise CovidctError(
            f"{len(crossing)} group(s) appear in several splits (e.g. {crossing.index[0]!r}); splits must be "
            "patient-disjoint. Re-split with assign_splits(..., keep_official=False)."
        )


def grouped_kfold(manifest: pd.DataFrame, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, stratified k-fold cross-validation indices (sklearn ``StratifiedGroupKFold``).

    Args:
        manifest: rows with ``group`` and ``label``.
        k: number of folds.
        seed: shuffling seed.

    Returns:
        k pairs ``(train_rows, test_rows)`` of positional row indices; no group is in both.

    Raises:
        CovidctError: when a class has fewer than ``k`` groups.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    validate_manifest(manifest)
    per_class = manifest.groupby("label")["group"].nunique()
    if per_class.min() < k:
        raise CovidctError(
            f"grouped_kfold: class {per_class.idxmin()!r} has {int(per_class.min())} group(s), fewer than k={k}; "
            "use a smaller k."
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    rows = np.arange(len(manifest))
    return list(splitter.split(rows, manifest["label"].to_numpy(), manifest["group"].to_numpy()))


def sample_groups(manifest: pd.DataFrame, groups_per_class: int, seed: int = 0) -> pd.DataFrame:
    """A smaller manifest with ``groups_per_class`` whole groups of each class (for smoke runs).

    Args:
        manifest: a Manifest.
        groups_per_class: groups kept per class (all when a class has fewer).
        seed: sampling seed.

    Returns:
        The rows of the chosen groups, in their original order.
    """
    rng = np.random.default_rng(seed)
    labels = _group_labels(manifest)
    keep = []
    for label in sorted(labels.unique()):
        groups = sorted(labels.index[labels == label])
        keep += [groups[k] for k in rng.permutation(len(groups))[:groups_per_class]]
    return manifest[manifest["group"].isin(keep)].reset_index(drop=True)


def holdout_groups(groups, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (kept, held out) so that no group is in both (``fraction`` of the groups held out).

    The held-out groups are drawn uniformly (not stratified: segmentation pairs have no class); at
    least one group is held out when there are two or more.

    Args:
        groups: the group of every row.
        fraction: share of the groups held out.
        seed: drawing seed.

    Returns:
        (kept row indices, held-out row indices), each ascending.
    """
    groups = np.asarray(groups)
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(fraction * len(unique)))) if len(unique) > 1 else 0
    val_groups = set(rng.choice(unique, size=n_val, replace=False).tolist()) if n_val else set()
    is_val = np.array([g in val_groups for g in groups], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def group_folds(groups, k: int, seed: int = 0, setting: str = "folds") -> list[np.ndarray]:
    """Test-row indices of ``k`` folds with disjoint groups (sklearn ``GroupKFold`` on shuffled groups).

    Unlike ``grouped_kfold`` this needs no class (segmentation pairs): the groups are shuffled with
    ``seed`` and dealt into ``k`` folds of about equal row counts.

    Args:
        groups: the group of every row.
        k: number of folds, 2..number of groups.
        seed: shuffling seed.
        setting: the setting ``k`` came from, named in the error.

    Returns:
        k arrays of test-row indices; every row is in exactly one, every group in one fold only.

    Raises:
        CovidctError: ``k`` outside 2..number of groups.
    """
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    unique = np.unique(groups)
    if k < 2 or k > len(unique):
        raise CovidctError(f"{setting} must lie in 2..{len(unique)} (number of groups), got {k}.")
    rng = np.random.default_rng(seed)
    shuffled = dict(zip(unique, rng.permutation(len(unique))))
    codes = np.array([shuffled[g] for g in groups])
    splitter = GroupKFold(n_splits=k)
    return [test for _, test in splitter.split(np.zeros(len(groups)), groups=codes)]
