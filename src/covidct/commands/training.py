"""The training subcommands of ``covidct``: ``train``, ``grid`` and ``segment`` (train / evaluate / predict).

``covidct segment train`` is an alias of ``covidct train``: its flags build a ``task: segmentation`` config
(``covidct.segment.train.segmentation_config``) that takes the same path, ``train_and_evaluate``. As in
``covidct.cli``, each ``_run_*`` imports the package function it calls when it runs (``covidct --help`` starts
no Keras).
"""

from __future__ import annotations


def add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train one model from a config", description="Train one model (the one training path)."
    )
    parser.add_argument("--config", required=True, help="run config YAML (configs/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. training.epochs=3")
    parser.add_argument("--run-dir", default=None, help="run folder (default runs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--evaluate", action="store_true", help="evaluate on the test split afterwards")
    parser.add_argument("--jobs", type=int, default=1,
                        help="task segmentation with folds: fit up to N folds at once, one process each (for a GPU)")
    parser.set_defaults(func=_run_train)


def train_and_evaluate(cfg, run_dir=None, resume: bool = False, overwrite: bool = False, jobs: int = 1,
                       fold: int | None = None, evaluate: bool = False) -> tuple:
    """The path of ``covidct train`` (and of its alias ``covidct segment train``): ``train(cfg)``, then, with
    ``evaluate``, the task's evaluation of the finished run; returns (run folder, the line stating the result)."""
    from covidct.train import train
    from covidct.train.workflow import evaluate_after_training

    run_dir = train(cfg, run_dir=run_dir, resume=resume, overwrite=overwrite, jobs=jobs, fold=fold)
    return run_dir, (evaluate_after_training(run_dir)[1] if evaluate else "")


def _run_train(args) -> int:
    from covidct.train.tasks import load_run_config

    cfg = load_run_config(args.config, args.set)
    run_dir, result = train_and_evaluate(cfg, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite,
                                         jobs=args.jobs, evaluate=args.evaluate)
    print(f"Run saved in {run_dir}")
    if result:
        print(result)
    return 0


def add_grid(subparsers) -> None:
    parser = subparsers.add_parser(
        "grid", help="run a grid of experiments", description="Run models x stages x settings (resumable)."
    )
    parser.add_argument("grid", help="grid YAML (configs/grids/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their status only")
    parser.add_argument("--no-evaluate", action="store_true", help="do not evaluate finished runs on test")
    parser.add_argument("--executor", default="local", help="local, dask (a LocalCluster) or dask:ADDRESS")
    parser.set_defaults(func=_run_grid)


def _run_grid(args) -> int:
    from covidct.evaluate.report import markdown_table
    from covidct.train.grid import run_grid

    table = run_grid(args.grid, args.set, dry_run=args.dry_run, evaluate=not args.no_evaluate, executor=args.executor)
    print(markdown_table(table))
    return 0 if args.dry_run or (table["status"] == "finished").all() else 1


def add_segment(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="train / apply lung or infection segmenters", description="Segmentation runs."
    )
    actions = parser.add_subparsers(dest="segment_action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="train and evaluate a segmenter (writes a run folder)")
    train.add_argument("--model", default="bcd_unet", help="registered segmenter: bcd_unet, unet")
    train.add_argument("--dataset", default="kaggle-lungs", choices=["kaggle-lungs", "medseg"])
    train.add_argument("--root", default=None, help="data root (default COVIDCT_DATA_ROOT, else ./data)")
    train.add_argument("--size", type=int, default=64, help="input side in pixels (default 64)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--folds", type=int, default=0, help="k >= 2: grouped k-fold CV (medseg); 0: test split")
    train.add_argument("--fold", type=int, default=None,
                       help="with --folds: fit only this fold (0-based), e.g. one process per fold on one --run-dir; "
                       "then run once more without --fold and with --resume to finish and evaluate the run")
    train.add_argument("--jobs", type=int, default=1,
                       help="with --folds: fit up to N folds at once, one process each (for a GPU: a fold is "
                       "compile-bound there), then finish and evaluate the run")
    train.add_argument("--base-filters", type=int, default=None, help="width of the first level (builder argument)")
    train.add_argument("--run-dir", default=None, help="default runs/segment-<model>-<dataset>-<size>")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in --run-dir")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    train.add_argument("--lung-input", default="none", choices=["none", "masked", "auto"],
                       help="plain, lung-masked, or both with the better kept on validation Dice")
    train.add_argument("--crop", default="none", choices=["none", "lungs"],
                       help="lungs: crop each slice to the square around its lungs before resampling to --size")
    train.add_argument("--rotation", type=float, default=0.0, help="largest random rotation in degrees")
    train.add_argument("--patience", type=int, default=0, help="early stopping on validation Dice (0: off)")
    train.add_argument("--monitor", default="val_dice", choices=["val_dice", "val_loss", "last"],
                       help="checkpoint rule; last: a fixed epoch budget, the final epoch is kept")
    train.add_argument("--schedule", default="none", choices=["none", "cosine"], help="learning-rate schedule")
    train.add_argument("--val-fraction", type=float, default=0.15,
                       help="training groups held out for validation (0 only with --monitor last)")
    train.add_argument("--drop-last", default="auto", choices=["auto", "on", "off"],
                       help="leave out each epoch's incomplete last batch (auto: where the step is XLA-compiled)")
    train.add_argument("--weights", default=None,
                       help="initial weights of the same model and --base-filters, e.g. a task: pretrain run's model.keras")
    evaluate = actions.add_parser("evaluate", help="per-image Dice/IoU/HD95 of a trained run on its test rows")
    evaluate.add_argument("--run", required=True, help="run folder from `segment train` or `train` (task: segmentation)")
    predict = actions.add_parser("predict", help="write masks and overlays for images")
    predict.add_argument("--model", required=True, help="run folder or .keras file from `segment train`")
    predict.add_argument("--images", nargs="+", required=True, help="image files or folders")
    predict.add_argument("--out", required=True, help="output folder for *_mask.png and *_overlay.png")
    predict.add_argument("--threshold", type=float, default=0.5)
    predict.add_argument("--tta", action="store_true", help="average each map with its left-right mirror's")
    parser.set_defaults(func=_run_segment)


def _run_segment(args) -> int:
    if args.segment_action == "train":  # an alias of `covidct train` with a config built from the flags
        from covidct.segment.train import segmentation_config

        kwargs = {} if args.base_filters is None else {"base_filters": args.base_filters}
        cfg = segmentation_config(
            model=args.model, dataset=args.dataset, root=args.root, size=args.size, epochs=args.epochs,
            batch_size=args.batch_size, learning_rate=args.learning_rate, folds=args.folds, seed=args.seed,
            model_kwargs=kwargs, lung_input=args.lung_input, crop=args.crop, rotation_deg=args.rotation,
            patience=args.patience, monitor=args.monitor, schedule=args.schedule, val_fraction=args.val_fraction,
            weights=args.weights, drop_last=args.drop_last,
        )
        run_dir, _ = train_and_evaluate(cfg, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite,
                                        jobs=args.jobs, fold=args.fold, evaluate=args.fold is None)
        if args.fold is not None:
            print(f"fold {args.fold} fitted in {run_dir}; when every fold is, finish the run with the same command "
                  "without --fold and with --resume (writes run.json and the CV metrics)")
            return 0
        print(f"run folder: {run_dir}")
        return 0
    if args.segment_action == "evaluate":
        from covidct.segment.evaluate import evaluate_segmentation
        from covidct.train.tasks.segmentation import selection_words

        summary = evaluate_segmentation(args.run)
        dice = summary["dice"]
        print(f"{args.run}: Dice {dice['mean']:.3f} [{dice['low']:.3f}, {dice['high']:.3f}] on {summary['n_images']} "
              f"test image(s) ({summary['split']}{', mirror TTA' if summary.get('tta') else ''}); "
              f"{selection_words(summary)}")
        return 0
    from covidct.segment.predict import predict_files

    results = predict_files(args.model, args.images, args.out, threshold=args.threshold, tta=args.tta)
    failed = [r for r in results if "error" in r]
    print(f"{len(results) - len(failed)} mask(s) written to {args.out}; {len(failed)} unreadable.")
    return 0
