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

``--distribution`` checks instead that the two modes draw from the same distribution: ``--draws`` augmentations of
one phantom slice by each mode, with different seeds (independent draws, not the same pixels), compared by a
two-sample Kolmogorov-Smirnov test on per-image statistics (mean grey level, foreground fraction, centroid shift
in x and y, standard deviation) and a two-proportion test on the horizontal-flip rate. A negative control
(the ``robust`` chain against the stage augmentation, both eager) shows that the test detects a real difference.
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


def draw_statistics(images: np.ndarray, reference: np.ndarray) -> dict:
    """Per-image statistics of augmented draws (N, H, W, 1) of ``reference`` (H, W, 1)."""
    x = images[..., 0].astype("float64")
    h, w = x.shape[1:]
    mass = x.sum(axis=(1, 2)) + 1e-9
    cy = (x.sum(axis=2) * np.arange(h)).sum(axis=1) / mass
    cx = (x.sum(axis=1) * np.arange(w)).sum(axis=1) / mass
    ref = reference[..., 0].astype("float64")
    ref_cx = (ref.sum(axis=0) * np.arange(w)).sum() / ref.sum()
    # Flipped: the image's mass sits on the other side of the centre than the reference's (asymmetric phantom).
    left_heavy = (x[:, :, : w // 2].sum(axis=(1, 2)) > x[:, :, w - w // 2:].sum(axis=(1, 2)))
    ref_left_heavy = ref[:, : w // 2].sum() > ref[:, w - w // 2:].sum()
    return {"mean": x.mean(axis=(1, 2)), "std": x.std(axis=(1, 2)), "foreground": (x > 10).mean(axis=(1, 2)),
            "centroid_dx": cx - ref_cx, "centroid_dy": cy - (ref.sum(axis=1) * np.arange(h)).sum() / ref.sum(),
            "flipped": left_heavy != ref_left_heavy}


def distribution_check(preset: str, size: int, draws: int, batch: int) -> dict:
    """Eager vs compiled draws of ``preset`` (seeds 1 and 2) and the negative control, as KS tests."""
    from scipy.stats import ks_2samp

    from covidct.train.augment import BatchAugmenter
    from covidct.train.data import phantom_slice_data

    data = phantom_slice_data(n=20, size=size, seed=0)
    image = data.images[int(np.argmax(data.images.reshape(len(data.images), -1).mean(axis=1)))].astype("float32")
    left = image[:, : size // 2].sum() / image.sum()
    if abs(left - 0.5) < 0.02:  # make the slice asymmetric, so that a flip can be read off the image
        image[:, : size // 3] *= 0.5
    batch_of = np.repeat(image[None], batch, axis=0)

    def sample(factors, seed, compiled):
        augmenter = BatchAugmenter(factors, seed, compiled=compiled)
        return np.concatenate([augmenter(batch_of) for _ in range(int(np.ceil(draws / batch)))])[:draws]

    arms = {"eager": sample(factors_of(preset), 1, False), "compiled": sample(factors_of(preset), 2, True),
            "control": sample(factors_of("stage" if preset == "robust" else "robust"), 3, False)}
    stats = {name: draw_statistics(images, image) for name, images in arms.items()}
    out = {"preset": preset, "size": size, "draws": draws, "tests": {}}
    for other in ("compiled", "control"):
        tests = {}
        for key in ("mean", "std", "foreground", "centroid_dx", "centroid_dy"):
            result = ks_2samp(stats["eager"][key], stats[other][key])
            tests[key] = {"ks": float(result.statistic), "p": float(result.pvalue)}
        a, b = stats["eager"]["flipped"].mean(), stats[other]["flipped"].mean()
        pooled = (a + b) / 2
        z = (a - b) / np.sqrt(max(pooled * (1 - pooled) * 2 / draws, 1e-12))
        from scipy.stats import norm

        tests["flip_rate"] = {"eager": float(a), other: float(b), "z": float(z), "p": float(2 * norm.sf(abs(z)))}
        out["tests"][f"eager_vs_{other}"] = tests
        print(f"{preset} eager vs {other}: " + ", ".join(f"{k} p={v['p']:.3g}" for k, v in tests.items()), flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--distribution", action="store_true",
                        help="check that eager and compiled draws have the same distribution (KS tests) instead")
    parser.add_argument("--draws", type=int, default=512, help="draws per arm of --distribution")
    args = parser.parse_args(argv)

    import keras

    from covidct.train.augment import BatchAugmenter

    rows = []
    if args.distribution:
        rows = [distribution_check(preset, size, args.draws, args.batch) for preset in args.presets for size in args.sizes]
    for preset in args.presets if not args.distribution else ():
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
        "what": ("eager vs compiled draws: two-sample tests on per-image statistics" if args.distribution else
                 "augmentation of one training batch: BatchAugmenter eager vs compiled (median ms)"),
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
