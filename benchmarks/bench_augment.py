"""Training augmentation per batch: ``BatchAugmenter`` eager vs compiled, on the current backend.

    python benchmarks/bench_augment.py                                   # TensorFlow (default backend), CPU
    KERAS_BACKEND=jax python benchmarks/bench_augment.py --out benchmarks/results/augment_jax_cpu.json
    KERAS_BACKEND=jax python benchmarks/bench_augment.py --sizes 224 --batch 32   # on a GPU machine

``covidct.train.data`` augments every training batch outside the compiled training step with
``covidct.train.augment.BatchAugmenter``. This script times its two modes: **eager** (the ``keras.Sequential`` of
random layers called op by op, the result brought back to host memory) and **compiled** (the same layers as one
function: ``tf.function`` on TensorFlow, the default there; ``jax.jit`` of ``stateless_call`` with
the seed states threaded through on JAX, where the default stays eager), for the stage augmentation (flip, rotation,
zoom, translation) and the ``robust`` chain (+ blur/sharpen, noise, gamma, contrast, JPEG), on random float32
batches (content does not change the cost). Per arm: a warm-up call (compilation) then ``--repeats`` timed calls,
arms alternated, each call ending with the batch in host memory; medians. It measures; it changes nothing in the
training path (``compile_augmentation`` decides the default).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

#: The augmentations timed: the default stage setting and the robust chain.
PRESETS = ("stage", "robust")


def factors_of(preset: str) -> dict:
    from covidct.train.recipes import DEFAULT_AUGMENTATION, ROBUST_AUGMENTATION

    if preset == "robust":
        return dict(ROBUST_AUGMENTATION)
    rotation, zoom, translation = DEFAULT_AUGMENTATION
    return {"rotation": rotation, "zoom": zoom, "translation": translation, "flip": True}


def device_name() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return "GPU" if gpus else "CPU"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)

    import keras

    from covidct.train.augment import BatchAugmenter

    rows = []
    for preset in args.presets:
        for size in args.sizes:
            x = np.random.default_rng(0).uniform(0, 255, (args.batch, size, size, 1)).astype("float32")
            arms = {name: BatchAugmenter(factors_of(preset), 0, compiled=name == "compiled") for name in ("eager", "compiled")}
            seconds = {name: [] for name in arms}
            for call in arms.values():
                call(x)  # warm-up: traces and compiles
            for _ in range(args.repeats):
                for name, call in arms.items():
                    started = time.perf_counter()
                    call(x)
                    seconds[name].append(time.perf_counter() - started)
            eager, compiled = (float(np.median(seconds[name])) for name in ("eager", "compiled"))
            rows.append({"preset": preset, "size": size, "batch": args.batch, "eager_ms": 1000 * eager,
                         "compiled_ms": 1000 * compiled, "compiled_over_eager": compiled / eager,
                         "seconds": seconds})
            print(f"{preset:>6} {size:>4} px, batch {args.batch}: eager {1000 * eager:7.1f} ms, "
                  f"compiled {1000 * compiled:7.1f} ms ({compiled / eager:.2f})", flush=True)
    result = {
        "what": "augmentation of one training batch: BatchAugmenter eager vs compiled (median ms)",
        "backend": keras.backend.backend(),
        "device": device_name(),
        "machine": f"{platform.node()} {platform.machine()}",
        "repeats": args.repeats,
        "rows": rows,
        "command": "python benchmarks/bench_augment.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out:
        from covidct.train.state import write_json_atomic

        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
