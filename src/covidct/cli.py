"""The ``covidct`` command: argparse subcommands that parse arguments and call the package.

No logic lives here. Each subcommand has an ``_add_<name>(subparsers)`` function that declares its
arguments and sets ``func`` to a small ``_run_<name>(args)`` that imports the package function it
calls (imports are lazy so ``covidct --help`` does not start TensorFlow).
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from covidct import DISCLAIMER, __version__
from covidct.commands.training import add_grid, add_segment, add_train
from covidct.evidence.cli import add_parser as _add_evidence
from covidct.experiments import cli as experiments_cli
from covidct.predict.command import add_predict
from covidct.serve.cli import add_parser as _add_serve


def _add_models(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list registered models", description="List registered models.")
    parser.add_argument("--task", choices=["classification", "segmentation", "volume"], default=None)
    parser.add_argument("--family", default=None, help="only this family (e.g. transfusion)")
    parser.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from covidct.models import get_spec, list_models

    names = list_models(task=args.task, family=args.family)
    header = f"{'name':<26} {'task':<15} {'family':<20} {'input':<16} {'imagenet':<8} grad-cam layer"
    print(header)
    print("-" * len(header))
    for name in names:
        spec = get_spec(name)
        shape = "x".join(str(s) for s in spec.input_shape)
        print(
            f"{name:<26} {spec.task:<15} {spec.family:<20} {shape:<16} "
            f"{'yes' if spec.imagenet_weights else 'no':<8} {spec.gradcam_layer or '-'}"
        )
    print(f"\n{len(names)} model(s).")
    return 0


def _add_audit(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit", help="leakage audit of a dataset", description="Duplicates, group overlap and a shortcut probe."
    )
    parser.add_argument("dataset", help="registered dataset name (e.g. sars-cov-2-ct)")
    parser.add_argument("--root", default=None, help="dataset folder (default: data/raw/<name> or COVIDCT_DATA_ROOT)")
    parser.add_argument("--out", default="runs/audit", help="folder for audit_<dataset>.json and .md")
    parser.add_argument("--seed", type=int, default=0, help="split and probe seed")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when anything leaks or a file cannot be read")
    parser.set_defaults(func=_run_audit)


def _run_audit(args) -> int:
    import covidct.preprocess  # noqa: F401  (registers the lung mask MedSeg's orientation check uses)
    from covidct.data.audit import audit_named_dataset

    report, json_path, markdown_path = audit_named_dataset(args.dataset, root=args.root, out_dir=args.out, seed=args.seed)
    print(report.to_markdown())
    print(f"Wrote {json_path} and {markdown_path}.")
    return 1 if (args.strict and not report.passed) else 0


def _add_preprocess(subparsers) -> None:
    parser = subparsers.add_parser(
        "preprocess", help="build the preprocessing cache", description="Compute a stage for every image once."
    )
    parser.add_argument("--dataset", required=True, help="registered dataset name")
    parser.add_argument("--stage", default="original", help="registered preprocessing stage")
    parser.add_argument("--size", type=int, default=224, help="output size in pixels")
    parser.add_argument("--root", default=None, help="dataset folder")
    parser.add_argument("--cache-root", default=".cache/covidct", help="folder holding caches")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the cache even if an up-to-date one exists (a cache whose files changed in "
                        "size or modification time is rebuilt anyway)")
    parser.set_defaults(func=_run_preprocess)


def _run_preprocess(args) -> int:
    from covidct.data.cache import preprocess_dataset
    from covidct.preprocess import get_stage

    cache = preprocess_dataset(
        args.dataset, stage=get_stage(args.stage), size=args.size, root=args.root, cache_root=args.cache_root, workers=args.workers,
        rebuild=args.rebuild,
    )
    print(f"{cache.path}: {len(cache)} samples {cache.images.shape}, {len(cache.failed)} file(s) skipped.")
    for error in cache.failed["error"]:
        print(f"  skipped: {error}")
    return 0


def _add_download(subparsers) -> None:
    parser = subparsers.add_parser(
        "download", help="download a public dataset", description="Download, check and unpack a public dataset."
    )
    parser.add_argument("dataset", choices=["ct-cov19", "covid-ct", "mosmeddata"])
    parser.add_argument("--dest", default="data/raw", help="parent folder (the data goes to DEST/<dataset>)")
    parser.set_defaults(func=_run_download)


def _run_download(args) -> int:
    from covidct.data.download import download_dataset

    folder = download_dataset(args.dataset, dest=args.dest)
    print(f"{args.dataset} is in {folder}.")
    return 0


def _add_predict_volume(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict-volume",
        help="patient-level prediction of a CT volume with a trained 2D run",
        description="Score the lung slices of a volume (NIfTI, .npy or DICOM series folder) with a 2D run "
        "and aggregate them into a patient result; writes a per-slice probability plot and table.",
    )
    parser.add_argument("--run", required=True, help="run folder of a trained slice classifier")
    parser.add_argument("volume", help="volume file (.nii/.nii.gz/.npy) or DICOM series folder")
    parser.add_argument("--method", default="mean", choices=["mean", "max", "topk", "fraction"],
                        help="aggregation deciding the patient class (default mean)")
    parser.add_argument("--k", type=int, default=5, help="slices averaged by topk (default 5)")
    parser.add_argument("--threshold", type=float, default=0.5, help="slice cut-off for fraction (default 0.5)")
    parser.add_argument("--min-lung-fraction", type=float, default=0.02,
                        help="score slices whose lungs cover at least this fraction (default 0.02)")
    parser.add_argument("--criterion", default="lung-mask", choices=["lung-mask", "air-fraction"],
                        help="how lung slices are found (default lung-mask)")
    parser.add_argument("--out", default=".", help="folder for <volume>_slice_probabilities.png and _slices.csv")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=_run_predict_volume)


def _run_predict_volume(args) -> int:
    from covidct.evaluate.volume_predict import format_prediction, predict_volume, write_volume_prediction

    prediction = predict_volume(
        args.run, args.volume, method=args.method, k=args.k, threshold=args.threshold,
        min_lung_fraction=args.min_lung_fraction, criterion=args.criterion,
    )
    print(format_prediction(prediction))
    paths = write_volume_prediction(prediction, args.out, overwrite=args.overwrite)
    print(f"\nper-slice plot: {paths['plot']}\nper-slice table: {paths['table']}")
    return 0


def _add_gradcam(subparsers) -> None:
    parser = subparsers.add_parser(
        "gradcam",
        help="Grad-CAM overlays, a contact sheet and lung-focus scores from a run",
        description="Explain a trained run's predictions: each image goes through the run's own "
        "preprocessing stage and saved model; writes overlays, a contact sheet (original | heatmap | "
        "overlay per class), heatmaps.npz, gradcam.csv and lung_focus.json.",
    )
    parser.add_argument("--run", required=True, help="run folder of a trained slice classifier")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders of them")
    parser.add_argument("--class", dest="class_name", default=None,
                        help="class to explain for every image (default: each image's predicted class)")
    parser.add_argument("--method", default="gradcam", choices=["gradcam", "guided", "gradcam++"],
                        help="heatmap weighting (default gradcam; guided = the CT-COV19 seed's variant)")
    parser.add_argument("--layer", default=None, help="layer name or outer/inner path (default: the model spec's)")
    parser.add_argument("--out", default=None, help="output folder (default RUN/gradcam/METHOD)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay weight of the heatmap (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per pass (default 16)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in the output folder")
    parser.set_defaults(func=_run_gradcam)


def _run_gradcam(args) -> int:
    from covidct.explain.runs import format_gradcam_output, gradcam_run

    output = gradcam_run(
        args.run, args.images, class_name=args.class_name, method=args.method, out_dir=args.out,
        layer_name=args.layer, batch_size=args.batch_size, alpha=args.alpha, overwrite=args.overwrite,
    )
    print(format_gradcam_output(output))
    return 0


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a run on test or another dataset", description="Evaluate a run folder."
    )
    parser.add_argument("--run", required=True, help="run folder")
    parser.add_argument("--split", default="test", choices=["test", "val", "train"])
    parser.add_argument("--dataset", default=None, help="external dataset name (evaluated whole)")
    parser.add_argument("--root", default=None, help="external dataset folder")
    parser.add_argument("--label-map", default=None, help='e.g. "COVID-19=COVID,CAP=non-COVID,Normal=non-COVID"')
    parser.add_argument("--tta", action="store_true", help="average with the horizontal flip")
    parser.add_argument("--mc-dropout", type=int, default=None, metavar="N", help="Monte-Carlo dropout passes")
    parser.add_argument("--temperature-scaling", action="store_true", help="fit a temperature on validation")
    parser.add_argument("--bootstrap", type=int, default=None, metavar="N", help="bootstrap replicates")
    parser.add_argument("--threshold", default=None, metavar="T|val",
                        help="two classes: decision threshold on the positive-class probability, or 'val' = the "
                        "threshold with the best macro-F1 on the run's validation split (default: the config's; argmax)")
    parser.add_argument("--lung-focus", type=int, default=None, metavar="N",
                        help="also score Grad-CAM lung focus on N images of the split (writes RUN/lung_focus.json, "
                        "the lung-focus column of `covidct report`)")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from covidct.errors import CovidctError
    from covidct.evaluate import evaluate_run

    if args.lung_focus is not None and (args.dataset is not None or args.lung_focus < 1):
        raise CovidctError("--lung-focus N (N >= 1) scores the run's own split; it does not apply with --dataset.")
    result = evaluate_run(
        args.run,
        split=args.split,
        dataset=args.dataset,
        root=args.root,
        label_map=args.label_map,
        tta=args.tta or None,
        mc_dropout=args.mc_dropout,
        temperature_scaling=args.temperature_scaling or None,
        n_bootstrap=args.bootstrap,
        threshold=_threshold_argument(args.threshold),
        progress=True,
    )
    where = result["evaluated_on"]
    block = result["slice"]
    print(f"{result['run']} on {where['split']} ({where['n_images']} images, {where['n_groups']} groups); "
          f"checkpoint selected on {result['selection']['split']}")
    for key in ("macro_f1", "auc_macro_ovr", "balanced_accuracy"):
        ci = block.get("ci", {}).get(key, {})
        print(f"  {key:<18} {block[key]:.3f}  [{ci.get('low', float('nan')):.3f}, {ci.get('high', float('nan')):.3f}]")
    chosen = result.get("threshold")
    if chosen:
        print(f"  threshold {chosen['value']:.3f} on P({chosen['positive_class']}), chosen on {chosen['chosen_on']} "
              f"(val macro-F1 {chosen['val_macro_f1']:.3f}; {chosen['val_macro_f1_at_0.5']:.3f} at 0.5)")
    if result.get("warning"):
        print(f"  warning: {result['warning']}")
    if args.lung_focus is not None:
        from covidct.explain.runs import format_lung_focus, run_lung_focus

        print(format_lung_focus(run_lung_focus(args.run, n=args.lung_focus, split=args.split)))
    return 0


def _threshold_argument(text: str | None):
    """``--threshold``: None, ``val`` or a number (checked by the evaluator)."""
    if text is None or text == "val":
        return text
    try:
        return float(text)
    except ValueError:
        from covidct.errors import CovidctError

        raise CovidctError(f"--threshold must be a number in (0, 1) or 'val'; got {text!r}.") from None


def _add_features(subparsers) -> None:
    parser = subparsers.add_parser(
        "features",
        help="frozen CNN features + scikit-learn classifiers (feature baselines)",
        description="Extract frozen features of a registered classifier (the input of its logits layer) once, "
        "fit each scikit-learn classifier on the train split with fixed hyperparameters, and evaluate it on the "
        "test split like any run (validation scores are printed as a check; nothing is selected on them). "
        "Each classifier gets a run folder: config.yaml, predictions_test.csv, metrics_test.json, run.json.",
    )
    parser.add_argument("--config", default=None, help="run config YAML (data + feature model)")
    parser.add_argument("--model", default=None, help="feature model, same as --set model.name=NAME")
    parser.add_argument("--dataset", default=None, help="dataset, same as --set data.dataset=NAME")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. data.stage=lungs")
    parser.add_argument("--classifier", nargs="+", default=["lr"], metavar="NAME",
                        help="one or more of svm, rf, lr, knn, mlp (default lr)")
    parser.add_argument("--run-dir", default=None, help="output folder (one classifier only; default "
                        "OUTPUT_ROOT/features-<model>-<stage>-<classifier>)")
    parser.add_argument("--output-root", default=None, help="parent of the run folders (default: the config's output_root)")
    parser.add_argument("--bootstrap", type=int, default=None, metavar="N", help="bootstrap replicates")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in the run folder(s)")
    parser.add_argument("--select-c", action="store_true", help="choose C of lr/svm by grouped 4-fold CV over train+val")
    parser.set_defaults(func=_run_features)


def _run_features(args) -> int:
    from covidct.config import load_config
    from covidct.errors import CovidctError
    from covidct.features import feature_run_dir, format_feature_result, run_feature_baselines

    if args.config is None and (args.model is None or args.dataset is None):
        raise CovidctError("Give --config CONFIG.yaml, or --model NAME and --dataset NAME (plus --set overrides).")
    if args.run_dir is not None and len(args.classifier) != 1:
        raise CovidctError(f"--run-dir names one folder but {len(args.classifier)} classifiers were given; use --output-root.")
    shortcuts = [f"{key}={value}" for key, value in (("model.name", args.model), ("data.dataset", args.dataset)) if value]
    cfg = load_config(args.config, [*shortcuts, *args.set])
    run_dirs = [args.run_dir] if args.run_dir else [feature_run_dir(cfg, c, args.output_root) for c in args.classifier]
    results = run_feature_baselines(cfg, args.classifier, run_dirs, n_bootstrap=args.bootstrap, overwrite=args.overwrite,
                                    select_c=args.select_c)
    print("\n".join(format_feature_result(result) for result in results))
    return 0


def _add_report(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="results table over run folders", description="Write the results table (markdown + CSV)."
    )
    parser.add_argument("--runs", default="runs", help="folder of run folders")
    parser.add_argument("--readme", default=None, help="README to update between the results markers")
    parser.add_argument("--out", default=None, help="where results.md/.csv go (default: --runs)")
    parser.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from covidct.evaluate.report import write_report

    written = write_report(args.runs, readme=args.readme, out_dir=args.out)
    print(f"{written['rows']} row(s): {written['markdown']}, {written['csv']}" + (f", {written['readme']}" if "readme" in written else ""))
    return 0


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train + evaluate + explain on built-in CT phantoms (a few minutes on a CPU)",
        description="The whole pipeline on synthetic CT phantoms: stage cache, patient-disjoint split, "
        "training with selection on validation, test evaluation with CIs, Grad-CAM. Writes runs/demo/.",
    )
    parser.add_argument("--output-root", default="runs", help="parent of the run folder (default runs/)")
    parser.add_argument("--keep", action="store_true", help="refuse to replace an existing runs/demo")
    parser.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    parser.add_argument("--no-gradcam", action="store_true", help="skip the Grad-CAM overlays")
    parser.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from covidct.demo import main_demo

    return main_demo(output_root=args.output_root, keep=args.keep, epochs=args.epochs, gradcam=not args.no_gradcam)


def _add_config(subparsers) -> None:
    parser = subparsers.add_parser(
        "config", help="list, show or copy the shipped configs",
        description="The configs shipped with covidct (package data): list their names, print one, or copy one "
        "to a file or folder to edit it. Every --config option takes such a name or a YAML file.",
    )
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    actions.add_parser("list", help="names of the shipped configs (e.g. sars-cov-2-ct/base)")
    show = actions.add_parser("show", help="print a config's YAML")
    show.add_argument("name", help="shipped config name or YAML file")
    copy = actions.add_parser("copy", help="copy a config to a file or folder")
    copy.add_argument("name", help="shipped config name or YAML file")
    copy.add_argument("dest", nargs="?", default=None,
                      help="target file, or folder (default: the config's file name in the working folder)")
    copy.add_argument("--force", action="store_true", help="replace an existing target file")
    parser.set_defaults(func=_run_config)


def _run_config(args) -> int:
    from covidct.config import config_path, copy_config, list_configs

    if args.config_action == "list":
        print("\n".join(list_configs()))
    elif args.config_action == "show":
        print(config_path(args.name).read_text(), end="")
    else:
        target = copy_config(args.name, args.dest, force=args.force)
        base = _grid_base(target)
        if base is None:
            print(f"Copied {args.name} to {target}; use it with --config {target}.")
        else:
            folder = os.path.normpath(os.path.join(target.parent, base, ".."))
            print(f"Copied {args.name} to {target}; run it with covidct grid {target}. It reads its base config from "
                  f"{base}, relative to the grid file: copy that one too "
                  f"(covidct config copy {_shipped_name(config_path(args.name).parent / base)} {folder}/).")
    return 0


def _grid_base(path) -> str | None:
    """A grid file's ``base`` when it names another file (a relative path), else None."""
    tree = yaml.safe_load(path.read_text()) or {}
    base = tree.get("base") if isinstance(tree, dict) and "models" in tree else None
    return base if isinstance(base, str) else None


def _shipped_name(path) -> str:
    """``.../configs/sars-cov-2-ct/base.yaml`` -> ``sars-cov-2-ct/base`` (the path itself when not shipped)."""
    from covidct.config import shipped_configs_folder

    relative = os.path.relpath(os.path.normpath(path), shipped_configs_folder())
    return relative[: -len(".yaml")] if not relative.startswith("..") and relative.endswith(".yaml") else str(path)


def _add_data(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="where each registered dataset is looked for, and whether it is there",
        description="Print the data root ($COVIDCT_DATA_ROOT, else ./data) and, for each registered dataset, "
        "the folders where it is looked for and whether it was found. Loads nothing.",
    )
    parser.add_argument("--root", default=None, help="folder holding the datasets (default: the data root)")
    parser.set_defaults(func=_run_data)


def _run_data(args) -> int:
    from covidct.data.locations import format_locations

    print(format_locations(args.root))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidct",
        description="covidct: COVID-19 detection in chest CT, research toolkit.",
        epilog=DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"covidct {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(subparsers)
    _add_models(subparsers)
    add_train(subparsers)
    add_grid(subparsers)
    _add_evaluate(subparsers)
    _add_features(subparsers)
    _add_report(subparsers)
    _add_audit(subparsers)
    _add_preprocess(subparsers)
    _add_download(subparsers)
    add_segment(subparsers)
    _add_predict_volume(subparsers)
    add_predict(subparsers)
    _add_gradcam(subparsers)
    _add_config(subparsers)
    _add_data(subparsers)
    _add_serve(subparsers)
    _add_evidence(subparsers)
    experiments_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from covidct.errors import CovidctError

    try:
        return int(args.func(args) or 0)
    except CovidctError as error:
        print(f"covidct {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # The file system said no (full disk, read-only or forbidden folder, a file where a folder belongs):
        # the user's to fix, so one line naming the file, the cause and the fix, not a traceback. An OSError
        # without an errno was raised by a library, not the OS: that one keeps its traceback (a bug).
        from covidct.data.writes import os_error_message

        if error.errno is None:
            raise
        print(f"covidct {args.command}: error: {os_error_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"covidct {args.command}: interrupted; finished work is kept, rerun to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
