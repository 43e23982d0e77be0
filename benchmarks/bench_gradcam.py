"""Benchmark of Grad-CAM: speed per model and method, and quality on phantoms (pointing game, lung focus).

Measures, on this machine and the current Keras backend (``KERAS_BACKEND``):

1. **speed**: images/s of ``compute_heatmaps`` (forward + backward + CAM + resize) for registered models
   at a given size, for each method, after one warm-up batch (JAX compiles on first use);
2. **quality** (``--quality``): two small CNNs trained on 64-px phantoms (the recipe of
   ``tests/explain/conftest.py``): one on COV vs Normal, where only the lesions decide, and one on a
   corner-marker shortcut. Reported per method: the pointing-game hit rate on COV test slices (peak inside
   the lesion or a lung holding lesion), the median lung-focus score, the median lung area fraction
   (the score of a uniform heatmap) and whether the shortcut warning fires.

Usage::

    python benchmarks/bench_gradcam.py [--models small_cnn efficientnet_b0] [--size 224] [--n 32]
                                       [--quality] [--out results/gradcam.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

METHODS = ("gradcam", "guided", "gradcam++")


def speed(model_name: str, size: int, count: int, batch_size: int) -> dict:
    from covidct.explain.gradcam import compute_cams
    from covidct.models import build_model, get_spec

    spec = get_spec(model_name)
    shape = (size, size, spec.channels)
    started = time.perf_counter()
    model = build_model(model_name, shape, 2)
    build_seconds = time.perf_counter() - started
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (count, *shape)).astype(np.float32)
    inputs = images
    if len(spec.inputs) > 1:
        masks = np.zeros((count, size, size, 1), np.float32)
        masks[:, size // 4 : 3 * size // 4, size // 8 : 7 * size // 8] = 255.0
        inputs = (images, masks)
    row = {"model": model_name, "size": size, "images": count, "batch_size": batch_size, "build_s": round(build_seconds, 2)}
    for method in METHODS:
        warm = (images[:batch_size], masks[:batch_size]) if len(spec.inputs) > 1 else images[:batch_size]
        compute_cams(model, warm, method=method, batch_size=batch_size)
        started = time.perf_counter()
        result = compute_cams(model, inputs, method=method, batch_size=batch_size)
        seconds = time.perf_counter() - started
        row[f"{method}_images_per_s"] = round(count / seconds, 1)
        row["layer"] = result.layer
    return row


def train_small_cnn(images, labels, epochs: int, seed: int = 0):
    """Train the registered ``small_cnn`` through the one training path and return the best checkpoint.

    Classes are the strings "0" and "1", so class index 1 is the positive class; every 5th training image
    is the validation split that selects the checkpoint.
    """
    import tempfile

    import pandas as pd

    from covidct.config import config_from_dict
    from covidct.train import train
    from covidct.train.data import data_from_arrays
    from covidct.train.run import load_run

    count = len(labels)
    manifest = pd.DataFrame(
        {
            "path": [f"bench/{i}" for i in range(count)],
            "label": [str(int(value)) for value in labels],
            "group": [str(i) for i in range(count)],
            "split": ["val" if i % 5 == 0 else "train" for i in range(count)],
            "source": "bench",
        }
    )
    data = data_from_arrays(np.clip(images, 0, 255).astype(np.uint8), manifest, source="bench")
    cfg = config_from_dict(
        {
            "name": "bench-gradcam",
            "data": {"dataset": "phantom", "stage": "original", "size": int(images.shape[1])},
            "model": {"name": "small_cnn"},
            "training": {
                "epochs": epochs, "batch_size": 16, "learning_rate": 3e-3, "bn_momentum": 0.9, "seed": seed,
                "shortcut_probe": False, "min_epochs": 0, "early_stopping_patience": 0, "mixed_precision": "off",
            },
        }
    )
    run_dir = Path(tempfile.mkdtemp(prefix="bench-gradcam-")) / "run"
    train(cfg, run_dir=run_dir, data=data, progress=False)
    return load_run(run_dir).model


def quality(n: int, seed: int) -> dict:
    from covidct.data.phantom import make_dataset
    from covidct.data.windows import window_hu
    from covidct.explain.focus import lung_area_fractions, lung_focus_scores, lung_focus_summary
    from covidct.explain.gradcam import compute_cams

    data = make_dataset(n=n, size=64, seed=seed, slices_per_patient=1)
    labels = np.asarray(data.labels)
    display = np.rint(window_hu(data.images_hu) * 255.0)[..., None].astype(np.float32)
    results = {}

    keep = np.isin(labels, ["COV", "Normal"])
    y = (labels[keep] == "COV").astype(np.int32)
    test = np.arange(len(y)) % 5 == 0
    model = train_small_cnn(display[keep][~test], y[~test], epochs=10, seed=seed)
    images, lungs, lesions = display[keep][test], data.lung_labels[keep][test], data.lesion_masks[keep][test]
    accuracy = float(np.mean(np.asarray(model.predict(images, verbose=0)).argmax(1) == y[test]))
    positive = y[test] == 1
    for method in METHODS:
        heatmaps = compute_cams(model, images[positive], class_index=1, method=method).heatmaps
        hits = []
        for heatmap, lesion, lung in zip(heatmaps, lesions[positive], lungs[positive]):
            row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
            hits.append(bool(lesion[row, col]) or int(lung[row, col]) in set(np.unique(lung[lesion]).tolist()) - {0})
        scores = lung_focus_scores(heatmaps, lungs[positive])
        areas = lung_area_fractions(lungs[positive])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = lung_focus_summary(scores, ["COV"] * len(scores), area_fractions=areas)
        results[f"lesion_model/{method}"] = {
            "test_accuracy": round(accuracy, 3),
            "pointing_game": round(float(np.mean(hits)), 3),
            "median_lung_focus": round(float(np.nanmedian(scores)), 3),
            "median_lung_area": round(float(np.median(areas)), 3),
            "threshold": round(summary["per_class"]["COV"]["threshold"], 3),
            "warning": summary["warning"],
            "slices": int(positive.sum()),
        }

    marked = np.random.default_rng(1).integers(0, 2, len(display)).astype(np.int32)
    shortcut_images = display.copy()
    shortcut_images[marked == 1, 1:9, 1:9, :] = 255.0
    test = np.arange(len(marked)) % 4 == 0
    model = train_small_cnn(shortcut_images[~test], marked[~test], epochs=4, seed=seed)
    accuracy = float(np.mean(np.asarray(model.predict(shortcut_images[test], verbose=0)).argmax(1) == marked[test]))
    chosen = test & (marked == 1)
    for method in METHODS:
        heatmaps = compute_cams(model, shortcut_images[chosen], class_index=1, method=method).heatmaps
        scores = lung_focus_scores(heatmaps, data.lung_labels[chosen])
        areas = lung_area_fractions(data.lung_labels[chosen])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = lung_focus_summary(scores, ["marked"] * len(scores), area_fractions=areas)
        results[f"shortcut_model/{method}"] = {
            "test_accuracy": round(accuracy, 3),
            "median_lung_focus": round(float(np.nanmedian(scores)), 3),
            "median_lung_area": round(float(np.median(areas)), 3),
            "threshold": round(summary["per_class"]["marked"]["threshold"], 3),
            "warning": summary["warning"],
            "slices": int(chosen.sum()),
        }
    return results


def main(argv=None) -> int:
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["small_cnn", "efficientnet_b0"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=32, help="images per speed measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--quality", action="store_true", help="also train the phantom models and score them")
    parser.add_argument("--phantoms", type=int, default=450, help="phantom slices for --quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    report = {"backend": keras.backend.backend(), "keras": keras.__version__, "speed": [], "quality": {}}
    for name in args.models:
        row = speed(name, args.size, args.n, args.batch_size)
        report["speed"].append(row)
        print(json.dumps(row))
    if args.quality:
        report["quality"] = quality(args.phantoms, args.seed)
        for key, value in report["quality"].items():
            print(key, json.dumps(value))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
