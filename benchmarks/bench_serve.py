"""Load benchmark of ``covidct serve``: latency, throughput, the queue's 503s and memory, on loopback.

For each model a run is served by ``covidct serve`` in a subprocess (``--workers W --queue Q``) and clients on the
same machine upload one 512 x 512 phantom slice (PNG) to ``POST /api/predict`` (each answer includes Grad-CAM, the
lung mask and the lung-focus score). Measured, per model:

1. **sequential**: one client, ``--requests`` requests: p50/p95 latency (the target: p95 <= 300 ms for small_cnn);
   repeated ``--repeats`` times, the median of the repeats is reported;
2. **below the limit**: ``--clients`` (16) concurrent clients for ``--duration`` seconds against a server whose
   capacity (workers + queue) is at least that many: p50/p95 latency, throughput, errors (expected: none);
3. **above the limit**: twice as many clients: how many answers are 503 with ``Retry-After`` and that no other
   error occurs;
4. **memory**: the server's RSS every 100 requests over ``--memory-requests`` (1,000) requests from 4 clients.

Baseline, measured in the same run: the bare model call on one already-preprocessed sample
(``model(x, training=False)``), and the run's preprocessing stage alone on the 512 x 512 slice; the report gives
the ratio of the served p50 to the bare model call.

Runs are phantom-trained for one short epoch by default (the weights do not change the latency); ``--run NAME=DIR``
serves an existing run instead. Client and server share the machine's cores: run it niced, on an idle machine for
numbers worth comparing.

Usage::

    nice -n 10 python benchmarks/bench_serve.py [--models small_cnn efficientnet_b0] [--duration 20]
        [--repeats 3] [--out benchmarks/results/serve_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SIZES = {"small_cnn": 128, "efficientnet_b0": 224}
STAGE = "lungs-robust"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def slice_png(size: int = 512, seed: int = 3) -> bytes:
    import cv2

    from covidct.data.phantom import make_dataset
    from covidct.data.windows import window_hu

    phantoms = make_dataset(n=3, size=size, seed=seed, slices_per_patient=1)
    ok, data = cv2.imencode(".png", np.rint(window_hu(phantoms.images_hu[0]) * 255).astype(np.uint8))
    return data.tobytes()


def phantom_run(model: str, folder: Path) -> Path:
    """A run of ``model`` on phantoms, one short epoch (stage ``lungs-robust``, the model's usual size)."""
    import covidct.models  # noqa: F401
    from covidct.config import config_from_dict
    from covidct.data.phantom import make_dataset
    from covidct.data.windows import window_hu
    from covidct.train import train
    from covidct.train.data import data_from_arrays

    size = SIZES[model]
    phantoms = make_dataset(n=60, size=size, seed=0, slices_per_patient=2)
    images = np.round(window_hu(phantoms.images_hu) * 255).astype(np.uint8)[..., None]
    groups = np.asarray(phantoms.groups)
    patients = sorted(set(groups))
    order = np.random.default_rng(0).permutation(len(patients))
    split = {patients[j]: ("train", "train", "val", "test")[rank % 4] for rank, j in enumerate(order)}
    import pandas as pd

    manifest = pd.DataFrame({"path": [f"phantom/{i}.npy" for i in range(len(groups))], "label": phantoms.labels,
                             "group": groups, "split": [split[g] for g in groups], "source": "phantom"})
    data = data_from_arrays(images, manifest, source="phantom")
    cfg = config_from_dict({
        "name": f"serve-bench-{model}",
        "data": {"dataset": "phantom", "stage": STAGE, "size": size},
        "model": {"name": model},
        "training": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "shortcut_probe": False,
                     "mixed_precision": "off", "min_epochs": 0, "early_stopping_patience": 0, "bn_recalibration": 0},
    })
    return train(cfg, run_dir=folder / model, data=data, progress=False)


def baseline(run_dir: Path, png: bytes, calls: int = 30) -> dict:
    """Median seconds of the bare model call on one preprocessed sample, and of the stage alone."""
    import cv2

    import covidct.preprocess  # noqa: F401
    from covidct.data.io import CTImage
    from covidct.models.inference import load_model_file
    from covidct.preprocess.stages import get_stage
    from covidct.runs import read_run_info

    info = read_run_info(run_dir)
    model = load_model_file(Path(run_dir) / "model.keras")
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float32)
    stage = get_stage(info["stage"])
    stage_times = []
    for _ in range(5):
        started = time.perf_counter()
        output = stage(CTImage(pixels, "display"), int(info["size"]))[0]
        stage_times.append(time.perf_counter() - started)
    sample = (output.image if output.image.ndim == 3 else output.image[..., None])[None].astype(np.float32)
    model(sample, training=False)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        np.asarray(model(sample, training=False))
        times.append(time.perf_counter() - started)
    return {"model_call_ms": 1000 * statistics.median(times), "stage_ms": 1000 * statistics.median(stage_times)}


class Server:
    def __init__(self, run_dir: Path, workers: int, queue: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "covidct", "serve", "--run", str(run_dir), "--port", str(self.port),
             "--workers", str(workers), "--queue", str(queue)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
        )

    def wait(self, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"covidct serve exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("covidct serve did not start")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / (1 << 20)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def load(url: str, png: bytes, clients: int, duration: float | None = None, total: int | None = None,
         on_count=None) -> dict:
    """``clients`` threads posting ``png`` until ``duration`` seconds or ``total`` requests; latencies and statuses."""
    import httpx

    latencies, statuses, lock = [], {}, threading.Lock()
    done = {"n": 0}
    stop_at = None if duration is None else time.monotonic() + duration

    def worker():
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    if (total is not None and done["n"] >= total) or (stop_at is not None and time.monotonic() >= stop_at):
                        return
                    done["n"] += 1
                    count = done["n"]
                started = time.perf_counter()
                try:
                    response = http.post(url + "/api/predict", files={"file": ("slice.png", png, "image/png")})
                    status = response.status_code
                    if status == 503:
                        assert response.headers.get("retry-after")
                        time.sleep(0.05)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status == 200:
                        latencies.append(elapsed)
                if on_count is not None:
                    on_count(count)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "clients": clients,
        "requests": int(sum(statuses.values())),
        "statuses": statuses,
        "seconds": round(wall, 1),
        "ok_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
    }


def bench_model(model: str, run_dir: Path, png: bytes, args) -> dict:
    row = {"model": model, "run": str(run_dir)}
    row["baseline"] = {k: round(v, 2) for k, v in baseline(run_dir, png).items()}
    server = Server(run_dir, workers=args.workers, queue=args.clients - args.workers)
    try:
        server.wait()
        load(server.url, png, 1, total=5)  # warm-up
        repeats = [load(server.url, png, 1, total=args.requests) for _ in range(args.repeats)]
        row["sequential"] = {
            "repeats": repeats,
            "p50_ms": statistics.median(r["p50_ms"] for r in repeats),
            "p95_ms": statistics.median(r["p95_ms"] for r in repeats),
        }
        row["ratio_p50_vs_model_call"] = round(row["sequential"]["p50_ms"] / row["baseline"]["model_call_ms"], 1)
        row["below_limit"] = load(server.url, png, args.clients, duration=args.duration)
        row["above_limit"] = load(server.url, png, 2 * args.clients, duration=args.duration)
        if args.memory_requests:
            samples = []

            def sample(count):
                if count % 100 == 0:
                    samples.append((count, round(server.rss_mb(), 1)))

            samples.append((0, round(server.rss_mb(), 1)))
            memory = load(server.url, png, 4, total=args.memory_requests, on_count=sample)
            row["memory"] = {**memory, "rss_mb": sorted(samples)}
    finally:
        server.stop()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "efficientnet_b0"])
    parser.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR: serve this run for NAME")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=40, help="sequential requests per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-requests", type=int, default=1000)
    parser.add_argument("--memory-models", nargs="*", default=["small_cnn"])
    parser.add_argument("--out", default="benchmarks/results/serve_cpu.json")
    args = parser.parse_args(argv)

    given = dict(item.split("=", 1) for item in args.run)
    png = slice_png()
    rows = []
    with tempfile.TemporaryDirectory(prefix="covidct-bench-serve-") as folder:
        for model in args.models:
            run_dir = Path(given[model]) if model in given else phantom_run(model, Path(folder))
            memory = args.memory_requests if model in args.memory_models else 0
            row = bench_model(model, run_dir, png, argparse.Namespace(**{**vars(args), "memory_requests": memory}))
            if model not in given:
                row["run"] = f"phantom-trained {model}, stage {STAGE} at {SIZES[model]} px (1 short epoch)"
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
    import keras

    result = {
        "benchmark": "covidct serve: POST /api/predict of one 512x512 PNG slice (prediction + Grad-CAM + lung mask)",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "keras_backend": keras.backend.backend(),
                    "niceness": os.nice(0), "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "settings": {k: v for k, v in vars(args).items() if k not in ("run", "out")},
        "target": "p95 <= 300 ms, sequential, small_cnn",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
