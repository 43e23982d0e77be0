"""BatchNorm recalibration on finished runs: the same checkpoint scored before and after (no retraining).

    python benchmarks/bench_bn_recalibration.py RUN [RUN ...] [--samples 1024] [--out results.json]

For each run folder: load ``model.keras`` and the run's data (``prepare_data`` of its saved config), score
validation and test at the argmax (macro-F1, AUC, accuracy, cross-entropy, mean predicted probability of
the second class), then replace every trainable BatchNorm layer's running statistics by the mean batch
statistics of ``--samples`` clean training samples (``covidct.train.batchnorm.recalibrate_batch_norm``,
the same code ``train(cfg)`` runs before each validation when ``training.bn_recalibration`` > 0) and score
again; the channel-average running mean of every BatchNorm layer is recorded before and after. The run
folder is not modified. A collapse shows as a high AUC with macro-F1 near 1/num_classes
and a mean probability near 0 or 1; recalibration should move the F1 and leave the AUC about where it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def scores(model, data, rows, batch_size, input_names) -> dict:
    import numpy as np

    from covidct.evaluate.metrics import logits_to_probs
    from covidct.models.inference import predict_logits
    from covidct.train.trainer import validation_scores

    logits = predict_logits(model, data.images, rows, batch_size, input_names)
    out = validation_scores(data.labels[rows], logits, "ce", 2.0, None)
    out = {key.removeprefix("val_"): round(float(value), 4) for key, value in out.items()}
    out["mean_prob_class1"] = round(float(np.mean(logits_to_probs(logits)[:, 1])), 4)
    out["n"] = int(len(rows))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished run folders")
    parser.add_argument("--samples", type=int, default=1024, help="clean training samples (training.bn_recalibration)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from covidct.train.batchnorm import all_layers, recalibrate_batch_norm
    from covidct.train.data import prepare_data
    from covidct.train.run import load_run
    from covidct.train.trainer import recalibration_source

    results = []
    for run in args.runs:
        loaded = load_run(run)
        cfg = loaded.config
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, bn_recalibration=args.samples))
        data = prepare_data(cfg, progress=False)
        batch = cfg.training.batch_size
        row = {"run": str(run), "model": cfg.model.name, "best_epoch": loaded.info.get("best_epoch")}
        norms = [layer for layer in all_layers(loaded.model) if isinstance(layer, keras.layers.BatchNormalization)]
        row["bn_running_mean_channel_average"] = {}
        for tag in ("saved", "recalibrated"):
            if tag == "recalibrated":
                started = time.perf_counter()
                source = recalibration_source(cfg, data.images, data.indices("train"), loaded.input_names)
                row["batches"] = recalibrate_batch_norm(loaded.model, source())
                row["recalibration_seconds"] = round(time.perf_counter() - started, 2)
            row["bn_running_mean_channel_average"][tag] = {
                layer.name: round(float(np.mean(keras.ops.convert_to_numpy(layer.moving_mean))), 4) for layer in norms}
            row[tag] = {split: scores(loaded.model, data, data.indices(split), batch, loaded.input_names)
                        for split in ("val", "test")}
            print(f"{run} [{tag}] " + "; ".join(
                f"{split}: macro-F1 {s['macro_f1']:.3f} AUC {s['auc']:.3f} p1 {s['mean_prob_class1']:.3f}"
                for split, s in row[tag].items()), flush=True)
        results.append(row)
    out = {
        "command": "python benchmarks/bench_bn_recalibration.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "samples": args.samples,
        "runs": results,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
