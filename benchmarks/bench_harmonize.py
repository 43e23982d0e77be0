"""How well does ``covidct.preprocess.harmonize`` recover a slice's display window? Errors in HU.

Truth is known in two places:

* **Phantoms** (``covidct.data.phantom``, HU exact): each slice is rendered through several windows
  (level, width), rounded to uint8 like a PNG export, and the window is estimated back. Errors: the
  recovered level and width, and the HU the estimate gives to the true grey levels of -1000 HU (air)
  and +40 HU (soft tissue) ("mapped anchors"). Windows whose top is below +40 HU clip soft tissue:
  the estimate must refuse them (counted as ``refused``).
* **COVID-CT-MD sample** (uint8 lung window W1500/L-600 per its PROVENANCE.md, i.e. HU = v*1500/255 - 1350):
  the same errors per lung-containing slice, with the automatic anchor and with each anchor forced.
  The true HU of the aerated-lung peak is reported too (the lung anchor assumes -860 HU).

Also the windows estimated on the display datasets (sars-cov-2-ct by class, MedSeg), where no truth exists:
a window that differs between classes is a shortcut a classifier can learn.

    python benchmarks/bench_harmonize.py --out benchmarks/results/cross_hospital_harmonize.json
    python benchmarks/bench_harmonize.py --smoke --out /tmp/h.json      # phantoms only, seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import pandas as pd

from covidct.data.datasets import load_dataset
from covidct.data.io import read_image
from covidct.data.phantom import make_slice
from covidct.data.windows import window_hu
from covidct.preprocess.harmonize import (
    AIR_HU,
    LUNG_PARENCHYMA_HU,
    SOFT_TISSUE_HU,
    estimate_window,
    histogram_peak,
)
from covidct.preprocess.lungs import lung_mask
from covidct.runs import jsonable, write_json_atomic

WINDOWS = [(-600, 1500), (-500, 1600), (-450, 1700), (-550, 1300), (-650, 1700), (-300, 1400), (-500, 1000)]
COVID_CT_MD_WINDOW = (-600.0, 1500.0)  # PROVENANCE.md: v = clip((HU + 1350) / 1500 * 255)
MIN_LUNG_FRACTION = 0.05


def _errors(estimate, true_window) -> dict:
    level, width = true_window
    low = level - width / 2.0
    grey_air = (AIR_HU - low) / width * 255.0
    grey_tissue = (SOFT_TISSUE_HU - low) / width * 255.0
    row = {"ok": estimate.ok, "anchor": estimate.dark_anchor, "reason": estimate.reason}
    if estimate.ok:
        row.update(
            level_error=estimate.level - level,
            width_error=estimate.width - width,
            air_error=float(estimate.grey_to_hu(grey_air)) - AIR_HU,
            tissue_error=float(estimate.grey_to_hu(grey_tissue)) - SOFT_TISSUE_HU,
        )
    return row


def _summary(rows: pd.DataFrame) -> dict:
    out = {"n": int(len(rows)), "estimated": int(rows["ok"].sum()), "refused": int((~rows["ok"]).sum())}
    done = rows[rows["ok"]]
    out["anchor_counts"] = {str(k): int(v) for k, v in done["anchor"].value_counts().items()}
    for column in ("level_error", "width_error", "air_error", "tissue_error"):
        if column in done and len(done):
            values = done[column].to_numpy(dtype=float)
            out[column] = {"mean": float(values.mean()), "mean_abs": float(np.abs(values).mean()),
                           "median_abs": float(np.median(np.abs(values))),
                           "p95_abs": float(np.percentile(np.abs(values), 95)), "max_abs": float(np.abs(values).max())}
    return out


def phantom_check(seeds: int, size: int) -> dict:
    rows = []
    for seed in range(seeds):
        for label in ("Normal", "COV", "OtherPneumonia"):
            hu = make_slice(label, size=size, seed=seed).image_hu
            for window in WINDOWS:
                grey = np.rint(window_hu(hu, *window) * 255.0)
                soft_tissue_visible = window[0] + window[1] / 2.0 > SOFT_TISSUE_HU
                for anchor in ("auto", "air", "lung"):
                    row = _errors(estimate_window(grey, dark_anchor=anchor), window)
                    rows.append(dict(row, seed=seed, label=label, window=f"L{window[0]}/W{window[1]}", mode=anchor,
                                     soft_tissue_visible=soft_tissue_visible))
    frame = pd.DataFrame(rows)
    result = {}
    for (window, mode), part in frame.groupby(["window", "mode"], sort=False):
        result.setdefault(window, {})[mode] = _summary(part)
    visible = frame[frame["soft_tissue_visible"]]
    return {"per_window": result,
            "all_windows_with_soft_tissue_visible": {m: _summary(p) for m, p in visible.groupby("mode")},
            "windows_clipping_soft_tissue_refused": bool((~frame[~frame["soft_tissue_visible"]]["ok"]).all())}


def covid_ct_md_check(step: int) -> dict:
    manifest = load_dataset("covid-ct-md", volumes=True)
    rows, lung_peaks = [], []
    level, width = COVID_CT_MD_WINDOW
    for path, patient in zip(manifest["path"], manifest["group"]):
        volume = read_image(path).array
        for k in range(0, volume.shape[0], step):
            grey = volume[k]
            lungs = lung_mask(grey, unit="display", warn=False) > 0
            if lungs.mean() < MIN_LUNG_FRACTION:
                continue
            for anchor in ("auto", "air", "lung"):
                rows.append(dict(_errors(estimate_window(grey, lungs=lungs, dark_anchor=anchor), COVID_CT_MD_WINDOW),
                                 patient=patient, slice_index=k, mode=anchor))
            peak = histogram_peak(grey[lungs & (grey > 1.5) & (grey < 253.5)], "highest")
            lung_peaks.append(level - width / 2.0 + peak / 255.0 * width)
    frame = pd.DataFrame(rows)
    peaks = np.asarray(lung_peaks)
    return {"true_window": {"level": level, "width": width, "source": "covid-ct-md-sample/PROVENANCE.md"},
            "slice_step": step,
            "per_mode": {m: _summary(p) for m, p in frame.groupby("mode")},
            "aerated_lung_peak_true_hu": {"assumed": LUNG_PARENCHYMA_HU, "mean": float(peaks.mean()),
                                          "sd": float(peaks.std()), "p5": float(np.percentile(peaks, 5)),
                                          "p95": float(np.percentile(peaks, 95))}}


def display_windows(dataset: str, per_class: int) -> dict:
    manifest = load_dataset(dataset)
    out = {}
    for label, part in manifest.groupby("label"):
        part = part.iloc[np.linspace(0, len(part) - 1, min(per_class, len(part))).astype(int)]
        estimates = [estimate_window(read_image(p)) for p in part["path"]]
        good = [e for e in estimates if e.ok]
        levels = np.array([e.level for e in good])
        widths = np.array([e.width for e in good])
        out[label] = {"n": len(estimates), "estimated": len(good),
                      "anchor_counts": pd.Series([e.dark_anchor for e in good]).value_counts().to_dict(),
                      "level_median": float(np.median(levels)), "level_iqr": [float(v) for v in np.percentile(levels, [25, 75])],
                      "width_median": float(np.median(widths)), "width_iqr": [float(v) for v in np.percentile(widths, [25, 75])]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--step", type=int, default=3, help="every STEP-th COVID-CT-MD slice")
    parser.add_argument("--per-class", type=int, default=150, help="display slices per class of the display datasets")
    parser.add_argument("--smoke", action="store_true", help="phantoms only, 1 seed, 128 px")
    args = parser.parse_args(argv)
    start = time.time()
    result = {"benchmark": "bench_harmonize", "protocol": __doc__, "platform": platform.platform()}
    if args.smoke:
        result["phantoms"] = phantom_check(1, 128)
    else:
        result["phantoms"] = phantom_check(args.seeds, args.size)
        result["covid_ct_md"] = covid_ct_md_check(args.step)
        result["display_datasets"] = {name: display_windows(name, args.per_class) for name in ("sars-cov-2-ct", "medseg")}
    result["seconds"] = round(time.time() - start, 1)
    write_json_atomic(args.out, jsonable(result))
    print(json.dumps(jsonable({k: v for k, v in result.items() if k != "protocol"}), indent=1)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
