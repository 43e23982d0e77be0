"""Ablation: which parts of the ``robust`` recipe make scores survive a change of hospital.

Protocol (fixed before any external number was seen):

* Train **only** on ``sars-cov-2-ct`` (grouped split, group proxy = file-number blocks merged with
  near-duplicate clusters); the validation split selects the checkpoint (``val_auc``); the recipe is
  chosen by validation AUC and its consistency across seeds.
* Report the internal **test** split and, as an external check never used for choices,
  ``covid-ct-md`` (the 6-patient sample): COVID-19 vs CAP + Normal, at slice level on lung-containing
  slices (lung mask area >= ``MIN_LUNG_FRACTION`` of the full slice, computed by
  ``covidct.preprocess.lungs.lung_mask`` without labels) and at patient level (mean of the slice
  probabilities), plus whether both COVID patients rank above all four others.
* Arms are cumulative (``configs/robust/<arm>.yaml``): ``plain`` (whole slice) → ``lungs`` (lung crop)
  → ``standardize`` (``lungs-robust`` stage) → ``appearance`` (``training.augmentation: robust``) →
  ``robust`` (+ AdamW, dropout, cosine: the recipe), and the leave-one-out ``no-standardize``. Every arm
  is trained with several seeds; ``ensemble`` rows average the seeds' probabilities.
* 95% CIs: bootstrap over patients/groups (``covidct.evaluate``); across seeds: mean ± SD.

Everything goes through ``covidct.train.train`` and ``covidct.evaluate.evaluate_run``. The script
imports no TensorFlow itself, so it runs under ``KERAS_BACKEND=jax`` (GPU) as well::

    python benchmarks/bench_generalization.py --size 128 --epochs 20 --seeds 0 1 2 --out results.json
    KERAS_BACKEND=jax python benchmarks/bench_generalization.py --size 224 --seeds 0 1 2 3 4 --out gpu.json
    python benchmarks/bench_generalization.py --smoke --out /tmp/smoke.json   # phantoms, < 1 min
    # a machine without the raw data: export the preprocessed arrays here, run there
    python benchmarks/bench_generalization.py --export-data bundle --arms lungs robust
    KERAS_BACKEND=jax python benchmarks/bench_generalization.py --data-dir bundle --arms lungs robust --out r.json
    # back here, from the run folders it trained (their files, without weights): seeds and the seed ensemble
    python benchmarks/bench_generalization.py --arms robust --from-runs runs/gen-robust-s224-seed0 runs/gen-robust-s224-seed1

Finished runs are reused (the script is resumable); ``--overwrite`` retrains.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from covidct.evaluate.generalization import (
    generalization_markdown,
    plot_generalization,
    summarise_generalization,
)
from covidct.experiments.ensembles import (  # noqa: F401
    ensemble,
    external_summary,
    internal_scores,
    patient_table,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "robust"
#: Cumulative arms, then the leave-one-out arm, then ``histogram`` (``standardize`` with rank equalisation
#: inside the lungs instead of the two percentile anchors: the mean lung brightness no longer differs).
ARMS = ("plain", "lungs", "standardize", "appearance", "robust", "no-standardize", "histogram")
EXTERNAL = "covid-ct-md"
#: covid-ct-md's labels onto sars-cov-2-ct's classes: COVID-19 vs (CAP + Normal).
EXTERNAL_LABEL_MAP = {"COV": "COV", "OtherPneumonia": "NonCOV", "Normal": "NonCOV"}
#: A slice counts as lung-containing when both lungs together cover at least this fraction of it.
MIN_LUNG_FRACTION = 0.05
POSITIVE = "COV"

log = logging.getLogger("bench_generalization")


# ----------------------------------------------------------------------------------------------- data
def lung_fractions(manifest: pd.DataFrame, cache_root: str) -> np.ndarray:
    """Lung-mask area fraction of every (path, slice_index) row of a volume manifest (cached as CSV)."""
    from covidct.data.io import CTImage, read_image
    from covidct.preprocess.lungs import lung_mask

    cache = Path(cache_root) / "bench_generalization_lung_fractions.csv"
    known = pd.read_csv(cache) if cache.is_file() else pd.DataFrame(columns=["path", "slice_index", "fraction"])
    key = manifest["path"].astype(str) + "#" + manifest["slice_index"].astype(int).astype(str)
    table = dict(zip(known["path"].astype(str) + "#" + known["slice_index"].astype(int).astype(str), known["fraction"]))
    missing = sorted(set(manifest.loc[~key.isin(table.keys()), "path"].astype(str)))
    for path in missing:
        volume = read_image(path)
        for k in range(volume.array.shape[0]):
            labels = lung_mask(CTImage(volume.array[k], volume.unit, path), warn=False)
            table[f"{path}#{k}"] = float((labels > 0).mean())
    if missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"path": k.rsplit("#", 1)[0], "slice_index": int(k.rsplit("#", 1)[1]), "fraction": v} for k, v in table.items()]
        pd.DataFrame(rows).to_csv(cache, index=False)
    return np.array([table[k] for k in key], dtype=float)


def external_data(stage: str, size: int, class_names: list, cache_root: str, root: str | None = None):
    """covid-ct-md mapped to the run's classes, preprocessed with the run's stage, lung-containing slices only."""
    from covidct.data.cache import build_cache
    from covidct.data.datasets import load_dataset
    from covidct.preprocess import get_stage
    from covidct.train.data import apply_label_map, data_from_arrays

    manifest = apply_label_map(load_dataset(EXTERNAL, root=root), EXTERNAL_LABEL_MAP, source=EXTERNAL)
    manifest = manifest.assign(split="test")
    cache = build_cache(manifest, stage=get_stage(stage), size=size, cache_root=cache_root, progress=False)
    rows = cache.manifest.reset_index(drop=True)
    keep = np.flatnonzero(lung_fractions(rows, cache_root) >= MIN_LUNG_FRACTION)
    images = np.asarray(cache.images[keep])
    return data_from_arrays(images, rows.iloc[keep].assign(split="test"), classes=class_names, source=EXTERNAL)


def smoke_external_data(stage: str, size: int, class_names: list, seed: int = 99):
    """Smoke stand-in for another hospital: phantoms shown through another window and blurred."""
    from scipy import ndimage

    from covidct.data.io import CTImage
    from covidct.data.phantom import make_dataset
    from covidct.data.windows import window_hu
    from covidct.preprocess import get_stage
    from covidct.train.data import data_from_arrays

    phantoms = make_dataset(n=24, size=64, seed=seed, slices_per_patient=4)
    stage_fn = get_stage(stage)
    images = []
    for image_hu in phantoms.images_hu:
        display = ndimage.gaussian_filter(window_hu(image_hu, -500, 1800) * 255.0, 1.0).astype(np.float32)
        images.append(stage_fn(CTImage(display, "display"), size)[0].image)
    labels = ["COV" if label == "COV" else "NonCOV" for label in phantoms.labels]
    manifest = pd.DataFrame({"path": [f"shifted/{i}" for i in range(len(labels))], "label": labels,
                             "group": phantoms.groups, "split": "test", "source": "phantom-shifted"})
    return data_from_arrays(np.stack(images), manifest, classes=class_names, source="phantom-shifted")


def export_bundle(out_dir, stages, size: int, cache_root: str = ".cache/covidct") -> list[Path]:
    """Write preprocessed arrays for a machine without the raw data (e.g. a GPU box): per stage
    ``internal-<stage>-<size>.npz`` (images, compressed) + ``.csv`` (manifest with the grouped split) and
    ``external-<stage>-<size>`` likewise, plus ``lung_fractions.csv``. Built with the same code as a
    normal run (dataset loader, grouped split, ``build_cache``), so ``--data-dir`` runs the same data.
    """
    from covidct.config import load_config
    from covidct.data.cache import build_cache
    from covidct.data.datasets import load_dataset
    from covidct.data.splits import assign_splits
    from covidct.preprocess import get_stage
    from covidct.train.data import apply_label_map

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d = load_config(CONFIG_DIR / "robust.yaml").data
    internal = assign_splits(load_dataset(d.dataset, root=d.root), fractions=tuple(d.split_fractions), seed=d.seed,
                             keep_official=d.keep_official_splits)
    external = apply_label_map(load_dataset(EXTERNAL), EXTERNAL_LABEL_MAP, source=EXTERNAL).assign(split="test")
    written = []
    for stage in stages:
        for kind, manifest in (("internal", internal), ("external", external)):
            cache = build_cache(manifest, stage=get_stage(stage), size=size, cache_root=cache_root, progress=False)
            stem = out_dir / f"{kind}-{stage}-{size}"
            np.savez_compressed(f"{stem}.npz", images=np.asarray(cache.images))
            cache.manifest.to_csv(f"{stem}.csv", index=False)
            written += [Path(f"{stem}.npz"), Path(f"{stem}.csv")]
    rows = external.reset_index(drop=True)
    rows.assign(fraction=lung_fractions(rows, cache_root))[["path", "slice_index", "fraction"]].to_csv(
        out_dir / "lung_fractions.csv", index=False)
    written.append(out_dir / "lung_fractions.csv")
    return written


def bundle_data(data_dir, kind: str, stage: str, size: int, class_names=None):
    """TrainingData from an exported bundle (see ``export_bundle``); external rows are lung-containing only."""
    from covidct.train.data import data_from_arrays

    stem = Path(data_dir) / f"{kind}-{stage}-{size}"
    if not Path(f"{stem}.npz").is_file():
        from covidct.errors import CovidctError

        raise CovidctError(f"{stem}.npz is missing: export it with --export-data (stage {stage!r}, size {size}).")
    images = np.load(f"{stem}.npz")["images"]
    manifest = pd.read_csv(f"{stem}.csv", keep_default_na=False)
    if kind == "external":
        fractions = pd.read_csv(Path(data_dir) / "lung_fractions.csv")
        table = dict(zip(fractions["path"] + "#" + fractions["slice_index"].astype(str), fractions["fraction"]))
        key = manifest["path"] + "#" + manifest["slice_index"].astype(int).astype(str)
        keep = np.flatnonzero(key.map(table).to_numpy(dtype=float) >= MIN_LUNG_FRACTION)
        images, manifest = images[keep], manifest.iloc[keep].assign(split="test")
    return data_from_arrays(images, manifest, classes=class_names, source=f"{kind}-{stage}")


# ------------------------------------------------------------------------------------------ train/eval
def arm_config(arm: str, seed: int, args):
    """The arm's RunConfig with the command line's size, epochs, seed and output folder."""
    from covidct.config import load_config

    overrides = [
        f"data.size={args.size}",
        f"training.epochs={args.epochs}",
        f"training.seed={seed}",
        f"name=gen-{arm}-s{args.size}-seed{seed}{args.tag}",
        f"output_root={args.runs_root}",
        f"evaluation.n_bootstrap={args.n_bootstrap}",
        f"data.cache_root={args.cache_root}",
    ]
    if args.batch_size:
        overrides.append(f"training.batch_size={args.batch_size}")
    overrides += list(args.set)
    if args.max_steps:
        overrides.append(f"training.max_steps_per_epoch={args.max_steps}")
    if args.smoke:
        overrides += [
            "data.dataset=phantom",
            "data.options={n: 96, size: 64, seed: 0}",
            "data.label_map={COV: COV, Normal: NonCOV, OtherPneumonia: NonCOV}",
            "training.min_epochs=0",
            "training.shortcut_probe=false",
        ]
    return load_config(CONFIG_DIR / f"{arm}.yaml", overrides)


def train_arm(arm: str, seed: int, args) -> tuple[Path, float]:
    """Train one arm with one seed (reusing a finished run); returns (run folder, seconds trained)."""
    from covidct.train import train
    from covidct.train.trainer import run_status

    cfg = arm_config(arm, seed, args)
    run_dir = Path(cfg.output_root) / cfg.run_name
    if run_status(run_dir) == "finished" and not args.overwrite:
        seconds = json.loads((run_dir / "run.json").read_text()).get("seconds", float("nan"))
        return run_dir, float(seconds)
    data = bundle_data(args.data_dir, "internal", cfg.data.stage, cfg.data.size) if args.data_dir else None
    started = time.perf_counter()
    train(cfg, run_dir=run_dir, resume=run_status(run_dir) == "interrupted", overwrite=args.overwrite, data=data,
          progress=False)
    return run_dir, time.perf_counter() - started


def evaluate_arm(run_dir: Path, ext, args) -> dict:
    """Internal test + external scores of one run (through ``covidct.evaluate.evaluate_run``)."""
    from covidct.evaluate import evaluate_run

    own = None
    if args.data_dir:
        info = json.loads((run_dir / "run.json").read_text())
        own = bundle_data(args.data_dir, "internal", info["stage"], int(info["size"]), info["class_names"])
    # Macro-F1 at a threshold chosen on validation first (kept here), then the argmax evaluation the files keep
    # (metrics_test.json, read back by scores_from_files).
    at_val = evaluate_run(run_dir, split="test", n_bootstrap=0, figures=False, data=own, threshold="val")
    evaluate_run(run_dir, split="test", n_bootstrap=args.n_bootstrap, figures=False, data=own)
    tag = "external-" + ("phantom-shifted" if args.smoke else EXTERNAL)
    evaluate_run(run_dir, dataset=tag.removeprefix("external-"), data=ext, label_map=EXTERNAL_LABEL_MAP,
                 n_bootstrap=0, figures=False)
    return scores_from_files(run_dir, args.n_bootstrap, at_val)


def scores_from_files(run_dir: Path, n_bootstrap: int, at_val: dict | None = None) -> dict:
    """The scores of an evaluated run from its files (``metrics_test.json``, the external predictions, history):
    no model needed, so also for runs trained on another machine whose weights did not come back. The macro-F1 at
    the validation threshold needs validation predictions, which a run folder does not keep: taken from ``at_val``
    (``evaluate_run(..., threshold="val")``'s result) when given, else None."""
    info = json.loads((run_dir / "run.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    internal = json.loads((run_dir / "metrics_test.json").read_text())["slice"]
    ci = internal.get("ci", {}).get("auc_macro_ovr", {})
    predictions = pd.read_csv(run_dir / f"predictions_{external_tag(run_dir)}.csv")
    return {
        "val_auc": float(history.loc[history["epoch"] == info["best_epoch"], "val_auc"].iloc[0]),
        "monitor": info.get("monitor"),
        "best_epoch": info.get("best_epoch"),
        "epochs_run": info.get("epochs_run"),
        "shortcut_probe_auc": (info.get("shortcut_probe") or {}).get("auc"),
        "internal_test_auc": internal["auc_macro_ovr"],
        "internal_test_auc_ci": [ci.get("low"), ci.get("high")] if ci else None,
        "internal_test_macro_f1": internal["macro_f1"],
        "internal_test_macro_f1_at_val_threshold": at_val["slice"]["macro_f1"] if at_val else None,
        "val_threshold": at_val["threshold"]["value"] if at_val else None,
        "external": external_summary(predictions, n_bootstrap, list(info["class_names"])),
    }


def external_tag(run_dir: Path) -> str:
    """The tag of the one external evaluation in a run folder (``external-covid-ct-md``; smoke: phantoms)."""
    found = sorted(path.stem.removeprefix("predictions_") for path in run_dir.glob("predictions_external-*.csv"))
    if len(found) != 1:
        raise SystemExit(f"{run_dir}: expected one predictions_external-*.csv, found {len(found)}")
    return found[0]


def results_header(args, backend: str, size: int, seeds: list) -> dict:
    """The results dict of ``run_ablation`` / ``--from-runs`` before any arm: protocol and settings."""
    return {
        "protocol": __doc__.split("Everything goes through")[0].strip(),
        "backend": backend, "size": size, "epochs": args.epochs, "seeds": list(seeds), "smoke": bool(args.smoke),
        "overrides": list(args.set), "tag": args.tag,
        "min_lung_fraction": MIN_LUNG_FRACTION, "label_map": EXTERNAL_LABEL_MAP, "arms": {},
    }


def ensemble_scores(run_dirs: list[Path], n_bootstrap: int) -> dict:
    """The seed ensemble of one arm: internal test and external scores of the averaged probabilities."""
    return {**internal_scores(ensemble(run_dirs, "test"), n_bootstrap),
            "external": external_summary(ensemble(run_dirs, external_tag(run_dirs[0])), n_bootstrap,
                                         ["NonCOV", POSITIVE])}


def summarise_runs(run_dirs: list[Path], arm: str, args) -> dict:
    """The results dict of ``run_ablation`` for one arm, from finished run folders (``--from-runs``)."""
    block = {"config": str(CONFIG_DIR / f"{arm}.yaml"), "seeds": [], "train_seconds": [], "run_dirs": [],
             "from_files": True}
    for run_dir in run_dirs:
        info = json.loads((run_dir / "run.json").read_text())
        scores = scores_from_files(run_dir, args.n_bootstrap)
        scores["seed"] = int(yaml.safe_load((run_dir / "config.yaml").read_text())["training"]["seed"])
        block["seeds"].append(scores)
        block["train_seconds"].append(float(info.get("seconds", float("nan"))))
        block["run_dirs"].append(str(run_dir))
    if len(run_dirs) > 1:
        block["ensemble"] = ensemble_scores(run_dirs, args.n_bootstrap)
    info = json.loads((run_dirs[0] / "run.json").read_text())
    results = results_header(args, info.get("backend"), info.get("size"), [s["seed"] for s in block["seeds"]])
    results["arms"][arm] = block
    return results


# --------------------------------------------------------------------------------------------- report
# The results are read, tabulated and plotted by the package (notebook 11 and `make figures` use the same code).
summarise = summarise_generalization
markdown_table = generalization_markdown
plot_results = plot_generalization


# ---------------------------------------------------------------------------------------------- main
def run_ablation(args) -> dict:
    """Train and evaluate every arm × seed, ensemble the seeds, return (and write) the results dict."""
    import keras

    results = results_header(args, keras.backend.backend(), args.size, args.seeds)
    external_by_stage = {}
    for arm in args.arms:
        block = {"config": str(CONFIG_DIR / f"{arm}.yaml"), "seeds": [], "train_seconds": [], "run_dirs": []}
        for seed in args.seeds:
            run_dir, seconds = train_arm(arm, seed, args)
            stage = json.loads((run_dir / "run.json").read_text())["stage"]
            class_names = json.loads((run_dir / "run.json").read_text())["class_names"]
            if stage not in external_by_stage:
                if args.smoke:
                    external_by_stage[stage] = smoke_external_data(stage, args.size, class_names)
                elif args.data_dir:
                    external_by_stage[stage] = bundle_data(args.data_dir, "external", stage, args.size, class_names)
                else:
                    external_by_stage[stage] = external_data(stage, args.size, class_names, args.cache_root)
            scores = evaluate_arm(run_dir, external_by_stage[stage], args)
            scores["seed"] = seed
            block["seeds"].append(scores)
            block["train_seconds"].append(seconds)
            block["run_dirs"].append(str(run_dir))
            log.info("%s seed %d: val AUC %.3f, test AUC %.3f, test macro-F1 %.3f (%.3f at the val threshold %.3f), "
                     "external AUC %.3f (%.0f s)", arm, seed, scores["val_auc"], scores["internal_test_auc"],
                     scores["internal_test_macro_f1"], scores["internal_test_macro_f1_at_val_threshold"],
                     scores["val_threshold"], scores["external"]["slice_auc"], seconds)
        if len(args.seeds) > 1:
            block["ensemble"] = ensemble_scores([Path(d) for d in block["run_dirs"]], args.n_bootstrap)
        results["arms"][arm] = block
        if args.out:
            write_json(results, args.out)
    return results


def write_json(results: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float))
    os.replace(tmp, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="model input side in pixels (default 128)")
    parser.add_argument("--epochs", type=int, default=20, help="maximum epochs per run (default 20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="arms to run (default all)")
    parser.add_argument("--batch-size", type=int, default=None, help="override training.batch_size")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides applied to every arm, e.g. training.monitor=last training.schedule=cosine")
    parser.add_argument("--tag", default="", help="suffix of the run names (runs with other --set values must differ)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on batches per epoch (quick runs)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap replicates for CIs")
    parser.add_argument("--runs-root", default="runs/bench_generalization", help="parent folder of the run folders")
    parser.add_argument("--cache-root", default=".cache/covidct", help="preprocessing cache folder")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--markdown", default=None, help="also write the markdown table here")
    parser.add_argument("--overwrite", action="store_true", help="retrain finished runs")
    parser.add_argument("--data-dir", default=None, help="read preprocessed arrays exported by --export-data "
                        "(machines without the raw data)")
    parser.add_argument("--export-data", default=None, help="export the arms' preprocessed data to this folder and exit")
    parser.add_argument("--smoke", action="store_true", help="phantom data, tiny runs (tests the pipeline in < 1 min)")
    parser.add_argument("--from-runs", nargs="+", default=None, metavar="RUN_DIR",
                        help="summarise finished, evaluated run folders of one arm (e.g. copied back from a GPU machine "
                        "without their weights) instead of training: seeds and the seed ensemble from their files")
    args = parser.parse_args(argv)
    if args.from_runs and len(args.arms) != 1:
        parser.error("--from-runs summarises one arm: name it with --arms")
    if args.smoke:
        args.size, args.epochs, args.n_bootstrap = min(args.size, 32), min(args.epochs, 2), min(args.n_bootstrap, 50)
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.export_data:
        from covidct.config import load_config

        stages = sorted({load_config(CONFIG_DIR / f"{arm}.yaml").data.stage for arm in args.arms})
        for path in export_bundle(args.export_data, stages, args.size, args.cache_root):
            sys.stdout.write(f"wrote {path}\n")
        return 0
    if args.from_runs:
        results = summarise_runs([Path(d) for d in args.from_runs], args.arms[0], args)
        if args.out:
            write_json(results, args.out)
    else:
        results = run_ablation(args)
    table = markdown_table(results)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
