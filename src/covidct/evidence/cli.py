"""``covidct evidence``: lesion-evidence features and the small model on them (see ``covidct.evidence.run``)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    """Register the ``evidence`` subcommand."""
    parser = subparsers.add_parser(
        "evidence",
        help="lesion features from an infection segmenter + a small model (fit on one dataset, score others)",
        description="Apply an infection segmenter inside the classical lung mask, tabulate lesion burden, density, "
        "distribution and count per slice, fit a small model on a dataset's training split (--fit) or score a "
        "dataset with the fitted model. Research software, not a diagnostic device.",
    )
    parser.add_argument("--segmenter", required=True, help="segmentation run folder (fold_*/model.keras or model.keras)")
    parser.add_argument("--dataset", required=True, help="registered dataset, e.g. sars-cov-2-ct or covid-ct-md")
    parser.add_argument("--out", required=True, help="output folder (a run folder; features are reused from it)")
    parser.add_argument("--fit", action="store_true",
                        help="choose and fit the model on this dataset's training split (grouped CV), score its test split")
    parser.add_argument("--folds", type=int, default=5, help="grouped CV folds for the model choice (with --fit)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap replicates of the AUC intervals")
    parser.add_argument("--recompute", action="store_true", help="recompute the features even when the folder has them")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Run the subcommand; prints the AUCs with their intervals."""
    from covidct.evidence.run import apply_evidence, fit_evidence

    if args.fit:
        metrics = fit_evidence(args.segmenter, args.out, args.dataset, n_bootstrap=args.n_bootstrap, folds=args.folds,
                               recompute=args.recompute)
        block = metrics["test"]
        print(f"chosen: {metrics['choice']['features']} / {metrics['choice']['family']} "
              f"(grouped-CV AUC {metrics['choice']['cv_auc_mean']:.3f})")
    else:
        metrics = apply_evidence(args.segmenter, args.out, args.dataset, n_bootstrap=args.n_bootstrap,
                                 recompute=args.recompute)
        block = metrics["lung_slices"]
    for name in ("model", "burden_unfitted", "dense_share_unfitted"):
        auc = block[name]
        print(f"{args.dataset} slice AUC {name}: {auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}] "
              f"({auc['n_groups']} groups)")
    for key, value in metrics.get("ranking", {}).items():
        print(f"{key}: {value}")
    print(f"Wrote {args.out}")
    evaluate = f"covidct evaluate --run {args.out}" + ("" if args.fit else f" --dataset {args.dataset} --label-map ...")
    print(f"Report it like any run (metrics, intervals, figures): {evaluate}")
    return 0
