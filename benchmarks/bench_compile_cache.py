"""Compilation on JAX: one segmentation fold in a fresh process — the last incomplete batch and the persistent cache.

    KERAS_BACKEND=jax python benchmarks/bench_compile_cache.py                  # MedSeg fold 0, 128 px, base 16
    KERAS_BACKEND=jax python benchmarks/bench_compile_cache.py --repeats 3 --out benchmarks/results/compile_cache_cpu.json

Every fit is ``bench_segmentation.py infection ... --fold 0`` in a new Python process (what a rerun, another seed or
another process of a parallel CV is), on its own new run folder. Per repeat, in this order: (1) **off**: cache off
(``COVIDCT_COMPILATION_CACHE=off``) and ``--drop-last off`` (the baseline: what every process did before ``training.drop_last`` existed;
the last, incomplete batch compiles the step a second time), (2) **drop_last**: cache off, ``--drop-last auto`` (on
under JAX), (3) **cold**: an empty cache folder (compiles and writes the programs) and (4) **warm**: the same folder
again (loads them), both with ``--drop-last auto``. Reported: the fold's wall time as the process measured it (data
loading, model build, compilation, training, validation), medians over repeats, and each arm / off. Without
``--root`` (or the MedSeg data) the fold runs on phantom pairs. (``--arms off cold warm --drop-last off`` repeats
the first measurement, made before ``--drop-last`` existed.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: arm -> (persistent cache on, drop-last setting; None: the --drop-last argument)
ARMS = {"off": (False, "off"), "drop_last": (False, "auto"), "cold": (True, None), "warm": (True, None)}


def fit_fold(args, run_dir: Path, cache: str, drop_last: str) -> float:
    """Seconds that one fold's fit took in a fresh process (as ``bench_segmentation.py`` reports it)."""
    command = [
        sys.executable, str(REPO / "benchmarks" / "bench_segmentation.py"), "infection", "--model", "unet",
        "--batch-norm", "--bn-momentum", "0.9", "--rotation", "10", "--lung-input", "masked", "--batch-size", "8",
        "--epochs", str(args.epochs), "--folds", "5", "--size", str(args.size), "--base-filters", str(args.base_filters),
        "--run-dir", str(run_dir), "--fold", "0", "--drop-last", drop_last,
    ] + (["--root", args.root] if args.root else [])
    env = {**os.environ, "KERAS_BACKEND": "jax", "COVIDCT_COMPILATION_CACHE": cache, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    found = re.search(r"fitted in ([\d.]+) s", result.stdout)
    if result.returncode or not found:
        raise SystemExit(f"fold fit failed ({' '.join(command)}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return float(found.group(1))


def summary(args, times: dict, entries, command: str) -> dict:
    """The result so far: fits, medians over the repeats done, each arm's median over the baseline's."""
    done = {arm: values for arm, values in times.items() if values}
    medians = {arm: float(np.median(values)) for arm, values in done.items()}
    return {
        "what": "one infection U-Net fold (bench_segmentation.py --fold 0) in a fresh process: cache off / cold / warm",
        "data": args.root or "phantom pairs",
        "size_px": args.size,
        "base_filters": args.base_filters,
        "epochs": args.epochs,
        "repeats": max(len(values) for values in done.values()),
        "seconds": times,
        "median_seconds": medians,
        "arms": {arm: {"cache": bool(ARMS[arm][0]), "drop_last": ARMS[arm][1] or args.drop_last} for arm in args.arms},
        "over_off": {arm: medians[arm] / medians["off"] for arm in medians} if "off" in medians else None,
        "cache_entries": entries,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": command,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", default=None, help="MedSeg folder (default: the data root's medseg-covid19-100)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--drop-last", default="auto", choices=["auto", "on", "off"],
                        help="the drop-last setting of the cold and warm arms")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)
    if args.root is None:
        default = Path(os.environ.get("COVIDCT_DATA_ROOT", REPO.parent / "shared" / "data")) / "medseg-covid19-100"
        args.root = str(default) if default.is_dir() else None
    times = {arm: [] for arm in args.arms}
    command = "KERAS_BACKEND=jax python benchmarks/bench_compile_cache.py " + " ".join(argv or sys.argv[1:])
    out = None
    if args.out:  # an earlier result of another command is never overwritten
        from bench_segmentation import result_path  # same folder

        out = result_path(args.out, command, [])
    with tempfile.TemporaryDirectory(prefix="bench-compile-cache-") as scratch:
        scratch = Path(scratch)
        for repeat in range(args.repeats):
            cache = scratch / f"xla_{repeat}"
            for arm in args.arms:
                cache_setting, drop_last = ARMS[arm]
                run_dir = scratch / f"run_{repeat}_{arm}"
                times[arm].append(fit_fold(args, run_dir, str(cache) if cache_setting else "off",
                                           drop_last or args.drop_last))
                shutil.rmtree(run_dir, ignore_errors=True)
                print(f"repeat {repeat} {arm}: {times[arm][-1]:.1f} s", flush=True)
                entries = len(list(cache.iterdir())) if cache.is_dir() else None
                result = summary(args, times, entries, command)
                if out is not None:  # after every fit: a run cut short by a time limit keeps what it measured
                    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_seconds", "over_off", "cache_entries")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
