"""Does the infection segmenter's lesion burden find COVID-CT-MD's infected slices? (external check of the segmenter)

COVID-CT-MD ships slice-level infection labels for four patients (P001, P002, cap001, cap002). Their order along
the volume is uncertain (the sample's PROVENANCE.md: "descending" favoured, not conclusive), so both orders are
scored. Scores: per-slice lesion ``burden`` and the classical ``dense_share`` from a ``covidct evidence`` features
table (nothing fitted to these labels), ROC AUC of infected vs not (``covidct.evaluate.metrics.binary_auc``),
95% bootstrap CI over patients, on all slices and on lung-containing slices (lung mask >= 5% of the slice).

    python benchmarks/bench_evidence_slice_labels.py --evidence runs/evidence --out results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from covidct.data.datasets import resolve_root
from covidct.evaluate.bootstrap import bootstrap_ci
from covidct.evaluate.metrics import binary_auc
from covidct.runs import jsonable, write_json_atomic

MIN_LUNG_FRACTION = 0.05


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--evidence", required=True, help="covidct evidence output folder with features_covid-ct-md.csv")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    features = pd.read_csv(Path(args.evidence) / "features_covid-ct-md.csv")
    labels = pd.read_csv(resolve_root("covid-ct-md", None) / "labels" / "slice_infection_labels.csv")
    result = {"benchmark": "bench_evidence_slice_labels", "protocol": __doc__}
    for order in ("ascending", "descending"):
        merged = features.merge(labels, left_on=["group", "slice_index"], right_on=["patient", f"k_if_label_order_{order}"])
        block = {}
        for name, rows in (("all_slices", merged), ("lung_slices", merged[merged["lung_fraction"] >= MIN_LUNG_FRACTION])):
            block[name] = {"n_slices": len(rows), "n_infected": int(rows["infection"].sum()),
                           "patients": sorted(rows["group"].unique())}
            for score in ("burden", "dense_share"):
                block[name][score] = bootstrap_ci(binary_auc, rows["infection"].to_numpy(), rows[score].fillna(0.0).to_numpy(),
                                                  groups=rows["group"].to_numpy())
            block[name]["per_patient_burden_auc"] = {
                patient: binary_auc(part["infection"].to_numpy(), part["burden"].to_numpy())
                for patient, part in rows.groupby("group")}
        result[f"label_order_{order}"] = block
    write_json_atomic(args.out, jsonable(result))
    print(json.dumps(jsonable({k: v for k, v in result.items() if k != "protocol"}), indent=1)[:5000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
