"""Source probe: can a classifier's penultimate features tell which dataset (hospital) a slice came from?

A linear probe (``covidct.features.make_classifier("lr")``: standardisation + L2 logistic regression, C=1)
predicts the **source** of each slice from frozen features; grouped 5-fold CV (groups = patients or their
proxy, so no patient is in a probe's training and test fold), ROC AUC of each source against the others
and of sars-cov-2-ct against covid-ct-md (``covidct.evaluate.metrics.binary_auc`` on the out-of-fold
probabilities, 95% bootstrap CI over groups). An AUC near 1 means the features carry the source; a model
built on them can score a dataset by recognising it. Feature sets:

* ``cnn``: the input of the ``logits`` layer of a trained classifier run (default: a small_cnn on the
  ``lungs-robust`` stage trained on sars-cov-2-ct), on slices preprocessed by the run's own stage;
* ``evidence``: the lesion-evidence features of ``covidct evidence`` (if its folder is given; the model's
  candidate features, not the lung fraction, which reflects the field of view), sars-cov-2-ct vs covid-ct-md.

Slices: sars-cov-2-ct (``--per-source`` slices spread over the files), covid-ct-md (lung-containing slices,
lung mask >= 5% of the slice, every ``--step``-th), medseg (all 100).

    python benchmarks/bench_source_probe.py --run runs/X --evidence runs/EVIDENCE --out results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import covidct.preprocess  # noqa: F401  (registers the classical lung mask that MedSeg's loader needs)
from covidct.data.datasets import load_dataset
from covidct.runs import jsonable, read_run_info, write_json_atomic

SOURCES = ("sars-cov-2-ct", "covid-ct-md", "medseg")
MIN_LUNG_FRACTION = 0.05


def probe(features: np.ndarray, sources: np.ndarray, groups: np.ndarray, seed: int = 0) -> dict:
    """Grouped-CV linear source probe: out-of-fold probabilities, per-source AUCs with group-bootstrap CIs."""
    from sklearn.model_selection import StratifiedGroupKFold

    from covidct.evaluate.bootstrap import bootstrap_ci
    from covidct.evaluate.metrics import binary_auc
    from covidct.features import make_classifier

    names = sorted(set(sources))
    out_of_fold = np.zeros((len(sources), len(names)))
    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    for train, test in splitter.split(features, sources, groups):
        model = make_classifier("lr", seed).fit(features[train], sources[train])
        probabilities = model.predict_proba(features[test])
        for column, name in enumerate(model.classes_):
            out_of_fold[test, names.index(name)] = probabilities[:, column]
    result = {"n": int(len(sources)), "counts": {n: int((sources == n).sum()) for n in names}}
    for column, name in enumerate(names):
        result[f"{name}_vs_rest"] = bootstrap_ci(binary_auc, sources == name, out_of_fold[:, column], groups=groups)
    if {"sars-cov-2-ct", "covid-ct-md"} <= set(names):
        pair = np.isin(sources, ["sars-cov-2-ct", "covid-ct-md"])
        score = out_of_fold[pair, names.index("covid-ct-md")]
        result["covid-ct-md_vs_sars-cov-2-ct"] = bootstrap_ci(binary_auc, sources[pair] == "covid-ct-md", score,
                                                                groups=groups[pair])
    return result


def slices(per_source: int, step: int) -> pd.DataFrame:
    frames = []
    sars = load_dataset("sars-cov-2-ct")
    frames.append(sars.iloc[np.linspace(0, len(sars) - 1, per_source).astype(int)].assign(source="sars-cov-2-ct"))
    ct = load_dataset("covid-ct-md")
    frames.append(ct[ct["slice_index"] % step == 0].assign(source="covid-ct-md"))
    frames.append(load_dataset("medseg").assign(source="medseg"))
    table = pd.concat(frames, ignore_index=True)
    table["group"] = table["source"] + "/" + table["group"].astype(str)
    return table


def cnn_features(run: Path, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and lung fractions of the table's slices, preprocessed by the run's stage."""
    from covidct.data.io import CTImage, read_image
    from covidct.features import extract_features
    from covidct.models.inference import load_model_file
    from covidct.preprocess import get_stage

    info = read_run_info(run)
    stage, size = get_stage(info["stage"]), int(info["size"])
    images, lung_fraction, volume, volume_path = [], [], None, None
    for _, row in table.iterrows():
        index = row.get("slice_index", -1)
        if pd.notna(index) and int(index) >= 0:
            if row["path"] != volume_path:
                volume, volume_path = read_image(row["path"]), row["path"]
            image = CTImage(volume.array[int(index)], volume.unit, row["path"])
        else:
            image = read_image(row["path"])
        output = stage(image, size)[0]
        images.append(output.image)
        lung_fraction.append(float(output.mask.mean()))
    model = load_model_file(run / "model.keras", "Run checkpoint")
    array = np.stack(images)
    names = tuple(info.get("input_names", ["image"]))
    return extract_features(model, array, np.arange(len(array)), input_names=names), np.asarray(lung_fraction)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="trained classifier run folder")
    parser.add_argument("--evidence", default=None, help="covidct evidence output folder (features_*.csv)")
    parser.add_argument("--per-source", type=int, default=300)
    parser.add_argument("--step", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = time.time()
    table = slices(args.per_source, args.step)
    features, _ = cnn_features(Path(args.run), table)
    # covid-ct-md: lung-containing slices only (classical lung mask on the slice, as everywhere else).
    from covidct.data.io import read_image
    from covidct.preprocess.lungs import lung_mask

    keep = np.ones(len(table), bool)
    volumes = {}
    for position, (_, row) in enumerate(table.iterrows()):
        if row["source"] == "covid-ct-md":
            volume = volumes.setdefault(row["path"], read_image(row["path"]))
            keep[position] = (lung_mask(volume.array[int(row["slice_index"])], unit="display", warn=False) > 0).mean() \
                >= MIN_LUNG_FRACTION
    table, features = table[keep].reset_index(drop=True), features[keep]
    result = {"benchmark": "bench_source_probe", "protocol": __doc__, "run": str(Path(args.run).name),
              "run_stage": read_run_info(Path(args.run)).get("stage"),
              "cnn": probe(features, table["source"].to_numpy(), table["group"].to_numpy())}
    result["cnn"]["feature_dim"] = int(features.shape[1])
    if args.evidence:
        from covidct.evidence.model import FEATURE_SETS

        names = sorted(set().union(*FEATURE_SETS.values()))  # the model's candidate features (no lung_fraction)

        parts = []
        for source in ("sars-cov-2-ct", "covid-ct-md"):
            frame = pd.read_csv(Path(args.evidence) / f"features_{source}.csv")
            if source == "covid-ct-md":
                frame = frame[frame["lung_fraction"] >= MIN_LUNG_FRACTION]
            parts.append(frame.assign(source=source, group=source + "/" + frame["group"].astype(str)))
        evidence = pd.concat(parts, ignore_index=True)
        values = evidence[names].fillna(evidence[names].median()).to_numpy(dtype=float)
        result["evidence"] = probe(values, evidence["source"].to_numpy(), evidence["group"].to_numpy())
    result["seconds"] = round(time.time() - start, 1)
    write_json_atomic(args.out, jsonable(result))
    print(json.dumps(jsonable({k: v for k, v in result.items() if k != "protocol"}), indent=1)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
