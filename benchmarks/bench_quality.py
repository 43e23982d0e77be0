"""Quality on real data: sars-cov-2-ct with a grouped split vs a random split (the leakage gap), then the
grouped model on covid-ct-md-sample slices (COVID-19 vs CAP+Normal) at slice and patient level.

    python benchmarks/bench_quality.py --data-root ../shared/data                 # ~30 CPU min per run
    python benchmarks/bench_quality.py --data-root ../shared/data --smoke         # 1 epoch, 64 px, minutes
    KERAS_BACKEND=jax python benchmarks/bench_quality.py --data-root /data --size 128 --epochs 40  # GPU

Finished runs under --runs are reused (rerun the script to resume). Every number is a test-split (or
external) score with a 95% bootstrap CI over groups; checkpoints were selected on validation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sars-cov-2-ct" / "small_cnn-original-classw-dataaug.yaml"
EXTERNAL_MAP = {"COV": "COV", "OtherPneumonia": "NonCOV", "Normal": "NonCOV"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--set", action="append", default=[], help="extra config override")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--runs", default="runs/bench-quality")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/bench_quality.json")
    return parser.parse_args(argv)


def fmt(block: dict, key: str) -> str:
    value = block.get(key)
    ci = (block.get("ci") or {}).get(key) or {}
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci.get('low', float('nan')):.3f}, {ci.get('high', float('nan')):.3f}]"


def main(argv=None) -> dict:
    args = parse_args(argv)
    from covidct.config import load_config
    from covidct.evaluate import evaluate_run
    from covidct.train.run import train_or_reuse

    root = Path(args.data_root)
    overrides = [f"data.root={root / 'sars-cov-2-ct-scan'}", f"evaluation.n_bootstrap={args.bootstrap}", *args.set]
    if args.size:
        overrides.append(f"data.size={args.size}")
    if args.epochs:
        overrides.append(f"training.epochs={args.epochs}")
    if args.smoke:
        overrides += ["data.size=64", "training.epochs=1", "training.max_steps_per_epoch=10", "evaluation.n_bootstrap=50"]
    rows, results = [], {}
    for split_name, proxy in (("grouped", None), ("random", "image")):
        extra = [f"data.options={{group_proxy: {proxy}}}"] if proxy else []
        cfg = load_config(args.config, overrides + extra)
        run_dir = train_or_reuse(cfg, Path(args.runs) / f"{cfg.model.name}-{split_name}")
        result = evaluate_run(run_dir, split="test", n_bootstrap=None, figures=True, progress=True)
        results[split_name] = result
        rows.append((f"sars-cov-2-ct test, {split_name} split", result["evaluated_on"], result["slice"]))
    external = evaluate_run(
        Path(args.runs) / f"{cfg.model.name}-grouped", dataset="covid-ct-md", root=root / "covid-ct-md-sample",
        label_map=EXTERNAL_MAP, n_bootstrap=None, figures=True, progress=True,
    )
    results["external"] = external
    rows.append(("covid-ct-md-sample slices (external)", external["evaluated_on"], external["slice"]))
    for method, block in external["patient"].items():
        if "macro_f1" in block:
            rows.append((f"covid-ct-md-sample patients ({method})", {"n_images": block["n"], "n_groups": block["n"]}, block))

    print("| evaluated on | images / groups | macro-F1 [95% CI] | AUC [95% CI] |\n|---|---|---|---|")
    for label, where, block in rows:
        print(f"| {label} | {where.get('n_images')} / {where.get('n_groups')} | {fmt(block, 'macro_f1')} | {fmt(block, 'auc_macro_ovr')} |")
    print("\nCheckpoints selected on each run's validation split. The random split puts near-duplicate slices of one "
          "patient in train and test: its gap to the grouped split is the leakage. External: COVID-19 -> COV, "
          "CAP + Normal -> NonCOV.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: {"evaluated_on": v["evaluated_on"], "slice": v["slice"], "patient": v.get("patient")}
                               for k, v in results.items()}, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
