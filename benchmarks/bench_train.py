"""Training input-pipeline speed: covidct's PyDataset over the cache vs in-memory arrays vs
``keras.utils.image_dataset_from_directory`` (what the seed did), same model, size and batch.

    python benchmarks/bench_train.py --smoke                        # phantoms, seconds
    python benchmarks/bench_train.py --dataset sars-cov-2-ct --root ../shared/data/sars-cov-2-ct-scan \
        --model small_cnn --size 224 --epochs 3
    KERAS_BACKEND=jax python benchmarks/bench_train.py --dataset sars-cov-2-ct --root ... \
        --model efficientnet_b0 --size 224 --batch 128 --mixed-precision   # GPU throughput (no TensorFlow)

Epoch times exclude the first epoch (compilation). Results print as a markdown table and go to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="phantom")
    parser.add_argument("--root", default=None)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    parser.add_argument("--augment", action="store_true", help="also time the pipeline with the stage's augmentation")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--cache-root", default=".cache/covidct")
    parser.add_argument("--smoke", action="store_true", help="tiny phantom run (seconds)")
    parser.add_argument("--out", default="benchmarks/results/bench_train.json")
    return parser.parse_args(argv)


def timed_fit(model, epochs, **fit_kwargs) -> list[float]:
    """Per-epoch wall times of model.fit (epoch 0 is the warm-up)."""
    import keras

    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(epochs=epochs + 1, callbacks=[Timer()], verbose=0, **fit_kwargs)
    return times[1:]


def fresh_model(args, shape, num_classes):
    import keras

    from covidct.models import build_model
    from covidct.train.losses import CrossEntropyFromLogits

    keras.utils.set_random_seed(0)
    model = build_model(args.model, input_shape=shape, num_classes=num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=CrossEntropyFromLogits())
    return model


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        args.dataset, args.size, args.epochs, args.limit = "phantom", 64, 1, 96
    import keras

    from covidct.config import config_from_dict
    from covidct.train.data import SliceSequence, prepare_data

    if args.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if keras.backend.backend() == "jax" else "mixed_float16")
    options = {"n": 120, "size": 64} if args.dataset == "phantom" else {}
    cfg = config_from_dict({"data": {"dataset": args.dataset, "root": args.root, "size": args.size, "cache_root": args.cache_root,
                                     "options": options}})
    data = prepare_data(cfg, progress=True)
    rows = data.indices("train")[: args.limit]
    shape = tuple(data.images.shape[1:])
    n_classes = len(data.class_names)
    results = {"backend": keras.backend.backend(), "model": args.model, "size": args.size, "batch": args.batch,
               "images": int(len(rows)), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)", "epochs_timed": args.epochs}

    # (b) in-memory float32 arrays: the floor every pipeline is compared with.
    x = np.asarray(data.images[rows], dtype="float32")
    y = data.labels[rows]
    results["in_memory_s"] = float(np.median(timed_fit(fresh_model(args, shape, n_classes), args.epochs, x=x, y=y, batch_size=args.batch, shuffle=True)))
    # (a) covidct's PyDataset over the cache memmap (shuffled per epoch, optionally augmented).
    sequence = SliceSequence(data.images, rows, data.labels, batch_size=args.batch, shuffle=True)
    results["covidct_pipeline_s"] = float(np.median(timed_fit(fresh_model(args, shape, n_classes), args.epochs, x=sequence, shuffle=False)))
    if args.augment:
        from covidct.config import STAGE_AUGMENTATION

        r, z, t = STAGE_AUGMENTATION["original"]
        augmented = SliceSequence(data.images, rows, data.labels, batch_size=args.batch, shuffle=True,
                                  augmentation={"rotation": r, "zoom": z, "translation": t, "flip": True})
        results["covidct_pipeline_augmented_s"] = float(np.median(timed_fit(fresh_model(args, shape, n_classes), args.epochs, x=augmented, shuffle=False)))
    results["pipeline_overhead_pct"] = 100.0 * (results["covidct_pipeline_s"] / results["in_memory_s"] - 1.0)
    results["throughput_img_s"] = {"in_memory": len(rows) / results["in_memory_s"], "covidct": len(rows) / results["covidct_pipeline_s"]}
    # (c) the seed's loop: image_dataset_from_directory over the PNG class folders (TensorFlow only).
    if keras.backend.backend() == "tensorflow" and args.root and args.dataset != "phantom":
        dataset = keras.utils.image_dataset_from_directory(
            args.root, labels="inferred", color_mode="grayscale", image_size=(args.size, args.size),
            batch_size=args.batch, shuffle=True, seed=0)
        if args.limit:
            dataset = dataset.take(int(np.ceil(args.limit / args.batch)))
        results["image_dataset_from_directory_s"] = float(np.median(timed_fit(fresh_model(args, shape, len(dataset.class_names)), args.epochs, x=dataset)))
        results["covidct_vs_directory_ratio"] = results["covidct_pipeline_s"] / results["image_dataset_from_directory_s"]

    print("| pipeline | epoch s (median) | img/s |\n|---|---|---|")
    for key, label in (("in_memory_s", "in-memory arrays"), ("covidct_pipeline_s", "covidct PyDataset (cache)"),
                       ("covidct_pipeline_augmented_s", "covidct PyDataset + augmentation"),
                       ("image_dataset_from_directory_s", "image_dataset_from_directory (PNG)")):
        if key in results:
            print(f"| {label} | {results[key]:.2f} | {len(rows) / results[key]:.0f} |")
    print(f"\npipeline overhead vs in-memory: {results['pipeline_overhead_pct']:+.1f}% "
          f"({results['backend']}, {args.model}, {args.size} px, batch {args.batch}, {len(rows)} images)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
