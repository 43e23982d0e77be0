"""The per-epoch passes of ``train(cfg)`` outside the training batches: eager vs compiled.

Every epoch the trainer recalibrates BatchNorm (a training-mode pass over ``training.bn_recalibration``
clean training images) and scores the validation split. Both used an eager ``model(x)`` call; on JAX that
runs op by op, and on an H100 a 256 px U-Net fold spent ~2.4 s per epoch outside 0.12 s of training
batches (BENCHMARKS.md, infection segmentation). This script times both passes eagerly and compiled
(``predict_logits(..., compiled=)``, ``recalibrate_batch_norm(..., compiled=)``) on the same model and data,
in alternating order, and reports the medians and their ratio::

    KERAS_BACKEND=jax python benchmarks/bench_epoch_passes.py --model unet --size 128 --base-filters 16
    KERAS_BACKEND=tensorflow python benchmarks/bench_epoch_passes.py --model small_cnn --size 128 --val 360

Random inputs: the cost of a pass does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="unet", help="registered model (a segmenter or a classifier)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--base-filters", type=int, default=16, help="segmenters only")
    parser.add_argument("--val", type=int, default=10, help="validation images per pass")
    parser.add_argument("--recal", type=int, default=70, help="recalibration images per pass")
    parser.add_argument("--batch-size", type=int, default=8, help="validation batch size")
    parser.add_argument("--recal-batch", type=int, default=32, help="recalibration batch size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="results JSON")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from covidct.models import build_model, get_spec
    from covidct.models.inference import predict_logits
    from covidct.train.batchnorm import recalibrate_batch_norm

    segmenter = get_spec(args.model).task == "segmentation"
    kwargs = {"base_filters": args.base_filters, "batch_norm": True} if segmenter else {}
    model = build_model(args.model, input_shape=(args.size, args.size, 1), num_classes=1 if segmenter else 2, **kwargs)
    rng = np.random.default_rng(0)
    images = rng.random((max(args.val, args.recal), args.size, args.size, 1), dtype=np.float32) * 255

    def validation(compiled):
        predict_logits(model, images, np.arange(args.val), args.batch_size, compiled=compiled)

    def recalibration(compiled):
        batches = (images[i : i + args.recal_batch] for i in range(0, args.recal, args.recal_batch))
        recalibrate_batch_norm(model, batches, compiled=compiled)

    timings = {}
    for name, run in (("validation", validation), ("recalibration", recalibration)):
        for compiled in (False, True):  # warm-up: tracing and compilation are not timed
            run(compiled)
        arms = {False: [], True: []}
        for repeat in range(args.repeats):
            for compiled in ((False, True) if repeat % 2 == 0 else (True, False)):
                start = time.perf_counter()
                run(compiled)
                arms[compiled].append(time.perf_counter() - start)
        eager, jitted = statistics.median(arms[False]), statistics.median(arms[True])
        timings[name] = {"eager_s": eager, "compiled_s": jitted, "ratio_compiled_to_eager": jitted / eager,
                         "eager_runs": arms[False], "compiled_runs": arms[True]}
        print(f"{name}: eager {eager * 1000:.1f} ms, compiled {jitted * 1000:.1f} ms (x{jitted / eager:.2f}), "
              f"median of {args.repeats}")
    result = {
        "command": "python benchmarks/bench_epoch_passes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backend": keras.backend.backend(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "settings": vars(args),
        "timings": timings,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
