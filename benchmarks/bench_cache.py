"""Benchmark of the preprocessing cache on SARS-CoV-2 CT-scan (2,481 PNG slices).

Measures, on this machine:
1. build speed of the 224-px cache (images/s) with all cores, for the ``original`` stage and for a
   bare decode + resize stage (the cache's own overhead, independent of the stage's work);
2. the time to read a batch of 64 from the memory-mapped cache (contiguous slice and random rows);
3. the peak resident memory (RSS) of building the 512-px cache: the main process and the largest worker.

Usage::

    python benchmarks/bench_cache.py [--data-root ../shared/data] [--workers N] [--out results.json]

Each build goes to a fresh temporary cache folder, so nothing is reused between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def bare_resize(image, size):
    """Decode-only baseline stage: display image resized to size x size, empty mask."""
    import cv2

    from covidct.data.windows import to_display
    from covidct.preprocess.stages import StageOutput

    resized = cv2.resize(to_display(image), (size, size), interpolation=cv2.INTER_AREA)
    return [StageOutput(resized[..., None], np.zeros((size, size), np.uint8))]


def manifest_for(data_root: Path):
    from covidct.data.datasets import load_dataset
    from covidct.data.splits import assign_splits

    return assign_splits(load_dataset("sars-cov-2-ct", root=data_root / "sars-cov-2-ct-scan", group_proxy="blocks"))


def build_speed(manifest, stage: str, size: int, workers: int) -> dict:
    from covidct.data.cache import build_cache
    from covidct.preprocess import get_stage

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        cache = build_cache(manifest, stage=get_stage(stage), size=size, cache_root=folder, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        result = {"stage": stage, "size": size, "workers": workers, "images": len(manifest), "seconds": round(seconds, 2),
                  "images_per_s": round(len(manifest) / seconds, 1), "failed": len(cache.failed)}
        result.update(batch_read(cache))
    return result


def batch_read(cache, batch: int = 64, repeats: int = 200) -> dict:
    rng = np.random.default_rng(0)
    contiguous, random_rows = [], []
    for _ in range(repeats):
        start = int(rng.integers(0, len(cache) - batch))
        t = time.perf_counter()
        np.array(cache.images[start : start + batch], dtype=np.float32)
        contiguous.append(time.perf_counter() - t)
        rows = np.sort(rng.choice(len(cache), batch, replace=False))
        t = time.perf_counter()
        np.array(cache.images[rows], dtype=np.float32)
        random_rows.append(time.perf_counter() - t)
    return {"batch64_contiguous_ms": round(1000 * float(np.median(contiguous)), 3),
            "batch64_random_ms": round(1000 * float(np.median(random_rows)), 3)}


def rss_child(data_root: Path, size: int, workers: int, stage: str = "original") -> None:
    """Build one cache and print peak RSS (MiB) of this process and of its largest worker."""
    import covidct.preprocess  # noqa: F401
    from covidct.data.cache import build_cache
    from covidct.preprocess.stages import STAGES, get_stage, register_stage

    if stage == "bench-bare-resize" and stage not in STAGES:
        register_stage(stage)(bare_resize)
    manifest = manifest_for(data_root)
    with tempfile.TemporaryDirectory() as folder:
        build_cache(manifest, stage=get_stage(stage), size=size, cache_root=folder, workers=workers, progress=False)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"size": size, "stage": stage, "main_peak_rss_mib": round(own, 1), "largest_worker_peak_rss_mib": round(children, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("COVIDCT_DATA_ROOT", "../shared/data"))
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-stage", default="original", help="stage of the 512-px memory run")
    args = parser.parse_args()
    data_root = Path(args.data_root)
    if args.rss_child:
        rss_child(data_root, args.rss_child, args.workers, args.rss_stage)
        return
    import covidct.preprocess  # noqa: F401  (registers the real stages)
    from covidct.preprocess.stages import STAGES, register_stage

    if "bench-bare-resize" not in STAGES:
        register_stage("bench-bare-resize")(bare_resize)
    manifest = manifest_for(data_root)
    results = {"cpu_count": os.cpu_count(), "builds": []}
    for stage in ("bench-bare-resize", "original"):
        results["builds"].append(build_speed(manifest, stage, 224, args.workers))
        print(json.dumps(results["builds"][-1]), flush=True)
    child = subprocess.run([sys.executable, __file__, "--data-root", str(data_root), "--workers", str(args.workers),
                            "--rss-child", "512", "--rss-stage", args.rss_stage], capture_output=True, text=True, check=True)
    results["rss_512"] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(results["rss_512"]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
