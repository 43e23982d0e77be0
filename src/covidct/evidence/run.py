"""``covidct evidence``: lesion features of a dataset, a small model fitted on one dataset's training split, scores.

Two steps, one output folder (a run folder: marker, atomic writes):

1. ``fit_evidence`` (``--fit``): features of the training dataset (default sars-cov-2-ct) with the split of
   the shipped recipe (``assign_splits``, fractions 0.7/0.15/0.15, seed 0, by group); candidates chosen by
   grouped CV over the train + val rows; the choice refitted on them; the test split scored. Writes
   ``choice.json``, ``model.joblib``, ``cv_<dataset>.csv``.
2. ``apply_evidence``: features of any dataset, scored with the saved model, never refitted. For volumes
   (COVID-CT-MD) only lung-containing slices (lung mask >= ``MIN_LUNG_FRACTION`` of the slice) are scored.

Both write ``features_<dataset>.csv`` (reused when present and made with the same segmenter),
``scores_<dataset>.csv``, ``patients_<dataset>.csv`` and ``metrics_<dataset>.json``: slice ROC AUC of COV vs
the rest with a 95% bootstrap interval over groups (patients or their proxy), next to two scores that are
fitted to nothing (segmenter ``burden`` and the classical ``dense_share``), and the patient ranking by mean
slice probability and by lesion burden.

The folder is a run of the project's one evaluation path: ``covidct evaluate --run OUT`` reports the training
dataset's test scores, and ``covidct evaluate --run OUT --dataset D --label-map ...`` a scored dataset, with the
metrics, intervals, calibration, figures and files of any run, read from ``scores_<dataset>.csv``
(``covidct.evaluate.scores``; the segmenter is not run again). ``run.json`` records ``fitted_on``, the two
``class_names`` and the ``positive_class`` for it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.data.datasets import choose_data, load_dataset
from covidct.data.splits import assign_splits
from covidct.errors import CovidctError
from covidct.evaluate.bootstrap import bootstrap_ci
from covidct.evaluate.metrics import binary_auc
from covidct.evidence.extract import dataset_features, load_segmenters
from covidct.evidence.features import patient_features
from covidct.evidence.model import choose, describe, fit_choice, grouped_cv, predict
from covidct.runs import (
    atomic_path,
    jsonable,
    mark_run_dir,
    read_run_info,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

POSITIVE = "COV"
#: The other class of a run fitted on more than two labels (the model scores ``POSITIVE`` against the rest).
NEGATIVE = "NonCOV"
MIN_LUNG_FRACTION = 0.05
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
SPLIT_SEED = 0
MODEL_FILE, CHOICE_FILE = "model.joblib", "choice.json"


def _key(table: pd.DataFrame) -> pd.Series:
    index = table["slice_index"].astype(int).astype(str) if "slice_index" in table else ""
    return table["path"].astype(str) + "#" + index


def features_for(segmenter, dataset: str, out: Path, manifest: pd.DataFrame, recompute: bool = False) -> pd.DataFrame:
    """``features_<dataset>.csv`` of ``out`` when it matches the manifest and segmenter, else computed and written."""
    path = out / f"features_{dataset}.csv"
    info = read_run_info(out).get("features", {}).get(dataset, {})
    if path.is_file() and not recompute and info.get("segmenter") == str(Path(segmenter).resolve()):
        table = pd.read_csv(path)
        if set(_key(table)) == set(_key(manifest)):
            log.info("Reusing %s.", path)
            split = dict(zip(_key(manifest), manifest["split"]))
            return table.assign(split=_key(table).map(split).to_numpy())
    table = dataset_features(load_segmenters(segmenter), manifest)
    write_text_atomic(path, table.to_csv(index=False))
    _update_info(out, {"features": {dataset: {"segmenter": str(Path(segmenter).resolve()), "slices": len(table)}}})
    return table


def _update_info(out: Path, update: dict) -> None:

    info = read_run_info(out)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(info.get(key), dict):
            info[key] = {**info[key], **value}
        else:
            info[key] = value
    info.setdefault("task", "evidence")
    write_json_atomic(out / "run.json", info)


def auc_with_ci(truth, scores, groups, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Slice ROC AUC with a percentile bootstrap CI over groups (``covidct.evaluate``)."""
    return bootstrap_ci(binary_auc, np.asarray(truth), np.asarray(scores, dtype=float), groups=np.asarray(groups),
                        n_bootstrap=n_bootstrap, seed=seed)


def patient_table(scored: pd.DataFrame) -> pd.DataFrame:
    """Per group: label, slices, mean slice probability, lesion burden (area-weighted), mean dense share; ranked."""
    rows = []
    for group, part in scored.groupby("group"):
        summary = patient_features(part)
        rows.append({"group": group, "label": part["label"].iloc[0], "n_slices": len(part),
                     "mean_probability": float(part["probability"].mean()), "burden": summary["burden"],
                     "mean_dense_share": summary["mean_dense_share"],
                     "mean_burden_min_side": summary["mean_burden_min_side"],
                     "mean_peripheral_share": summary["mean_peripheral_share"]})
    table = pd.DataFrame(rows).sort_values("mean_probability", ascending=False).reset_index(drop=True)
    table["rank_by_probability"] = np.arange(1, len(table) + 1)
    table["rank_by_burden"] = table["burden"].rank(ascending=False, method="min").astype(int)
    return table


def _score_block(scored: pd.DataFrame, n_bootstrap: int) -> dict:
    truth = (scored["label"] == POSITIVE).to_numpy()
    groups = scored["group"].to_numpy()
    block = {"n_slices": int(len(scored)), "n_groups": int(scored["group"].nunique()),
             "n_positive_slices": int(truth.sum())}
    for name, column in (("model", "probability"), ("burden_unfitted", "burden"), ("dense_share_unfitted", "dense_share")):
        block[name] = auc_with_ci(truth, scored[column].fillna(0.0), groups, n_bootstrap)
    return block


def _ranking_summary(patients: pd.DataFrame) -> dict:
    positive = patients["label"] == POSITIVE
    out = {}
    for column in ("mean_probability", "burden"):
        lowest_positive = patients.loc[positive, column].min() if positive.any() else np.nan
        highest_other = patients.loc[~positive, column].max() if (~positive).any() else np.nan
        out[f"all_{POSITIVE}_above_others_by_{column}"] = bool(lowest_positive > highest_other)
    return out


def _load_model(out: Path):
    import json

    import joblib

    model_path, choice_path = out / MODEL_FILE, out / CHOICE_FILE
    if not model_path.is_file() or not choice_path.is_file():
        raise CovidctError(
            f"No fitted evidence model in {out} ({MODEL_FILE}, {CHOICE_FILE}): run "
            f"`covidct evidence --segmenter RUN --dataset sars-cov-2-ct --fit --out {out}` first."
        )
    return joblib.load(model_path), json.loads(choice_path.read_text())


def fit_evidence(segmenter, out, dataset: str = "sars-cov-2-ct", n_bootstrap: int = 1000, folds: int = 5,
                 recompute: bool = False, manifest: pd.DataFrame | None = None) -> dict:
    """Step 1 (see the module docstring). Returns the metrics dict written to ``metrics_<dataset>.json``.

    ``manifest``: the dataset's rows to use instead of ``load_dataset(dataset)`` (notebooks: a small phantom set).
    """
    import joblib

    out = mark_run_dir(out)
    manifest = load_dataset(dataset) if manifest is None else manifest
    manifest = assign_splits(manifest, SPLIT_FRACTIONS, seed=SPLIT_SEED)
    table = features_for(segmenter, dataset, out, manifest, recompute)
    training = table[table["split"].isin(["train", "val"])].reset_index(drop=True)
    test = table[table["split"] == "test"].reset_index(drop=True)
    if training.empty or test.empty:
        raise CovidctError(f"{dataset}: the split left {len(training)} training and {len(test)} test rows.")
    cv = grouped_cv(training, POSITIVE, k=folds, seed=SPLIT_SEED)
    write_text_atomic(out / f"cv_{dataset}.csv", cv.to_csv(index=False))
    choice = choose(cv)
    model = fit_choice(training, choice, POSITIVE)
    choice.update(training_dataset=dataset, training_rows=len(training), positive=POSITIVE,
                  split=manifest.attrs.get("split_source", ""), segmenter=str(Path(segmenter).resolve()),
                  parameters=describe(model, choice))
    with atomic_path(out / MODEL_FILE) as tmp:
        joblib.dump(model, tmp)
    write_json_atomic(out / CHOICE_FILE, jsonable(choice))
    scored = test.assign(probability=predict(model, test, choice))
    metrics = {"dataset": dataset, "split": "test", "choice": choice, "test": _score_block(scored, n_bootstrap),
               "all_slices_unfitted": {k: v for k, v in _score_block(table.assign(probability=0.0), n_bootstrap).items()
                                       if k != "model"}}
    write_text_atomic(out / f"scores_{dataset}.csv", scored.to_csv(index=False))
    write_json_atomic(out / f"metrics_{dataset}.json", jsonable(metrics))
    others = sorted(set(table["label"].astype(str)) - {POSITIVE})
    negative = others[0] if len(others) == 1 else NEGATIVE  # the model scores COV against the rest
    # what `covidct evaluate --run OUT` reads (covidct.evaluate.scores): the classes and the positive one
    _update_info(out, {"status": "finished", "fitted_on": dataset, "dataset": dataset,
                       "model": f"evidence {choice['features']} / {choice['family']}",
                       "class_names": sorted([POSITIVE, negative]), "positive_class": POSITIVE,
                       "segmenter": str(Path(segmenter).resolve())})
    return metrics


def apply_evidence(segmenter, out, dataset: str, n_bootstrap: int = 1000, recompute: bool = False,
                   manifest: pd.DataFrame | None = None) -> dict:
    """Step 2 (see the module docstring). Returns the metrics dict written to ``metrics_<dataset>.json``.

    ``manifest``: the dataset's rows to use instead of ``load_dataset(dataset)`` (notebooks: a few phantom volumes).
    """
    out = Path(out)
    model, choice = _load_model(out)
    out = mark_run_dir(out)
    manifest = load_dataset(dataset) if manifest is None else manifest
    table = features_for(segmenter, dataset, out, manifest, recompute)
    lung_slices = table[table["lung_fraction"] >= MIN_LUNG_FRACTION].reset_index(drop=True)
    scored = lung_slices.assign(probability=predict(model, lung_slices, choice))
    patients = patient_table(scored)
    metrics = {"dataset": dataset, "choice": {k: choice[k] for k in ("features", "family", "training_dataset")},
               "slices": f"lung mask >= {MIN_LUNG_FRACTION:.0%} of the slice",
               "lung_slices": _score_block(scored, n_bootstrap), "ranking": _ranking_summary(patients),
               "patients": patients.to_dict(orient="records")}
    write_text_atomic(out / f"scores_{dataset}.csv", scored.to_csv(index=False))
    write_text_atomic(out / f"patients_{dataset}.csv", patients.to_csv(index=False))
    write_json_atomic(out / f"metrics_{dataset}.json", jsonable(metrics))
    return metrics


def build_evidence_run(segmenter, out, dataset: str, data_root=None, smoke: bool = False,
                       n_bootstrap: int = 1000) -> tuple[Path, str]:
    """An evidence run for a notebook, from a segmenter run: fitted, then applied to ``dataset``.

    Full mode with the data: fitted on sars-cov-2-ct's training rows and applied to the whole ``dataset`` (as the
    two ``covidct evidence`` commands; about half an hour on a 2-core CPU). ``smoke`` or without the data:
    fitted on 60 phantom slices (64 px) and applied to a few slices per patient of the real ``dataset`` (two
    from the middle of each volume) or, without it, to 6 phantom volumes of 12 slices: a test of the pipeline,
    not a result.

    Args:
        segmenter: the infection segmentation run.
        out: the evidence run folder to write.
        dataset: the dataset to score (its name as ``choose_data`` returned it; ``phantom`` for phantoms).
        data_root: the folder that holds the datasets (``choose_data``'s ``root_of_datasets``).
        smoke: tiny and fast.
        n_bootstrap: bootstrap replicates of ``covidct evidence``'s own intervals.

    Returns:
        (the run folder, the name of the dataset it scored: ``scores_<name>.csv``).
    """
    training = choose_data("sars-cov-2-ct", data_root)
    target = choose_data(dataset, data_root)
    if smoke or not training.is_real:
        fit_evidence(segmenter, out, "phantom", n_bootstrap=n_bootstrap, folds=3,
                     manifest=load_dataset("phantom", n=60, size=64))
    else:
        fit_evidence(segmenter, out, training.dataset, n_bootstrap=n_bootstrap,
                     manifest=load_dataset(training.dataset, root=training.root))
    if target.is_real:
        manifest = load_dataset(target.dataset, root=target.root)
        if smoke and "slice_index" in manifest:
            middle = manifest.groupby("group")["slice_index"].transform(lambda s: s.median())
            manifest = manifest[(manifest["slice_index"] - middle).abs() <= 1].groupby("group").head(2)
        name = target.dataset
    else:
        name, depth = "phantom-volumes", 12
        volumes = load_dataset(name, n=6, shape=(depth, 64, 64))  # one row per volume: one per slice here
        manifest = volumes.loc[volumes.index.repeat(depth)].assign(slice_index=np.tile(np.arange(depth), len(volumes)))
    apply_evidence(segmenter, out, name, n_bootstrap=n_bootstrap, manifest=manifest.reset_index(drop=True))
    return Path(out), name


__all__ = ["apply_evidence", "auc_with_ci", "build_evidence_run", "fit_evidence", "patient_table"]
