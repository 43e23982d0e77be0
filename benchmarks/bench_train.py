"""Training input-pipeline speed: covidct's PyDataset over the cache vs in-memory arrays vs
``keras.utils.image_dataset_from_directory`` (what the seed did), same model, size and batch.

    python benchmarks/bench_train.py --smoke                        # phantoms, seconds
    python benchmarks/bench_train.py --dataset sars-cov-2-ct --root ../shared/data/sars-cov-2-ct-scan \
        --model small_cnn --size 224 --epochs 3
    KERAS_BACKEND=jax python benchmarks/bench_train.py --dataset sars-cov-2-ct --root ... \
        --model efficientnet_b0 --size 224 --batch 128 --mixed-precision   # GPU throughput (no TensorFlow)

Each arm is timed in two blocks in mirrored order (A B C, then C B A: a slow phase of a shared machine hits
every arm alike); the first epoch of each block (compilation, set-up) is not timed; medians of the timed
epochs are compared. Results print as a markdown table and go to --out (JSON).
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
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per arm (two blocks, each after a warm-up epoch)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    parser.add_argument("--augment", action="store_true", help="also time the pipeline with the stage's augmentation")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--cache-root", default=".cache/covidct")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="N random uint8 images instead of a dataset (throughput only: a GPU machine without data)")
    parser.add_argument("--train-path", action="store_true",
                        help="also time covidct's train(cfg) itself (the epoch loop of `covidct train`: PyDataset, "
                             "callbacks, per-epoch validation and checkpoint)")
    parser.add_argument("--skip-pipeline", action="store_true",
                        help="do not time the PyDataset under a bare fit (saves a compilation; with --train-path)")
    parser.add_argument("--val-images", type=int, default=256, help="validation images of the --train-path run")
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


def interleaved_epochs(arms: dict, epochs: int) -> dict[str, list[float]]:
    """Per-epoch wall times of every arm, measured in two blocks per arm in mirrored order (A B C, C B A),
    so that a slow phase of a shared machine hits every arm alike. Each block is one ``model.fit`` call
    whose first epoch (compilation, adapter set-up: paid once in a real run) is not timed; ``epochs`` timed
    epochs per arm in all (rounded up to even). ``arms``: ``{key: (compiled model, fit kwargs)}``."""
    times: dict[str, list[float]] = {key: [] for key in arms}
    per_block = max(1, int(np.ceil(epochs / 2)))
    keys = list(arms)
    for order in (keys, keys[::-1]):
        for key in order:
            model, kwargs = arms[key]
            times[key] += timed_fit(model, per_block, **kwargs)
    return times


def record(results: dict, key: str, epoch_seconds: list[float]) -> None:
    """Store the median under ``key`` and every timed epoch under ``key`` with ``_s`` → ``_epochs_s``."""
    results[key] = float(np.median(epoch_seconds))
    results[key.removesuffix("_s") + "_epochs_s"] = [round(float(v), 4) for v in epoch_seconds]


def fresh_model(args, shape, num_classes):
    import keras

    from covidct.models import build_model
    from covidct.train.losses import CrossEntropyFromLogits

    keras.utils.set_random_seed(0)
    model = build_model(args.model, input_shape=shape, num_classes=num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=CrossEntropyFromLogits())
    return model


def synthetic_data(n_train: int, n_val: int, size: int):
    """Random uint8 slices with random labels (2 classes) as TrainingData: the content does not change a
    training step's cost, and a GPU machine without the datasets can still measure throughput."""
    import pandas as pd

    from covidct.train.data import data_from_arrays

    rng = np.random.default_rng(0)
    n = n_train + n_val
    images = rng.integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)
    manifest = pd.DataFrame({"path": [f"synthetic{i}" for i in range(n)], "label": rng.choice(["COV", "NonCOV"], n),
                             "group": [f"g{i}" for i in range(n)], "split": ["train"] * n_train + ["val"] * n_val})
    return data_from_arrays(images, manifest, source="synthetic")


def time_train_path(args, data, rows) -> dict:
    """Per-epoch training time of ``covidct.train.train`` (what `covidct train` runs), from its history.csv.

    ``seconds`` in the history spans the epoch's batches (``on_epoch_begin`` to ``on_epoch_end``), i.e. the
    part comparable with a bare ``model.fit`` epoch; validation and the checkpoint come after it and are
    reported as one total (``outside_batches_s``: the run's wall time minus its epochs' seconds: model build,
    validation passes and their compilation, checkpoints).
    """
    import tempfile

    import pandas as pd

    from covidct.config import config_from_dict
    from covidct.train import train
    from covidct.train.data import data_from_arrays

    keep = np.isin(np.arange(len(data.labels)), rows) | (data.manifest["split"].astype(str).to_numpy() == "val")
    subset = data_from_arrays(np.asarray(data.images)[keep], data.manifest[keep].reset_index(drop=True),
                              classes=data.class_names, source="bench_train")
    cfg = config_from_dict({
        "name": "bench-train-path",
        "data": {"dataset": args.dataset if not args.synthetic else "phantom", "size": args.size},
        "model": {"name": args.model},
        "training": {"epochs": args.epochs + 1, "batch_size": args.batch, "learning_rate": 1e-3, "optimizer": "adam",
                     "monitor": "val_loss", "early_stopping_patience": 0, "shortcut_probe": False,
                     "mixed_precision": "on" if args.mixed_precision else "off"},
    })
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run_dir = train(cfg, run_dir=Path(tmp) / "run", data=subset, progress=False)
        wall = time.perf_counter() - started
        history = pd.read_csv(run_dir / "history.csv")
    n_val = int((subset.manifest["split"] == "val").sum())
    results: dict = {}
    record(results, "covidct_train_s", list(history["seconds"].to_numpy()[1:]))
    return {**results,
            "outside_batches_s": float(wall - history["seconds"].sum()), "val_images": n_val, "train_wall_s": wall}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        args.dataset, args.size, args.epochs, args.limit = "phantom", 64, 1, 96
    import keras

    from covidct.config import config_from_dict
    from covidct.train.data import SliceSequence, prepare_data
    from covidct.train.trainer import gpu_names

    if args.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if keras.backend.backend() == "jax" else "mixed_float16")
    if args.synthetic:
        data = synthetic_data(args.synthetic, args.val_images, args.size)
    else:
        options = {"n": 120, "size": 64} if args.dataset == "phantom" else {}
        cfg = config_from_dict({"data": {"dataset": args.dataset, "root": args.root, "size": args.size,
                                         "cache_root": args.cache_root, "options": options}})
        data = prepare_data(cfg, progress=True)
    rows = data.indices("train")[: args.limit]
    shape = tuple(data.images.shape[1:])
    n_classes = len(data.class_names)
    results = {"backend": keras.backend.backend(), "model": args.model, "size": args.size, "batch": args.batch,
               "images": int(len(rows)), "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {', '.join(gpu_names()) or 'no GPU'})", "epochs_timed": args.epochs}

    # The arms train in turn, one epoch each per round (after one untimed warm-up epoch each), so that a
    # slow phase of a shared machine hits every arm alike; ratios are medians of per-round ratios.
    arms = {}
    # (b) in-memory float32 arrays: the floor every pipeline is compared with.
    x = np.asarray(data.images[rows], dtype="float32")
    arms["in_memory_s"] = (fresh_model(args, shape, n_classes), {"x": x, "y": data.labels[rows], "batch_size": args.batch, "shuffle": True})
    # (a) covidct's PyDataset over the cache memmap (shuffled, optionally augmented).
    if not args.skip_pipeline:
        sequence = SliceSequence(data.images, rows, data.labels, batch_size=args.batch, shuffle=True)
        arms["covidct_pipeline_s"] = (fresh_model(args, shape, n_classes), {"x": sequence, "shuffle": False})
    if args.augment:
        from covidct.train.recipes import STAGE_AUGMENTATION

        r, z, t = STAGE_AUGMENTATION["original"]
        augmented = SliceSequence(data.images, rows, data.labels, batch_size=args.batch, shuffle=True,
                                  augmentation={"rotation": r, "zoom": z, "translation": t, "flip": True})
        arms["covidct_pipeline_augmented_s"] = (fresh_model(args, shape, n_classes), {"x": augmented, "shuffle": False})
    # (c) the seed's loop: image_dataset_from_directory over the PNG class folders (TensorFlow only).
    if keras.backend.backend() == "tensorflow" and args.root and args.dataset != "phantom" and not args.skip_pipeline:
        dataset = keras.utils.image_dataset_from_directory(
            args.root, labels="inferred", color_mode="grayscale", image_size=(args.size, args.size),
            batch_size=args.batch, shuffle=True, seed=0)
        if args.limit:
            dataset = dataset.take(int(np.ceil(args.limit / args.batch)))
        arms["image_dataset_from_directory_s"] = (fresh_model(args, shape, len(dataset.class_names)), {"x": dataset})
    for key, seconds in interleaved_epochs(arms, args.epochs).items():
        record(results, key, seconds)
    for key, name in (("covidct_pipeline_s", "pipeline_overhead_pct"), ("covidct_pipeline_augmented_s", "augmented_pipeline_overhead_pct")):
        if key in results:
            results[name] = 100.0 * (results[key] / results["in_memory_s"] - 1.0)
    if "image_dataset_from_directory_s" in results and "covidct_pipeline_s" in results:
        results["covidct_vs_directory_ratio"] = results["covidct_pipeline_s"] / results["image_dataset_from_directory_s"]
    if args.train_path:
        results.update(time_train_path(args, data, rows))
        results["train_path_ratio"] = results["in_memory_s"] / results["covidct_train_s"]
    timed = [k for k in ("in_memory_s", "covidct_pipeline_s", "covidct_train_s") if k in results]
    results["throughput_img_s"] = {k.removesuffix("_s"): len(rows) / results[k] for k in timed}

    print("| pipeline | epoch s (median) | img/s |\n|---|---|---|")
    for key, label in (("in_memory_s", "in-memory arrays"), ("covidct_pipeline_s", "covidct PyDataset (cache)"),
                       ("covidct_pipeline_augmented_s", "covidct PyDataset + augmentation"),
                       ("image_dataset_from_directory_s", "image_dataset_from_directory (PNG)"),
                       ("covidct_train_s", "covidct train(cfg), training part of the epoch")):
        if key in results:
            print(f"| {label} | {results[key]:.2f} | {len(rows) / results[key]:.0f} |")
    print(f"\n{results['backend']}, {args.model}, {args.size} px, batch {args.batch}, {len(rows)} images")
    if "pipeline_overhead_pct" in results:
        print(f"pipeline overhead vs in-memory: {results['pipeline_overhead_pct']:+.1f}%")
    if "covidct_train_s" in results:
        print(f"covidct train(cfg) throughput / bare fit on in-memory arrays: {results['train_path_ratio']:.3f} "
              f"(outside the batches: {results['outside_batches_s']:.1f} s in all for build, {len(results['covidct_train_epochs_s']) + 1} "
              f"validation passes on {results['val_images']} images and checkpoints)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
