"""Throughput of every registered model: forward pass and one training step, in images per second.

CPU (BENCHMARKS.md table, TensorFlow backend, batch 8, each model's default input size and 224 px)::

    python benchmarks/bench_models.py --out benchmarks/results/models_cpu.json

GPU (JAX backend, bf16 mixed precision, batch 128)::

    python benchmarks/bench_models.py --backend jax --batch 128 --bf16 --out benchmarks/results/models_gpu.json

Each number is the median over ``--runs`` (>= 3) timed runs of ``--steps`` calls each, after
``--warmup`` untimed calls (compilation). keras.applications' own EfficientNetB0 and ResNet50
(``weights=None``, 3-channel 224 px input, bare Dense head) are measured in the same run as a
baseline: where our model is theirs plus a head (``efficientnet_b0``, ``resnet50``), the ratio
ours/theirs should be within 5%. Volume models are measured at their default shape only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--models", nargs="*", default=None, help="registry names (default: all)")
    parser.add_argument("--sizes", default="default,224", help="comma list of 'default' and/or pixel sizes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median reported, >= 3)")
    parser.add_argument("--steps", type=int, default=3, help="calls per timed run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (compilation)")
    parser.add_argument("--bf16", action="store_true", help="mixed_bfloat16 policy")
    parser.add_argument("--no-baseline", action="store_true", help="skip keras.applications EfficientNetB0/ResNet50")
    parser.add_argument("--no-train", action="store_true", help="forward only")
    parser.add_argument("--out", default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3 (the median of fewer runs is not a benchmark)")
    return args


def _median_rate(fn, batch: int, runs: int, steps: int, warmup: int) -> float:
    """Median images/s of ``fn`` (which must block until its result is computed)."""
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        rates.append(batch * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def _inputs(spec, shape, batch, rng):
    import numpy as np

    image = rng.uniform(0, 255, (batch, *shape)).astype("float32")
    if len(spec.inputs) == 2:
        return [image, np.full((batch, *shape[:-1], 1), 255.0, "float32")]
    return image


def measure(model, x, y, args, train: bool) -> dict:
    import keras
    import numpy as np

    def forward():
        out = model.predict_on_batch(x)
        np.asarray(out)

    result = {"forward_img_s": _median_rate(forward, args.batch, args.runs, args.steps, args.warmup)}
    if train:
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )

        def step():
            loss = model.train_on_batch(x, y)
            float(np.asarray(loss).ravel()[0])

        result["train_img_s"] = _median_rate(step, args.batch, args.runs, args.steps, args.warmup)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from covidct.models import build_model, get_spec, list_models

    if args.bf16:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    names = args.models or list_models()
    rng = np.random.default_rng(0)
    rows = []

    def record(label, shape, model, spec=None):
        x = _inputs(spec, shape, args.batch, rng) if spec else rng.uniform(0, 255, (args.batch, *shape)).astype("float32")
        if spec is not None and spec.task == "segmentation":
            y = rng.integers(0, 2, (args.batch, *shape[:2]))
        else:
            y = rng.integers(0, 2, (args.batch,))
        row = {"model": label, "input_shape": list(shape), "params": int(model.count_params())}
        row.update(measure(model, x, y, args, train=not args.no_train))
        rows.append(row)
        train = f"{row['train_img_s']:9.1f}" if "train_img_s" in row else "        -"
        print(f"{label:28s} {'x'.join(map(str, shape)):>14s} {row['forward_img_s']:9.1f} {train}", flush=True)
        keras.backend.clear_session()

    print(f"backend={args.backend} batch={args.batch} bf16={args.bf16} runs={args.runs} steps={args.steps}")
    print(f"{'model':28s} {'input':>14s} {'fwd img/s':>9s} {'train img/s':>9s}")
    if not args.no_baseline:
        for label, app in (("keras:EfficientNetB0", "EfficientNetB0"), ("keras:ResNet50", "ResNet50")):
            base = getattr(keras.applications, app)(
                weights=None, input_shape=(224, 224, 3), classes=2, classifier_activation=None
            )
            record(label, (224, 224, 3), base)
    for name in names:
        spec = get_spec(name)
        shapes = []
        for size in args.sizes.split(","):
            if size == "default":
                shapes.append(tuple(spec.input_shape))
            elif spec.task != "volume":
                shapes.append((int(size), int(size), spec.input_shape[-1]))
        if name in ("efficientnet_b0", "resnet50") and not args.no_baseline:
            shapes.append((224, 224, 3))  # the baseline's exact input, for the ours/theirs ratio
        for shape in dict.fromkeys(shapes):
            num_classes = 2
            model = build_model(name, input_shape=shape, num_classes=num_classes)
            record(name, shape, model, spec)

    by_key = {(r["model"], tuple(r["input_shape"])): r for r in rows}
    for ours, theirs in (("efficientnet_b0", "keras:EfficientNetB0"), ("resnet50", "keras:ResNet50")):
        a, b = by_key.get((ours, (224, 224, 3))), by_key.get((theirs, (224, 224, 3)))
        if a and b:
            for key in ("forward_img_s", "train_img_s"):
                if key in a and key in b:
                    print(f"ratio {ours}/{theirs} {key}: {a[key] / b[key]:.3f}")
    if args.out:
        meta = {
            "backend": args.backend,
            "keras": keras.__version__,
            "batch": args.batch,
            "bf16": args.bf16,
            "runs": args.runs,
            "steps": args.steps,
            "machine": platform.platform(),
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
