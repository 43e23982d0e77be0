"""Patient-level external check: a 2D sars-cov-2-ct model on every covid-ct-md-sample volume.

    python benchmarks/bench_patients.py --run runs/bench-quality/small_cnn-grouped     # ~2 CPU min

Each of the 6 patients (2 COVID-19, 2 CAP, 2 Normal) is scored by ``predict_volume``: the run's own
preprocessing on every lung-containing slice (classical lung mask >= 2% of the slice), then mean / max /
top-5 mean / fraction of slices above 0.5 of P(COVID). covid-ct-md is never used for training or
selection, so every patient is held out (leave-one-patient-out holds trivially); one row per patient.
Writes a markdown table and --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="2D run folder trained on sars-cov-2-ct (classes COV / NonCOV)")
    parser.add_argument("--root", default="../shared/data/covid-ct-md-sample")
    parser.add_argument("--positive", default="COV")
    parser.add_argument("--out", default="benchmarks/results/bench_patients.json")
    args = parser.parse_args(argv)

    from covidct.evaluate.volume_predict import predict_volume
    from covidct.train.run import load_run

    loaded = load_run(args.run)
    rows = []
    for folder, label in (("COVID-19", "COVID-19"), ("CAP", "CAP"), ("Normal", "Normal")):
        for path in sorted((Path(args.root) / folder).glob("*.nii*")):
            prediction = predict_volume(loaded, path)
            c = prediction.class_names.index(args.positive)
            rows.append({"patient": path.name.split(".")[0], "class": label, "slices_scored": len(prediction.slice_indices),
                         **{f"p_{m}": float(v[c]) for m, v in prediction.scores.items()}})
    print(f"| patient | true class | lung slices scored | P({args.positive}) mean | max | top-5 mean | fraction > 0.5 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['patient']} | {r['class']} | {r['slices_scored']} | {r['p_mean']:.3f} | {r['p_max']:.3f} | "
              f"{r['p_topk']:.3f} | {r['p_fraction']:.3f} |")
    covid = [r["p_mean"] for r in rows if r["class"] == "COVID-19"]
    others = [r["p_mean"] for r in rows if r["class"] != "COVID-19"]
    ranked = min(covid) > max(others)
    pairs = sum(a > b for a in covid for b in others) + 0.5 * sum(a == b for a in covid for b in others)
    print(f"\nboth COVID-19 patients above all others (mean): {'yes' if ranked else 'no'}; "
          f"patient AUC (mean) {pairs / (len(covid) * len(others)):.3f} over {len(covid) * len(others)} pairs")
    out = {"command": "python benchmarks/bench_patients.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "run": str(args.run), "rows": rows, "covid_ranked_first": ranked,
           "patient_auc_mean": pairs / (len(covid) * len(others))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return rows


if __name__ == "__main__":
    main()
