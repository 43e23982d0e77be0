"""Training throughput with and without augmentation: the trainer's own train step fed by ``SliceSequence``.

    KERAS_BACKEND=tensorflow python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline_tensorflow_cpu.json
    KERAS_BACKEND=jax python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline_jax_cpu.json
    KERAS_BACKEND=jax python benchmarks/bench_pipeline.py --models efficientnet_b0 --size 224 --steps 40   # a GPU

Each arm is one way of feeding the same model: ``none`` (no augmentation, the baseline) or ``robust`` (the
``robust`` recipe's augmentation, ``training.augmentation: robust``), optionally with an input pipeline
and augmenter mode (``robust:threaded``: ``training.input_pipeline``; ``robust:compiled``, ``robust:eager``:
``BatchAugmenter(compiled=...)``; ``robust:threaded+compiled``). Every arm gets its
own model built, compiled and fed exactly as ``covidct train`` does (``build_configured_model``, the run's loss and
optimizer, ``model.fit`` over a ``SliceSequence`` of phantom slices with ``set_epoch``), so a step is the real
trainer's train step. One timed epoch = ``--steps`` full batches, from ``on_epoch_begin`` to ``on_epoch_end``;
after an untimed warm-up epoch per arm (compilation), the arms run in turn (A B C, A B C, ...: ``--repeats``
rounds) and each arm's median images/s is compared with the ``none`` arm of the same run. The load average is
recorded around every epoch: on a shared machine the ratios within one run are what counts.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_augment import device_name  # noqa: E402  (one device label for the augmentation benchmarks)


def parse_arm(text: str) -> tuple[str, str | None]:
    """``"robust:threaded"`` -> ("robust", "threaded"); ``"none"`` -> ("none", None)."""
    augmentation, _, pipeline = text.partition(":")
    return augmentation, pipeline or None


def make_arm(text: str, model_name: str, data, batch: int, steps: int):
    """(model, sequence) of one arm: the trainer's model, loss and optimizer, and its training sequence."""
    import keras

    from covidct.config import config_from_dict
    from covidct.train.build import build_configured_model, make_optimizer
    from covidct.train.data import SliceSequence
    from covidct.train.losses import make_loss
    from covidct.train.recipes import augmentation_factors

    augmentation, pipeline = parse_arm(text)
    training = {"augmentation": augmentation, "batch_size": batch, "mixed_precision": "off", "seed": 0,
                "max_steps_per_epoch": steps, "shortcut_probe": False}
    cfg = config_from_dict({"name": "bench", "data": {"dataset": "phantom", "stage": "original",
                                                      "size": int(data.images.shape[1])},
                            "model": {"name": model_name}, "training": training})
    keras.utils.set_random_seed(0)
    model = build_configured_model(cfg, data.images, len(data.class_names))
    model.compile(optimizer=make_optimizer(cfg, cfg.training.learning_rate, steps * 100),
                  loss=make_loss(cfg.training.loss, len(data.class_names)))
    options = (pipeline or "").split("+")
    modes = [o for o in options if o in ("eager", "compiled")]  # BatchAugmenter's mode; the rest: the pipeline
    pipelines = [o for o in options if o and o not in modes]
    sequence = SliceSequence(data.images, data.indices("train"), labels=data.labels, batch_size=batch, shuffle=True,
                             seed=0, augmentation=augmentation_factors(cfg.training, "original"), max_steps=steps,
                             **({"pipeline": pipelines[0]} if pipelines else {}))
    if modes and sequence.augmenter is not None:
        sequence.augmenter.compiled = modes[0] == "compiled"
    return model, sequence


class EpochTimer:
    """Seconds from ``on_epoch_begin`` to ``on_epoch_end`` of the last ``model.fit`` epoch."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds = time.perf_counter() - self.started

        return Timer()


def run_epoch(model, sequence, epoch: int) -> float:
    timer = EpochTimer()
    sequence.set_epoch(epoch)
    model.fit(sequence, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return timer.seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["small_cnn", "efficientnet_b0"])
    parser.add_argument("--arms", nargs="+", default=["none", "robust"],
                        help="AUGMENTATION[:PIPELINE], the first is the baseline (default: none robust)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per epoch (full batches)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per arm (rounds over the arms)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)

    import keras

    import covidct.models  # noqa: F401  (registers the models)
    from covidct.train.data import phantom_slice_data

    n = int(np.ceil(args.steps * args.batch / 0.8 / 5) * 5) + 10
    data = phantom_slice_data(n=n, size=args.size, seed=0)
    rows = []
    for model_name in args.models:
        arms = {arm: make_arm(arm, model_name, data, args.batch, args.steps) for arm in args.arms}
        for model, sequence in arms.values():
            run_epoch(model, sequence, 0)  # warm-up: compilation, first calls
        seconds, loads = {arm: [] for arm in arms}, {arm: [] for arm in arms}
        for repeat in range(args.repeats):
            for arm, (model, sequence) in arms.items():
                load = os.getloadavg()[0]
                seconds[arm].append(run_epoch(model, sequence, repeat + 1))
                loads[arm].append([load, os.getloadavg()[0]])
                print(f"{model_name} {arm:>16} round {repeat + 1}: {seconds[arm][-1]:.2f} s "
                      f"({args.steps * args.batch / seconds[arm][-1]:.1f} img/s), load {load:.1f}", flush=True)
        baseline = float(np.median(seconds[args.arms[0]]))
        for arm in arms:
            median = float(np.median(seconds[arm]))
            rows.append({"model": model_name, "arm": arm, "size": args.size, "batch": args.batch, "steps": args.steps,
                         "median_epoch_s": median, "images_per_s": args.steps * args.batch / median,
                         "throughput_ratio": baseline / median, "augmentation_overhead": median / baseline - 1,
                         "epoch_seconds": seconds[arm], "load_average_before_after": loads[arm]})
            print(f"{model_name} {arm:>16}: median {median:.2f} s/epoch, "
                  f"{args.steps * args.batch / median:.1f} img/s, throughput x{baseline / median:.3f} of "
                  f"{args.arms[0]}", flush=True)
        keras.backend.clear_session()
    result = {
        "what": "training throughput of the trainer's train step, arms interleaved, median of the timed epochs",
        "backend": keras.backend.backend(),
        "device": device_name(),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "rows": rows,
        "command": "python benchmarks/bench_pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out:
        from covidct.train.state import write_json_atomic

        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
