"""Segmenter benchmarks: BCD-U-Net / U-Net lung masks on kaggle-lungs, U-Net infection masks on MedSeg (CV).

Usage::

    python benchmarks/bench_segmentation.py lungs --model bcd_unet --base-filters 8 --epochs 40
    python benchmarks/bench_segmentation.py infection --model unet --base-filters 8 --batch-norm --bn-momentum 0.9 \
        --size 64 --folds 5 --epochs 30 --patience 8 --rotation 10 --batch-size 4 --lung-input none

Each run is fitted by the one training path, ``covidct.train.train(cfg)`` with ``task: segmentation``
(checkpoint and lung input selected on validation Dice), through ``covidct.segment.train.train_segmenter``
(the code behind ``covidct segment train``, which builds the config and then scores the test rows per
image). It writes its run folder under runs/bench/; the summary (with wall time and machine facts) is
written to benchmarks/results/segmentation_<task>_<model>.json (or, when that file holds another
configuration's result, to ..._<size>px_b<filters>_<lung input>.json: results are never overwritten silently).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results"


def result_path(explicit: str | None, command: str, stems: list[str]) -> Path:
    """Where to write a result: ``explicit`` if given (refused when it holds another command's result),
    else the first of ``stems`` (then ``<last stem>_2``, ``_3``...) that is free or holds this same command."""

    def same_or_free(path: Path) -> bool:
        return not path.exists() or json.loads(path.read_text()).get("command") == command

    if explicit:
        path = Path(explicit)
        if not same_or_free(path):
            raise SystemExit(f"{path} holds the result of another command; choose another --out or move it first.")
        return path
    candidates = [RESULTS / f"{stem}.json" for stem in stems]
    candidates += [RESULTS / f"{stems[-1]}_{k}.json" for k in range(2, 100)]
    return next(path for path in candidates if same_or_free(path))


def source_resolution_dice(run: Path, root, size: int, folds: int, lung_input: str) -> dict:
    """Cross-check of a lung-crop MedSeg CV run: Dice on the whole slices at their source resolution (512 px).

    ``covidct.segment.evaluate`` scores pasted-back crops on the whole slice resampled to ``--size``; here each
    fold's selected checkpoint predicts its held-out crops again, the probabilities are pasted into the
    source-resolution slice and scored against the radiologist's mask as stored (no resampling of the truth).
    """
    import keras
    import numpy as np
    import pandas as pd

    import covidct.models  # noqa: F401  (custom layers of saved segmenters)
    from covidct.segment.data import load_pairs
    from covidct.segment.evaluate import predict_test_masks
    from covidct.segment.metrics import per_image_metrics, summarize

    crops = load_pairs("medseg", root, size, with_lungs=True, crop="lungs")
    source = load_pairs("medseg", root, 512)
    if crops.names != source.names:
        raise SystemExit("the cropped and source-resolution pairs list different images")
    crops.frame_masks = source.masks  # the whole-slice frame the crops are pasted into and scored against
    tables = []
    for k in range(folds):
        fold_dir = run / f"fold_{k}"
        split = pd.read_csv(fold_dir / "split.csv", dtype=str, keep_default_na=False)
        rows = np.array([crops.names.index(name) for name in split.loc[split["split"] == "test", "name"]])
        subset = crops.subset(rows)
        model = keras.saving.load_model(fold_dir / "model.keras", compile=False)
        predicted, true = predict_test_masks(model, subset, lung_input, crop="lungs")
        tables.append(per_image_metrics(predicted, true, names=subset.names, groups=subset.groups))
    summary = summarize(pd.concat(tables, ignore_index=True), n_bootstrap=1000, seed=0)
    return {"frame_px": int(source.masks.shape[1]), "dice": summary["dice"], "iou": summary["iou"],
            "hausdorff95_px": summary.get("hausdorff95")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", choices=["lungs", "infection"])
    parser.add_argument("--model", default=None, help="default: bcd_unet for lungs, unet for infection")
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="default 64 (lungs) / 128 (infection)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--folds", type=int, default=5, help="infection only")
    parser.add_argument("--batch-norm", action="store_true", help="BatchNorm after each conv")
    parser.add_argument(
        "--bn-momentum", type=float, default=None, help="BatchNorm momentum (default Keras 0.99)"
    )
    parser.add_argument("--bn-recalibration", type=int, default=1024,
                        help="clean training images that reset BatchNorm statistics before each validation (0: off)")
    parser.add_argument(
        "--rotation", type=float, default=0.0, help="random rotation (degrees) when augmenting"
    )
    parser.add_argument("--patience", type=int, default=0, help="early stopping on validation Dice (0: off)")
    parser.add_argument("--monitor", default="val_dice", choices=["val_dice", "val_loss", "last"],
                        help="last: a fixed epoch budget, the final epoch is kept (nothing selected)")
    parser.add_argument("--schedule", default="none", choices=["none", "cosine"], help="learning-rate schedule")
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="training groups held out for validation (0 only with --monitor last: fit them all)")
    parser.add_argument(
        "--lung-input",
        default="none",
        choices=["none", "masked", "auto"],
        help="auto: plain or lung-masked input, chosen per fold on inner validation Dice",
    )
    parser.add_argument("--crop", default="none", choices=["none", "lungs"],
                        help="lungs: crop each slice (at its own resolution) to the square around its dilated lung "
                        "mask before resampling to --size; test Dice is scored on the whole slice")
    parser.add_argument("--weights", default=None,
                        help="initial weights (model.weights), e.g. runs/unet-pretrain-genesis-sarscov2/model.keras")
    parser.add_argument("--drop-last", default="auto", choices=["auto", "on", "off"],
                        help="training.drop_last: leave out each epoch's incomplete last batch (auto: where XLA-compiled)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the folds / validation groups, the initial weights and the augmentation")
    parser.add_argument("--root", default=None)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--out", default=None, help="result JSON (default: named by task, model and settings in "
                        "benchmarks/results/; a file holding another configuration's result is never overwritten)")
    parser.add_argument("--fold", type=int, default=None,
                        help="infection: fit only this fold of --folds in --run-dir and exit (one process per fold, "
                        "in parallel); then the same command without --fold finishes the run and writes the result")
    parser.add_argument("--jobs", type=int, default=1,
                        help="infection: fit up to N folds at once, one process each (a GPU), then finish the run")
    parser.add_argument("--overwrite", action="store_true", help="delete the run folder (finished or interrupted) "
                        "and train again; without it an interrupted run resumes and a finished one is refused")
    args = parser.parse_args(argv)
    # Per-epoch and per-fold progress (the trainer's log) so that an interrupted run still shows how far it got.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from covidct.segment.train import train_segmenter
    from covidct.train.trainer import gpu_names, run_status

    model = args.model or ("bcd_unet" if args.task == "lungs" else "unet")
    size = args.size or (64 if args.task == "lungs" else 128)
    dataset = "kaggle-lungs" if args.task == "lungs" else "medseg"
    folds = 0 if args.task == "lungs" else args.folds
    run_dir = Path(args.run_dir or f"runs/bench/segment-{model}-{dataset}-{size}")
    # An interrupted run resumes (finished folds and epochs are kept; a changed config is refused); a finished
    # one is refused unless --overwrite: a benchmark never deletes an earlier run folder silently.
    status = run_status(run_dir)
    if status == "finished" and not args.overwrite:
        parser.error(f"{run_dir} holds a finished run; pass --overwrite to train it again or choose another --run-dir")
    if status == "interrupted" and not args.overwrite:
        logging.getLogger("bench_segmentation").info("resuming the interrupted run in %s", run_dir)
    start = time.perf_counter()
    run = train_segmenter(
        model=model,
        dataset=dataset,
        root=args.root,
        size=size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        folds=folds,
        run_dir=run_dir,
        overwrite=args.overwrite,
        resume=True,
        model_kwargs={"base_filters": args.base_filters, **({"batch_norm": True} if args.batch_norm else {})},
        rotation_deg=args.rotation,
        patience=args.patience,
        lung_input=args.lung_input,
        crop=args.crop,
        monitor=args.monitor,
        schedule=args.schedule,
        val_fraction=args.val_fraction,
        bn_momentum=args.bn_momentum,
        bn_recalibration=args.bn_recalibration,
        weights=args.weights,
        seed=args.seed,
        drop_last=args.drop_last,
        fold=args.fold,
        jobs=args.jobs,
    )
    wall_s = time.perf_counter() - start
    if args.fold is not None:
        print(f"fold {args.fold} of {run} fitted in {wall_s:.1f} s (no result yet: rerun without --fold to finish)")
        return 0
    summary = json.loads((run / ("metrics_cv.json" if folds else "metrics_test.json")).read_text())
    import keras

    result = {
        "task": args.task,
        "model": model,
        "dataset": dataset,
        "size_px": size,
        "base_filters": args.base_filters,
        "batch_norm": args.batch_norm,
        "bn_momentum": args.bn_momentum,
        "bn_recalibration": args.bn_recalibration,
        "augmentation": f"random left-right flip, rotation +-{args.rotation:g} deg (per batch, per epoch)",
        "patience": args.patience,
        "monitor": args.monitor,
        "schedule": args.schedule,
        "val_fraction": args.val_fraction,
        "lung_input": args.lung_input,
        "crop": args.crop,
        "loss": "binary cross-entropy + soft Dice",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "initial_weights": args.weights,
        "seed": args.seed,
        "drop_last": args.drop_last,
        "folds": folds,
        "run_dir": str(run),
        "wall_s": round(wall_s, 1),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {', '.join(gpu_names()) or 'CPU'}",
        "keras_backend": keras.backend.backend(),
        "command": "python benchmarks/bench_segmentation.py " + " ".join(argv or __import__("sys").argv[1:]),
        "metrics": summary,
    }
    if args.crop == "lungs" and folds:
        result["metrics_source_resolution"] = source_resolution_dice(run, args.root, size, folds, args.lung_input)
    out = result_path(args.out, result["command"], [f"segmentation_{args.task}_{model}",
                                                    f"segmentation_{args.task}_{model}_{size}px_b{args.base_filters}_{args.lung_input}"
                                                    + ("_lungcrop" if args.crop == "lungs" else "")
                                                    + ("_fixedbudget" if args.monitor == "last" else "")
                                                    + ("_" + Path(args.weights).parent.name if args.weights else "")
                                                    + (f"_seed{args.seed}" if args.seed else "")])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    dice = summary["dice"]
    print(
        f"{model} {dataset} {size}px: Dice {dice['mean']:.4f} [{dice['low']:.4f}, {dice['high']:.4f}] "
        f"in {wall_s:.0f} s -> {out}"
    )
    if summary.get("fold_dice"):
        print(
            "per fold:",
            [round(d, 3) for d in summary["fold_dice"]],
            "lung input:",
            summary["fold_lung_input"],
        )
        infected = summary.get("dice_slices_with_infection") or {}
        print(
            f"slices with infection (n={summary['n_slices_with_infection']}): Dice {infected.get('mean', float('nan')):.4f}"
        )
    if "metrics_source_resolution" in result:
        native = result["metrics_source_resolution"]["dice"]
        print(f"whole slices at source resolution: Dice {native['mean']:.4f} [{native['low']:.4f}, {native['high']:.4f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
