"""Scaling measurements on the CPU: data-parallel correctness, `covidct predict` throughput and memory, Dask.

    nice -n 10 python benchmarks/bench_scale.py                      # every part (about 15 CPU minutes)
    python benchmarks/bench_scale.py --parts dp loopback --repeats 3
    python benchmarks/bench_scale.py --parts cache --cache ~/.cache/covidct/lungs-robust-128-*

Parts:
  dp        step time of a small conv net (64 px, global batch 32) on 1 vs 2 virtual JAX CPU devices
            (XLA_FLAGS=--xla_force_host_platform_device_count=2, one subprocess), and the largest weight
            difference after the same steps: correctness, not speed (the 2 "devices" share the same cores).
  loopback  two JAX processes on 127.0.0.1 (jax.distributed, CPU collectives): weight difference between the
            two processes and against one process with the same global batch.
  predict   `covidct predict` of 5,000 and 20,000 phantom slices (64 px PNGs, a 32 px-input run built here,
            untrained: prediction throughput does not depend on the weights), each in a fresh process:
            slices/s and peak RSS (must stay flat as the input grows).
  dask      the same prediction of 2,000 slices in 4 shards: sequential vs `--executor dask` (LocalCluster,
            2 worker processes), cluster start-up included.
  cache     bytes per slice of built slice caches (``--cache`` folders), i.e. the cache's size per 100k slices.

Writes benchmarks/results/scale_cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH, SIZE = 12, 32, 64


# ---------------------------------------------------------------- subprocess bodies
def _fit(setting: str, timed: bool) -> dict:
    import keras

    from covidct.train.distribution import distributed, process_rows, resolve_distribution

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(STEPS * BATCH, SIZE, SIZE, 1)).astype("float32")
    labels = (images.mean(axis=(1, 2, 3)) > 0).astype("int32")
    plan = resolve_distribution(setting, BATCH)
    with distributed(plan):
        model = keras.Sequential([keras.Input((SIZE, SIZE, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
                                  keras.layers.MaxPooling2D(), keras.layers.Conv2D(32, 3, activation="relu"),
                                  keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        times = []
        for step in range(STEPS):
            rows = slice(step * BATCH, (step + 1) * BATCH)
            x, y = process_rows((images[rows], labels[rows]), plan)
            start = time.perf_counter()
            np.asarray(model.train_on_batch(x, y))
            times.append(time.perf_counter() - start)
        weights = [np.asarray(w) for w in model.get_weights()]
    return {"step_s": times[2:], "weights": weights, "replicas": plan.replicas}  # 2 warm-up steps (compile)


def worker_dp(out: str) -> None:
    one, two = _fit("off", True), _fit("data_parallel", True)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(one["weights"], two["weights"]))
    Path(out).write_text(json.dumps({"off_step_s": one["step_s"], "dp_step_s": two["step_s"],
                                     "replicas": two["replicas"], "max_weight_diff": diff}))


def worker_loopback(out: str) -> None:
    result = _fit("data_parallel" if os.environ.get("COVIDCT_COORDINATOR_ADDRESS") else "off", False)
    np.savez(out, *result["weights"])


def worker_predict(run: str, images: str, out: str, result: str, executor: str) -> None:
    from covidct.predict.batch import predict_batch

    start = time.perf_counter()
    summary = predict_batch(run, out, [images], shard_size=500,
                            batch_size=64, executor="local" if executor.startswith("local") else executor,
                            workers=2, progress=False)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(result).write_text(json.dumps({**summary, "wall_s": seconds, "peak_rss_mib": peak_kib / 1024}))


# ---------------------------------------------------------------- helpers
def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def _run(args: list, env: dict, timeout: float = 1800) -> None:
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-4000:])


def part_dp(repeats: int, tmp: Path) -> dict:
    runs = []
    for r in range(repeats):
        out = tmp / f"dp_{r}.json"
        _run(["--worker", "dp", str(out)], _env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
                                                XLA_FLAGS="--xla_force_host_platform_device_count=2"))
        runs.append(json.loads(out.read_text()))
    one = statistics.median(s for r in runs for s in r["off_step_s"])
    two = statistics.median(s for r in runs for s in r["dp_step_s"])
    return {"model": "2 conv + BN + dense, 64 px, global batch 32, Adam", "repeats": repeats,
            "steps_timed_per_run": len(runs[0]["off_step_s"]), "one_device_step_ms": round(one * 1e3, 2),
            "two_devices_step_ms": round(two * 1e3, 2), "ratio_two_vs_one": round(two / one, 3),
            "max_weight_diff": max(r["max_weight_diff"] for r in runs)}


def part_loopback(tmp: Path) -> dict:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = _env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "loopback", str(tmp / f"p{k}.npz")],
                              env={**base, "COVIDCT_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                   "COVIDCT_NUM_PROCESSES": "2", "COVIDCT_PROCESS_ID": str(k)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode:
            raise RuntimeError(err[-4000:])
    wall = time.perf_counter() - start
    _run(["--worker", "loopback", str(tmp / "single.npz")], base)
    p0, p1, single = (np.load(tmp / f"{n}.npz") for n in ("p0", "p1", "single"))
    keys = list(p0.files)
    return {"processes": 2, "global_batch": BATCH, "steps": STEPS,
            "max_diff_between_processes": max(float(np.abs(p0[k] - p1[k]).max()) for k in keys),
            "max_diff_vs_one_process": max(float(np.abs(p0[k] - single[k]).max()) for k in keys),
            "two_process_wall_s": round(wall, 1)}


def _tiny_run(folder: Path) -> Path:
    import keras

    from covidct.config import config_from_dict, dump_config

    folder.mkdir(parents=True, exist_ok=True)
    cfg = config_from_dict({"name": "bench", "data": {"dataset": "phantom", "stage": "original", "size": 32},
                            "model": {"name": "simple_cnn"}})
    dump_config(cfg, folder / "config.yaml")
    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(8, 3),
                      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]).save(folder / "model.keras")
    (folder / "run.json").write_text(json.dumps({"class_names": ["COV", "Normal", "OtherPneumonia"],
                                                 "stage": "original", "size": 32, "input_names": ["image"]}))
    return folder


def _phantom_pngs(folder: Path, count: int, distinct: int = 200) -> Path:
    """``count`` 64 px phantom PNGs (``distinct`` different slices, repeated under new names)."""
    import cv2

    from covidct.data.phantom import CLASSES, make_slice
    from covidct.data.windows import window_hu

    folder.mkdir(parents=True, exist_ok=True)
    encoded = []
    for i in range(distinct):
        pixels = np.round(window_hu(make_slice(CLASSES[i % 3], size=64, seed=i).image_hu) * 255).astype(np.uint8)
        encoded.append(cv2.imencode(".png", pixels)[1].tobytes())
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"slice_{i:06d}.png").write_bytes(encoded[i % distinct])
    return folder


def part_predict(tmp: Path, sizes: list[int]) -> dict:
    run = _tiny_run(tmp / "run")
    rows = []
    for count in sizes:
        images = _phantom_pngs(tmp / f"images_{count}", count)
        result = tmp / f"predict_{count}.json"
        _run(["--worker", "predict", str(run), str(images), str(tmp / f"out_{count}"), str(result), "local"],
             _env(KERAS_BACKEND="tensorflow"))
        r = json.loads(result.read_text())
        rows.append({"slices": count, "wall_s": round(r["wall_s"], 1), "slices_per_s": round(count / r["wall_s"], 1),
                     "peak_rss_mib": round(r["peak_rss_mib"], 1), "shards": r["shards"]})
    return {"stage": "original (with its lung mask), run input 32 px, PNG 64 px", "shard_size": 500, "batch": 64,
            "rows": rows, "peak_rss_ratio_largest_vs_smallest": round(rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"], 3)}


def part_dask(tmp: Path, repeats: int) -> dict:
    run = _tiny_run(tmp / "run_dask")
    images = _phantom_pngs(tmp / "images_dask", 2000)
    times = {"local": [], "dask": []}
    for r in range(repeats):
        for executor in (("local", "dask") if r % 2 == 0 else ("dask", "local")):  # mirrored order
            result = tmp / f"dask_{executor}_{r}.json"
            _run(["--worker", "predict", str(run), str(images), str(tmp / f"dask_out_{executor}_{r}"), str(result),
                  executor], _env(KERAS_BACKEND="tensorflow"))
            times[executor].append(json.loads(result.read_text())["wall_s"])
    same = all((tmp / f"dask_out_local_{r}" / "shards" / f"part-{k:05d}.csv").read_bytes()
               == (tmp / f"dask_out_dask_{r}" / "shards" / f"part-{k:05d}.csv").read_bytes()
               for r in range(repeats) for k in range(4))
    local, dask = statistics.median(times["local"]), statistics.median(times["dask"])
    return {"slices": 2000, "shards": 4, "workers": 2, "repeats": repeats, "local_wall_s": times["local"],
            "dask_wall_s": times["dask"], "median_local_s": round(local, 1), "median_dask_s": round(dask, 1),
            "ratio_dask_vs_local": round(dask / local, 3), "shards_identical": same}


def part_cache(folders: list[str]) -> dict:
    rows = []
    for folder in folders:
        path = Path(folder)
        meta = json.loads((path / "meta.json").read_text())
        count = sum(1 for _ in open(path / "manifest.csv")) - 1
        total = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        rows.append({"cache": path.name, "size_px": meta.get("size"), "channels": meta.get("channels"),
                     "slices": count, "bytes": total, "bytes_per_slice": round(total / count),
                     "gb_per_100k_slices": round(total / count * 1e5 / 1e9, 2)})
    return {"caches": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["dp", "loopback", "predict", "dask", "cache"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--cache", nargs="*", default=[], help="built slice-cache folders for the cache part")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_cpu.json"))
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        {"dp": worker_dp, "loopback": worker_loopback, "predict": worker_predict}[kind](*rest)
        return
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["machine"] = {"node": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
                          "load_average_at_start": os.getloadavg(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        tmp = Path(tmp)
        for part in args.parts:
            started = time.perf_counter()
            if part == "dp":
                results["dp"] = part_dp(args.repeats, tmp)
            elif part == "loopback":
                results["loopback"] = part_loopback(tmp)
            elif part == "predict":
                results["predict"] = part_predict(tmp, args.sizes)
            elif part == "dask":
                results["dask"] = part_dask(tmp, args.repeats)
            elif part == "cache":
                results["cache"] = part_cache(args.cache)
            results[part]["load_average_after"] = os.getloadavg()
            print(f"{part} ({time.perf_counter() - started:.0f} s): {json.dumps(results[part])}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
