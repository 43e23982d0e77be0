"""Mean grey level inside the lung mask per class and dataset, for each preprocessing stage (no training).

    python benchmarks/bench_brightness.py --data-root ../shared/data           # ~2 CPU min
    python benchmarks/bench_brightness.py --data-root ../shared/data --stages lungs lungs-hist --per-class 40

A class difference in mean lung brightness that has opposite signs in two hospitals is a shortcut that a
model trained on one of them will apply in reverse on the other. The table shows which stage removes it.
Slices: a random sample per class of sars-cov-2-ct, and of the lung-containing slices (lung mask >= 5% of
the slice, as in bench_generalization.py) of covid-ct-md. Output: a markdown table and --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def mean_lung_grey(manifest: pd.DataFrame, stage: str, size: int) -> np.ndarray:
    from covidct.data.io import read_image
    from covidct.preprocess.stages import get_stage

    values = []
    for path, slice_index in zip(manifest["path"], manifest["slice_index"]):
        index = None if pd.isna(slice_index) or int(slice_index) < 0 else int(slice_index)
        out = get_stage(stage)(read_image(path, slice_index=index), size)[0]
        mask = np.asarray(out.mask).astype(bool)
        values.append(out.image[..., 0][mask].astype(float).mean() if mask.any() else np.nan)
    return np.asarray(values)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--stages", nargs="+", default=["lungs", "lungs-robust", "lungs-hist"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--cache-root", default=".cache/covidct")
    parser.add_argument("--out", default="benchmarks/results/bench_brightness.json")
    args = parser.parse_args(argv)

    import covidct.preprocess.standardize  # noqa: F401  (registers lungs-robust, lungs-hist)
    from covidct.data.datasets import load_dataset
    from covidct.experiments.external import MIN_LUNG_FRACTION, lung_fractions

    root = Path(args.data_root)
    internal = load_dataset("sars-cov-2-ct", root=root / "sars-cov-2-ct-scan")
    external = load_dataset("covid-ct-md", root=root / "covid-ct-md-sample")
    external = external.iloc[np.flatnonzero(lung_fractions(external, args.cache_root) >= MIN_LUNG_FRACTION)]
    samples = {
        name: pd.concat([g.sample(min(len(g), args.per_class), random_state=0) for _, g in frame.groupby("label")])
        for name, frame in (("sars-cov-2-ct", internal), ("covid-ct-md", external))
    }
    table = {}
    for stage in args.stages:
        for name, frame in samples.items():
            grey = mean_lung_grey(frame, stage, args.size)
            for label in sorted(frame["label"].unique()):
                table.setdefault(stage, {})[f"{name} {label}"] = float(np.nanmean(grey[(frame["label"] == label).to_numpy()]))
    columns = list(next(iter(table.values())))
    print("| stage | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for stage, row in table.items():
        print(f"| `{stage}` | " + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")
    out = {"command": "python benchmarks/bench_brightness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "size": args.size, "per_class": {k: v["label"].value_counts().to_dict() for k, v in samples.items()},
           "mean_lung_grey": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
