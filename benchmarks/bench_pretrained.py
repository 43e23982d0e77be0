"""Pretrained EfficientNet-Lite0 (ImageNet, converted offline) on sars-cov-2-ct: frozen features vs fine-tuning.

Protocol (fixed before any test score was seen):

* Data: the grouped sars-cov-2-ct split of the shipped from-scratch recipe (``data.seed: 0``, 70/15/15).
* ``features``: frozen Lite0 features (global average pool of ``top_activation``, 1280-d) per stage, logistic
  regression with C chosen by grouped 4-fold CV over the non-test rows (pooled out-of-fold macro-F1), refitted
  on them, then scored once on test (``covidct features --select-c``).
* ``finetune``: run folders trained with ``configs/sars-cov-2-ct/efficientnet_lite0-imagenet-lungs-robust-top8.yaml``
  (one per seed; the recipe was fixed a priori, the validation split picks the checkpoint by ``val_auc``),
  scored on test with group-bootstrap CIs and, when several, as the seed ensemble.
* External, never used for a choice: COVID-CT-MD (``covid-ct-md`` sample), COVID-19 vs CAP + Normal,
  lung-containing slices, slice AUC with a CI over patients, and patients ranked by mean slice probability
  (the evaluation of ``covidct.experiments.ablation``, called, not copied).
* Grad-CAM lung focus (``covidct evaluate --lung-focus``) of the fine-tuned runs and of a from-scratch run.

    python benchmarks/bench_pretrained.py features --stages lungs-robust original --size 224 --out F.json
    python benchmarks/bench_pretrained.py finetune --runs RUN_SEED0 RUN_SEED1 --scratch SCRATCH_RUN --out T.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

from covidct.experiments import ablation
from covidct.experiments.ensembles import external_summary
from covidct.experiments.external import EXTERNAL, external_data

FEATURE_CONFIG = "sars-cov-2-ct/efficientnet_lite0-imagenet-original"


def _machine() -> dict:
    import keras

    return {"backend": keras.backend.backend(), "keras": keras.__version__, "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "load_average_at_end": os.getloadavg()}


def feature_baselines(args) -> dict:
    """Frozen-feature baselines per stage: internal test (CIs over groups) and external COVID-CT-MD."""
    from covidct.config import load_config
    from covidct.features import run_feature_baselines
    from covidct.train.data import prepare_data

    out = {"protocol": __doc__.split("    python")[0].strip(), "kind": "features", "size": args.size, "stages": {}}
    for stage in args.stages:
        cfg = load_config(FEATURE_CONFIG, [f"data.stage={stage}", f"data.size={args.size}",
                                           f"data.cache_root={args.cache_root}", f"evaluation.n_bootstrap={args.n_bootstrap}"])
        started = time.perf_counter()
        data = prepare_data(cfg, progress=False)
        ext = external_data(stage, args.size, list(data.class_names), args.cache_root)
        run_dir = Path(args.runs_root) / f"features-lite0-{stage}-{args.size}-lr"
        [result] = run_feature_baselines(cfg, ["lr"], [run_dir], data=data, n_bootstrap=args.n_bootstrap,
                                         overwrite=True, select_c=True, external={EXTERNAL: ext})
        predictions = pd.read_csv(run_dir / f"predictions_external-{EXTERNAL}.csv")
        block = result["slice"]
        out["stages"][stage] = {
            "run_dir": str(run_dir),
            "command": result["command"],
            "C": result["selection"]["C"],
            "cv": result["selection"]["cv"],
            "internal_test_macro_f1": block["macro_f1"],
            "internal_test_macro_f1_ci": [block["ci"]["macro_f1"]["low"], block["ci"]["macro_f1"]["high"]],
            "internal_test_auc": block["auc_macro_ovr"],
            "internal_test_auc_ci": [block["ci"]["auc_macro_ovr"]["low"], block["ci"]["auc_macro_ovr"]["high"]],
            "internal_test_n": result["evaluated_on"],
            "external": external_summary(predictions, args.n_bootstrap, list(data.class_names)),
            "seconds": round(time.perf_counter() - started, 1),
        }
        logging.info("%s: %s", stage, json.dumps({k: v for k, v in out["stages"][stage].items() if k != "cv"}))
    return out


def _internal_ci(run_dir: Path) -> dict:
    block = json.loads((run_dir / "metrics_test.json").read_text())["slice"]
    return {"macro_f1_ci": [block["ci"]["macro_f1"]["low"], block["ci"]["macro_f1"]["high"]]}


def _epoch_seconds(run_dir: Path) -> dict:
    history = pd.read_csv(run_dir / "history.csv")
    return {f"phase{int(p)}": [round(float(s), 1) for s in rows["seconds"]] for p, rows in history.groupby("phase")}


def finetune_results(args) -> dict:
    """Internal + external scores of fine-tuned run folders (each seed, the ensemble) and their lung focus."""
    from covidct.explain.runs import run_lung_focus

    run_dirs = [Path(r) for r in args.runs]
    info = json.loads((run_dirs[0] / "run.json").read_text())
    ext = external_data(info["stage"], int(info["size"]), list(info["class_names"]), args.cache_root)
    namespace = argparse.Namespace(data_dir=None, smoke=False, n_bootstrap=args.n_bootstrap)
    out = {"protocol": __doc__.split("    python")[0].strip(), "kind": "finetune", "stage": info["stage"],
           "size": int(info["size"]), "seeds": [], "lung_focus": {}}
    for run_dir in run_dirs:
        if (run_dir / "metrics_test.json").is_file() and not args.overwrite:
            scores = ablation.scores_from_files(run_dir, args.n_bootstrap)
        else:
            scores = ablation.evaluate_arm(run_dir, ext, namespace)
        run = json.loads((run_dir / "run.json").read_text())
        scores.update(_internal_ci(run_dir), run_dir=str(run_dir), train_seconds=run.get("seconds"),
                      epoch_seconds=_epoch_seconds(run_dir), seed=json.loads(json.dumps(run.get("seed", None))))
        out["seeds"].append(scores)
        logging.info("%s: %s", run_dir, {k: scores[k] for k in ("internal_test_auc", "internal_test_macro_f1")})
    if len(run_dirs) > 1:
        out["ensemble"] = ablation.ensemble_scores(run_dirs, args.n_bootstrap)
    for run_dir in [*run_dirs, *([Path(args.scratch)] if args.scratch else [])]:
        summary = run_lung_focus(run_dir, n=args.lung_focus, split="test", warn=False)
        out["lung_focus"][str(run_dir)] = {"overall": summary["overall"], "per_class": summary["per_class"],
                                           "layer": summary["layer"], "n_images": summary["n_images"]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("features", "finetune"))
    parser.add_argument("--stages", nargs="+", default=["lungs-robust", "original"], help="features: stages")
    parser.add_argument("--size", type=int, default=224, help="features: input size (default 224)")
    parser.add_argument("--runs", nargs="+", default=[], help="finetune: the fine-tuned run folders (one per seed)")
    parser.add_argument("--scratch", default=None, help="finetune: a from-scratch run folder for the lung-focus comparison")
    parser.add_argument("--lung-focus", type=int, default=64, help="test images explained per run (default 64)")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--runs-root", default="runs/pretrained", help="features: parent of the feature run folders")
    parser.add_argument("--cache-root", default=".cache/covidct")
    parser.add_argument("--overwrite", action="store_true", help="finetune: evaluate again even when scores exist")
    parser.add_argument("--out", required=True, help="results JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    result = feature_baselines(args) if args.kind == "features" else finetune_results(args)
    result.update(command="python benchmarks/bench_pretrained.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  env=_machine(), seconds=round(time.perf_counter() - started, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
