"""Volume check on phantoms: does a 3D CNN learn COV vs Normal, and does slice aggregation agree?

    python benchmarks/bench_volumes.py                     # 180 volumes 32x64x64 cached at 16x32x32, ~10 CPU min
    python benchmarks/bench_volumes.py --smoke             # 24 volumes, 2 epochs: the script runs end to end
    python benchmarks/bench_volumes.py --model cnn3d_kerasio --epochs 30

Both models go through the one training path (``train(cfg)``) and the one evaluator (``evaluate_run``):
1. the 3D CNN on phantom volumes (``phantom-volumes``, OtherPneumonia dropped), patient-disjoint split,
   checkpoint chosen on validation, test macro-F1 / AUC with a 95% bootstrap CI over volumes;
2. a 2D ``small_cnn`` trained on separate phantom slices (COV vs Normal), applied to every lung slice of the
   same test volumes by ``predict_volume`` and aggregated (mean / max / top-k / fraction) per volume.
Agreement = fraction of test volumes where the 3D CNN and the 2D mean aggregate predict the same class.
Finished runs under --runs are reused; the JSON goes to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=180, help="phantom volumes (classes cycle COV/Normal/Other)")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 64, 64], help="written (D, H, W)")
    parser.add_argument("--volume-shape", type=int, nargs=3, default=[16, 32, 32], help="cached model input")
    parser.add_argument("--model", default="cnn3d_covidscan")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--monitor", default="val_loss", help="checkpoint selection on validation (val_loss, val_auc, ...)")
    parser.add_argument("--bn-momentum", type=float, default=0.9)
    parser.add_argument("--bn-recalibration", type=int, default=1024,
                        help="training.bn_recalibration: clean training samples that reset BatchNorm statistics before each validation (0: off)")
    parser.add_argument("--schedule", default="cosine", help="learning-rate schedule (none, cosine)")
    parser.add_argument("--patience", type=int, default=0, help="early stopping patience (0: off)")
    parser.add_argument("--slice-epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/bench-volumes")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/bench_volumes.json")
    return parser.parse_args(argv)


def volume_config(args, runs: Path):
    from covidct.config import config_from_dict

    tag = f"n{args.n}-{'x'.join(map(str, args.shape))}-seed{args.seed}"
    return config_from_dict(
        {
            "name": f"{args.model}-{tag}-{'x'.join(map(str, args.volume_shape))}-{args.monitor}-bn{args.bn_momentum}-{args.schedule}-p{args.patience}-rc{args.bn_recalibration}",
            "output_root": str(runs),
            "data": {
                "dataset": "phantom-volumes",
                "root": str(runs / "data" / tag),
                "options": {"n": args.n, "shape": list(args.shape), "seed": args.seed},
                "label_map": {"COV": "COV", "Normal": "Normal", "OtherPneumonia": "drop"},
                "split_fractions": [0.6, 0.15, 0.25],
                "cache_root": str(runs / "cache"),
                "volume_shape": list(args.volume_shape),
            },
            "model": {"name": args.model},
            "training": {
                "epochs": args.epochs,
                "batch_size": 4,
                "learning_rate": 3e-4,
                "mixed_precision": "off",
                "min_epochs": 5,
                "early_stopping_patience": args.patience,
                "schedule": args.schedule,
                "bn_momentum": args.bn_momentum,
                "bn_recalibration": args.bn_recalibration,
                "monitor": args.monitor,
                "augmentation": "stage",
                "seed": args.seed,
            },
            "evaluation": {"n_bootstrap": 1000},
        }
    )


def train_slice_model(args, runs: Path, size: int):
    """small_cnn on separate phantom slices (COV vs Normal), windowed like the volume preprocessing."""
    from covidct.config import config_from_dict
    from covidct.train.data import phantom_slice_data

    data = phantom_slice_data(300 if not args.smoke else 60, size, seed=args.seed + 1, drop="OtherPneumonia")
    cfg = config_from_dict(
        {
            "name": f"small_cnn-slices-{size}px-seed{args.seed}",
            "output_root": str(runs),
            "data": {"dataset": "phantom", "size": size, "stage": "original"},
            "model": {"name": "small_cnn"},
            "training": {"epochs": args.slice_epochs, "batch_size": 32, "learning_rate": 3e-3, "bn_momentum": 0.5,
                         "mixed_precision": "off", "shortcut_probe": False, "seed": args.seed},
        }
    )
    from covidct.train import train
    from covidct.train.trainer import run_status

    run_dir = runs / cfg.name
    if run_status(run_dir) == "finished":
        return run_dir
    return train(cfg, run_dir=run_dir, overwrite=True, data=data, progress=False)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        args.n, args.epochs, args.slice_epochs = 24, 2, 1
        args.runs = args.runs + "-smoke"
    import numpy as np
    from sklearn.metrics import f1_score, roc_auc_score

    from covidct.evaluate import evaluate_run
    from covidct.evaluate.volume_predict import predict_volume
    from covidct.train.data import prepare_data
    from covidct.train.run import train_or_reuse

    runs = Path(args.runs)
    cfg = volume_config(args, runs)
    started = time.perf_counter()
    run_dir = train_or_reuse(cfg, runs / cfg.name)
    train_s = time.perf_counter() - started
    data = prepare_data(cfg, progress=False)
    result = evaluate_run(run_dir, split="test", data=data, figures=False)
    volume = result["volume"]

    slice_run = train_slice_model(args, runs, size=args.shape[1])
    rows = data.indices("test")
    names = list(data.class_names)
    cov = names.index("COV")
    y_true = (data.labels[rows] == cov).astype(int)
    aggregates = {}
    for index in rows:
        prediction = predict_volume(slice_run, data.manifest["path"].iloc[index], criterion="air-fraction")
        for method, probs in prediction.scores.items():
            aggregates.setdefault(method, []).append(float(probs[prediction.class_names.index("COV")]))
    import pandas as pd

    predictions = pd.read_csv(run_dir / "predictions_test.csv")
    pred_3d = (predictions["prob_COV"].to_numpy() >= 0.5).astype(int)
    # The same model with the decision threshold chosen on the validation volumes (macro-F1), applied to test.
    at_val = evaluate_run(run_dir, split="test", data=data, figures=False, threshold="val")
    slice_scores = {}
    for method, scores in aggregates.items():
        scores = np.asarray(scores)
        slice_scores[method] = {
            "auc": float(roc_auc_score(y_true, scores)),
            "macro_f1": float(f1_score(y_true, (scores >= 0.5).astype(int), average="macro")),
        }
    agreement = float(np.mean(pred_3d == (np.asarray(aggregates["mean"]) >= 0.5)))
    out = {
        "command": "python benchmarks/bench_volumes.py " + " ".join(sys.argv[1:]),
        "config": {"n": args.n, "shape": args.shape, "volume_shape": args.volume_shape, "model": args.model,
                   "epochs": args.epochs, "seed": args.seed, "monitor": args.monitor,
                   "bn_momentum": args.bn_momentum, "bn_recalibration": args.bn_recalibration,
                   "schedule": args.schedule, "patience": args.patience},
        "test_volumes": int(len(rows)),
        "cnn3d": {"macro_f1": volume["macro_f1"], "auc": volume["auc_macro_ovr"], "ci": volume["ci"],
                  "train_seconds_wall": round(train_s, 1),
                  "val_threshold": {"threshold": at_val["threshold"], "macro_f1": at_val["volume"]["macro_f1"],
                                    "macro_f1_ci": at_val["volume"]["ci"]["macro_f1"]}},
        "slice_aggregation": slice_scores,
        "agreement_3d_vs_slice_mean": agreement,
    }
    print(f"3D {args.model} on {len(rows)} test volumes (COV vs Normal): macro-F1 {volume['macro_f1']:.3f} "
          f"[{volume['ci']['macro_f1']['low']:.3f}, {volume['ci']['macro_f1']['high']:.3f}], AUC {volume['auc_macro_ovr']:.3f}")
    print(f"   at the validation-chosen threshold {at_val['threshold']['value']:.3f}: macro-F1 {at_val['volume']['macro_f1']:.3f} "
          f"[{at_val['volume']['ci']['macro_f1']['low']:.3f}, {at_val['volume']['ci']['macro_f1']['high']:.3f}]")
    for method, block in slice_scores.items():
        print(f"2D small_cnn, slice {method}: macro-F1 {block['macro_f1']:.3f}, AUC {block['auc']:.3f}")
    print(f"agreement 3D vs slice mean: {agreement:.2f}")
    path = Path(args.out if not args.smoke else args.out.replace(".json", "_smoke.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float))
    return out


if __name__ == "__main__":
    main()
