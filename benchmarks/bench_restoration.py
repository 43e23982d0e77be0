"""Restoration pretraining (``task: pretrain``): what the Models Genesis distortions cost next to a training step.

    python benchmarks/bench_restoration.py                       # U-Net base 16 and small_cnn, 128 px, phantoms
    python benchmarks/bench_restoration.py --repeats 7 --out benchmarks/results/restoration_speed.json

For each network (the infection-segmentation U-Net, base 16 with BatchNorm; ``small_cnn``'s restoration network) and batch, on
phantom lung crops (the speed does not depend on the image content): (1) one ``RestorationSequence`` batch
(geometry + distortions, the CPU-side input work per step) and (2) one ``train_on_batch`` step on a prepared
batch, each timed ``--repeats`` times after a warm-up, alternating the two. Reported: medians, the share of
the input work in a step done one after the other (the PyDataset runs on the training thread here), and the
time of each distortion alone per image.
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

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up (graph tracing, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)

    import keras

    from covidct.config import PretrainConfig
    from covidct.models import build_model
    from covidct.segment.data import crop_pairs_to_lungs, phantom_pairs
    from covidct.train import restoration
    from covidct.train.losses import make_loss
    from covidct.train.segmentation import lung_masked

    pairs = crop_pairs_to_lungs(phantom_pairs(64, 2 * args.size, "lungs"), args.size)
    images = lung_masked(pairs.images, pairs.lungs)
    rates = PretrainConfig()
    flat = images[:32, ..., 0].astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    per_distortion_ms = {
        name: 1000 * median_seconds(lambda f=f: [f(image, rng) for image in flat], args.repeats) / len(flat)
        for name, f in (
            ("local_pixel_shuffle", restoration.local_pixel_shuffle),
            ("nonlinear_intensity", restoration.nonlinear_intensity),
            ("inpaint", restoration.inpaint),
            ("outpaint", restoration.outpaint),
        )
    }
    networks = {
        "unet (base 16, BatchNorm)": (
            lambda: build_model("unet", input_shape=(args.size, args.size, 1), num_classes=1, base_filters=16, batch_norm=True),
            16,
        ),
        "small_cnn restoration network": (
            lambda: restoration.restoration_network(build_model("small_cnn", input_shape=(args.size, args.size, 1), num_classes=2)),
            32,
        ),
    }
    rows = []
    for name, (build, batch_size) in networks.items():
        keras.utils.set_random_seed(0)
        model = build()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("restoration_mse", 1), jit_compile=False)
        sequence = restoration.RestorationSequence(
            images, np.arange(len(images)), rates, batch_size=batch_size, seed=0,
            augmentation={"flip": True, "rotation_deg": 10.0},
        )
        x, y = sequence[0]
        input_s = median_seconds(lambda sequence=sequence: sequence[0], args.repeats)
        step_s = median_seconds(lambda model=model, x=x, y=y: model.train_on_batch(x, y), args.repeats)
        rows.append({
            "network": name, "batch": batch_size, "input_batch_s": round(input_s, 4), "train_step_s": round(step_s, 4),
            "input_share_of_serial_step": round(input_s / (input_s + step_s), 3),
        })
    result = {
        "command": "python benchmarks/bench_restoration.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "backend": keras.backend.backend(),
        "size": args.size,
        "repeats": args.repeats,
        "per_distortion_ms_per_image": {k: round(v, 3) for k, v in per_distortion_ms.items()},
        "networks": rows,
    }
    print("| network | batch | input batch (s) | train step (s) | input share of a serial step |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['network']} | {row['batch']} | {row['input_batch_s']:.3f} | {row['train_step_s']:.3f} | "
              f"{row['input_share_of_serial_step']:.0%} |")
    print("per image, ms:", result["per_distortion_ms_per_image"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
