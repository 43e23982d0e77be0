"""Classical lung masks: speed (vs the seed's active-contour envelope), Dice on kaggle-lungs, robustness.

Usage::

    python benchmarks/bench_lungs.py [--speed-only] [--root DATA_ROOT] [--envelope-slices 3]

Measures, single-threaded (OpenCV threads = 1; run under ``taskset -c 0`` for one core):

1. speed: ``lung_mask(method="classical")`` per 512x512 slice (MedSeg slices when the data is present,
   else phantoms), and ``method="envelope"`` on a few slices in the same run -> speed ratio;
2. Dice of the classical mask vs the kaggle-lungs masks (64 px, all 267 slices; test split reported);
3. robustness on every image of sars-cov-2-ct and medseg: crashes, empty body/lung masks, fraction
   flagged suspicious by ``check_lung_mask`` (reasons counted), and on MedSeg the fraction of the
   infection mask (mask > 0) inside the lung mask (dense lesions must stay inside).

Results go to benchmarks/results/lungs.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _data_root(arg) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("COVIDCT_DATA_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def speed(root: Path, envelope_slices: int, repeats: int = 3) -> dict:
    from covidct.data.phantom import make_slice
    from covidct.preprocess.body import to_display_u8
    from covidct.preprocess.lungs import lung_mask

    files = sorted((root / "medseg-covid19-100" / "images").glob("*.png"))[:20]
    if files:
        slices = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
        source = "medseg 512x512 PNG (display)"
    else:
        slices = [to_display_u8(make_slice(c, size=512, seed=s).image_hu) for s in range(7) for c in ("COV", "Normal", "OtherPneumonia")]
        source = "phantom 512x512 (display)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for image in slices[:2]:
            lung_mask(image)
        per_slice = []
        for _ in range(repeats):
            for image in slices:
                start = time.perf_counter()
                lung_mask(image, warn=False)
                per_slice.append(time.perf_counter() - start)
        envelope = []
        for image in slices[:envelope_slices]:
            start = time.perf_counter()
            lung_mask(image, method="envelope", warn=False)
            envelope.append(time.perf_counter() - start)
    classical_ms = 1000 * float(np.median(per_slice))
    envelope_ms = 1000 * float(np.median(envelope))
    return {
        "source": source,
        "n_slices": len(slices),
        "repeats": repeats,
        "classical_ms_median": round(classical_ms, 2),
        "classical_ms_p90": round(1000 * float(np.percentile(per_slice, 90)), 2),
        "envelope_ms_median": round(envelope_ms, 1),
        "envelope_slices": len(envelope),
        "speed_ratio": round(envelope_ms / classical_ms, 1),
    }


def _bootstrap_mean(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(n)]
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def kaggle_dice(root: Path) -> dict:
    from covidct.preprocess.lungs import lung_mask
    from covidct.segment.metrics import dice, hausdorff95

    folder = root / "kaggle-lungs-ct-64px"
    out = {}
    for split in ("test", "train"):
        scores, hd = [], []
        for image_path in sorted((folder / split / "images").glob("*.png")):
            image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
            truth = cv2.imread(str(folder / split / "masks" / image_path.name), cv2.IMREAD_GRAYSCALE) > 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                predicted = lung_mask(image) > 0
            scores.append(dice(predicted, truth))
            hd.append(hausdorff95(predicted, truth))
        scores = np.array(scores)
        low, high = _bootstrap_mean(scores)
        out[split] = {
            "n": int(len(scores)),
            "dice_mean": round(float(scores.mean()), 4),
            "dice_ci95": [round(low, 4), round(high, 4)],
            "dice_median": round(float(np.median(scores)), 4),
            "dice_min": round(float(scores.min()), 4),
            "fraction_below_0.9": round(float((scores < 0.9).mean()), 4),
            "hd95_px_mean": round(float(np.nanmean(hd)), 2),
        }
    return out


def robustness(root: Path, only: tuple = ("sars-cov-2-ct", "medseg")) -> dict:
    from covidct.preprocess.body import BodyMaskWarning, body_mask
    from covidct.preprocess.lungs import check_lung_mask, lung_mask
    from covidct.segment.data import align_mask_orientation

    datasets = {
        "sars-cov-2-ct": sorted((root / "sars-cov-2-ct-scan").glob("*/*.png")),
        "medseg": sorted((root / "medseg-covid19-100" / "images").glob("*.png")),
    }
    out = {}
    for name, files in datasets.items():
        if name not in only:
            continue
        crashes, empty_body, body_fallback, empty_lungs, flagged = [], 0, 0, 0, 0
        reasons = collections.Counter()
        lesion_inside = []
        areas = []
        turned = 0
        start = time.perf_counter()
        for path in files:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    body = body_mask(image)
                    labels = lung_mask(image, warn=False)
            except Exception as error:  # noqa: BLE001  (a benchmark counts crashes instead of stopping)
                crashes.append(f"{path.name}: {type(error).__name__}: {error}")
                continue
            body_fallback += any(issubclass(w.category, BodyMaskWarning) for w in caught)
            empty_body += int(not body.any())
            empty_lungs += int(not labels.any())
            check = check_lung_mask(labels)
            areas.append(check.area_fraction)
            if not check.plausible:
                flagged += 1
                reasons.update(r.split(" ")[0] + " " + r.split(" ")[1] if r.startswith("lung area") else r for r in check.reasons)
            if name == "medseg":
                mask = cv2.imread(str(path).replace("images", "masks").replace("_im_", "_mask_"), cv2.IMREAD_GRAYSCALE) > 0
                # Most staged MedSeg masks are a quarter turn away from their image: align each one first.
                mask, turns = align_mask_orientation(image, mask.astype(np.uint8))
                mask = mask > 0
                turned += turns != 0
                if mask.any():
                    lesion_inside.append(float((labels[mask] > 0).mean()))
        n = len(files)
        out[name] = {
            "n_images": n,
            "crashes": len(crashes),
            "crash_examples": crashes[:5],
            "empty_body_masks": empty_body,
            "body_fallback_warnings": body_fallback,
            "empty_lung_masks": empty_lungs,
            "flagged_suspicious": flagged,
            "flagged_fraction": round(flagged / max(n, 1), 4),
            "flag_reasons": dict(reasons),
            "lung_area_fraction_median": round(float(np.median(areas)), 4) if areas else None,
            "seconds": round(time.perf_counter() - start, 1),
        }
        if lesion_inside:
            values = np.array(lesion_inside)
            out[name]["infection_inside_lung_mask_mean"] = round(float(values.mean()), 4)
            out[name]["infection_inside_lung_mask_median"] = round(float(np.median(values)), 4)
            out[name]["slices_with_under_80pct_infection_inside"] = int((values < 0.8).sum())
            out[name]["masks_turned_to_match_image"] = turned
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None)
    parser.add_argument("--envelope-slices", type=int, default=3)
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--robustness-only", default=None, help="rerun robustness for these datasets (comma list)")
    parser.add_argument("--out", default=str(RESULTS / "lungs.json"))
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    root = _data_root(args.root)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out = Path(args.out)
    if args.robustness_only:
        # Recompute the robustness of some datasets and merge them into an earlier full run's results.
        result = json.loads(out.read_text()) if out.is_file() else {}
        result.setdefault("robustness", {}).update(robustness(root, tuple(args.robustness_only.split(","))))
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result["robustness"], indent=2))
        return 0
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; load average at start {load:.1f}",
        "opencv_threads": 1,
        "speed": speed(root, args.envelope_slices),
    }
    if not args.speed_only:
        if (root / "kaggle-lungs-ct-64px").is_dir():
            result["kaggle_lungs_dice"] = kaggle_dice(root)
        result["robustness"] = robustness(root)
    result["load_average_at_end"] = round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.speed_only and out.is_file():
        # Keep the quality results of an earlier full run; replace only the timing.
        previous = json.loads(out.read_text())
        previous.update({key: result[key] for key in ("machine", "opencv_threads", "speed", "load_average_at_end")})
        result = previous
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
