"""Multi-source training (docs/experiments/cross-hospital.md, section 4): the Kaggle resolution shortcut, and the runs.

``resolution``: can the look of a slice alone tell the sources apart, before any model is trained? Every slice
of sars-cov-2-ct (``--per-source`` spread over the files), MedSeg (100) and the Kaggle lung set (267, 64 px
originals) is preprocessed by the training stage (default ``lungs-robust`` at 128 px, the cache the runs train
on) and described by two small hand-made feature sets:

* ``sharpness``: the share of spectral power beyond a quarter and beyond half of the Nyquist frequency (DC left
  out), the mean absolute Laplacian and the mean gradient magnitude, each divided by the slice's standard
  deviation (so a contrast stretch does not move them);
* ``intensity``: mean, standard deviation, 1st / 50th / 99th percentiles, shares of pixels at 0 and at 255.

A linear probe (``bench_source_probe.probe``: standardisation + logistic regression, grouped 5-fold CV, group
bootstrap CIs) predicts each source from them, for the slices as cached and after the proposed neutralisation:
every slice (all sources) shrunk to ``R`` px (area) and enlarged back (linear), for R in ``--round-trips``. COVID-CT-MD
is not read: it chooses nothing.

``runs``: gather what the trained runs report (``metrics_test.json``, ``metrics_external-covid-ct-md.json``,
``predictions_external-covid-ct-md.csv``: the 6-patient ranking by mean slice probability, ``run.json``'s
source counts) into one file, beside the source probe of ``bench_source_probe.py``.

    python benchmarks/bench_multisource.py resolution --out benchmarks/results/cross_hospital_multisource_resolution.json
    python benchmarks/bench_multisource.py runs --run runs/A --run runs/B --out benchmarks/results/cross_hospital_multisource.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from covidct.data.cache import build_cache
from covidct.data.datasets import load_dataset
from covidct.preprocess import get_stage
from covidct.runs import jsonable, write_json_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_source_probe import probe  # noqa: E402  (the same grouped-CV probe as the source probe)

SHARPNESS = ("hf_quarter", "hf_half", "laplacian", "gradient")
INTENSITY = ("mean", "std", "p1", "p50", "p99", "at_0", "at_255")


def slice_features(image: np.ndarray) -> dict:
    """The ``sharpness`` and ``intensity`` features of one uint8 (H, W) slice (see the module docstring)."""
    x = np.asarray(image, dtype=np.float64)
    std = float(x.std()) + 1e-6
    power = np.abs(np.fft.fftshift(np.fft.fft2(x - x.mean()))) ** 2
    h, w = x.shape
    fy, fx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    radius = np.hypot(fy / (h / 2), fx / (w / 2))  # 1 = Nyquist along an axis
    total = power.sum() + 1e-12
    lap = cv2.Laplacian(x, cv2.CV_64F)
    gy, gx = np.gradient(x)
    return {
        "hf_quarter": float(power[radius > 0.25].sum() / total),
        "hf_half": float(power[radius > 0.5].sum() / total),
        "laplacian": float(np.abs(lap).mean() / std),
        "gradient": float(np.hypot(gx, gy).mean() / std),
        "mean": float(x.mean()), "std": std, "p1": float(np.percentile(x, 1)), "p50": float(np.median(x)),
        "p99": float(np.percentile(x, 99)), "at_0": float((x == 0).mean()), "at_255": float((x == 255).mean()),
    }


def round_trip(image: np.ndarray, low: int) -> np.ndarray:
    """``image`` shrunk to ``low`` px (area average) and enlarged back to its size (linear), uint8."""
    size = image.shape[0]
    small = cv2.resize(image, (low, low), interpolation=cv2.INTER_AREA)
    return np.clip(np.round(cv2.resize(small.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)),
                   0, 255).astype(np.uint8)


def staged_slices(stage: str, size: int, per_source: int, cache_root: str) -> tuple[np.ndarray, pd.DataFrame]:
    """The three training sources through ``stage`` at ``size`` (their caches), with ``source`` and ``group``."""
    sars = load_dataset("sars-cov-2-ct")
    frames = [sars.iloc[np.linspace(0, len(sars) - 1, per_source).astype(int)], load_dataset("medseg"),
              load_dataset("kaggle-lungs")]
    images, tables = [], []
    for frame in frames:
        cache = build_cache(frame.reset_index(drop=True), stage=get_stage(stage), size=size, cache_root=cache_root,
                            progress=False)
        images.append(np.asarray(cache.images[..., 0]))
        tables.append(cache.manifest[["path", "label", "group", "source"]])
    table = pd.concat(tables, ignore_index=True)
    table["group"] = table["source"] + "/" + table["group"].astype(str)
    return np.concatenate(images), table


def resolution(args) -> dict:
    start = time.time()
    images, table = staged_slices(args.stage, args.size, args.per_source, args.cache_root)
    sources, groups = table["source"].to_numpy(), table["group"].to_numpy()
    arms = {"as cached": images}
    for low in args.round_trips:
        arms[f"all slices round trip {low} px"] = np.stack([round_trip(image, low) for image in images])
    result = {"stage": args.stage, "size": args.size, "counts": table["source"].value_counts().to_dict(), "arms": {}}
    for arm, array in arms.items():
        features = pd.DataFrame([slice_features(image) for image in array])
        medians = features.assign(source=sources).groupby("source").median().round(4).to_dict(orient="index")
        probes = {name: probe(features[list(columns)].to_numpy(), sources, groups)
                  for name, columns in (("sharpness", SHARPNESS), ("intensity", INTENSITY),
                                        ("both", SHARPNESS + INTENSITY))}
        result["arms"][arm] = {"median_features": medians, "probe": probes}
        print(arm, {name: {key: round(value["value"], 3) for key, value in p.items() if key.endswith("_vs_rest")}
                    for name, p in probes.items()}, flush=True)
    result["seconds"] = round(time.time() - start, 1)
    return result


def patient_ranking(predictions: Path, positive: str = "COV") -> list[dict]:
    """Patients of an external predictions CSV ranked by their mean ``prob_<positive>`` (highest first)."""
    frame = pd.read_csv(predictions)
    table = frame.groupby("group").agg(label=("label", "first"), slices=("path", "size"),
                                       mean_probability=(f"prob_{positive}", "mean"))
    table = table.sort_values("mean_probability", ascending=False).reset_index()
    table["rank"] = np.arange(1, len(table) + 1)
    return table.to_dict(orient="records")


def summary(metrics: dict) -> dict:
    """Slice macro-F1 and AUC with their group-bootstrap CIs, and the patient-level (mean) AUC, of a metrics file."""
    ci = metrics["slice"].get("ci", {})
    out = {"n_images": metrics["evaluated_on"].get("n_images"), "n_groups": metrics["evaluated_on"].get("n_groups")}
    for key in ("macro_f1", "auc_macro_ovr"):
        out[key] = {"value": metrics["slice"][key], **{k: ci.get(key, {}).get(k) for k in ("low", "high", "unit")}}
    mean = metrics.get("patient", {}).get("mean")
    if mean:
        out["patient_mean_auc"] = mean.get("auc_macro_ovr")
    return out


def runs(args) -> dict:
    result = {}
    for run in map(Path, args.run):
        info = json.loads((run / "run.json").read_text())
        entry = {"config": str(run / "config.yaml"), "seconds": info.get("seconds"), "sources": info.get("sources"),
                 "split_counts": info.get("split_counts"), "shortcut_probe_auc": info.get("shortcut_probe", {}).get("auc")}
        for name, file in (("internal_test", "metrics_test.json"), ("covid_ct_md", "metrics_external-covid-ct-md.json")):
            if (run / file).is_file():
                entry[name] = summary(json.loads((run / file).read_text()))
        if (run / "predictions_external-covid-ct-md.csv").is_file():
            entry["covid_ct_md_patients"] = patient_ranking(run / "predictions_external-covid-ct-md.csv")
        result[run.name] = entry
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    res = sub.add_parser("resolution", help="the source probe on hand-made sharpness / intensity features")
    res.add_argument("--stage", default="lungs-robust")
    res.add_argument("--size", type=int, default=128)
    res.add_argument("--per-source", type=int, default=400)
    res.add_argument("--round-trips", type=int, nargs="*", default=[64, 32])
    res.add_argument("--cache-root", default=".cache/covidct")
    res.add_argument("--out", required=True)
    collect = sub.add_parser("runs", help="gather the runs' internal and external metrics")
    collect.add_argument("--run", action="append", required=True)
    collect.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = resolution(args) if args.command == "resolution" else runs(args)
    payload = {"benchmark": f"bench_multisource {args.command}", "command": " ".join(sys.argv),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "protocol": __doc__,
               "result": result}
    write_json_atomic(Path(args.out), jsonable(payload))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
