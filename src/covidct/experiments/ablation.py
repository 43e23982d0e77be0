"""Ablation of the ``robust`` recipe: which parts make scores survive a change of hospital.

Protocol (fixed before any external number was seen):

* Train **only** on ``sars-cov-2-ct`` (grouped split, group proxy = file-number blocks merged with
  near-duplicate clusters); the validation split selects the checkpoint (``val_auc``); the recipe is
  chosen by validation AUC and its consistency across seeds.
* Report the internal **test** split and, as an external check never used for choices, ``covid-ct-md``
  (COVID-19 vs CAP + Normal) at slice level on lung-containing slices (``external.MIN_LUNG_FRACTION``) and
  at patient level (mean of the slice probabilities), plus whether every COVID patient ranks above all others.
* Arms are cumulative (``configs/robust/<arm>.yaml``): ``plain`` (whole slice) → ``lungs`` (lung crop) →
  ``standardize`` (``lungs-robust`` stage) → ``appearance`` (``training.augmentation: robust``) → ``robust``
  (+ AdamW, dropout, cosine: the recipe), and the leave-one-out ``no-standardize``; ``histogram`` is
  ``standardize`` with rank equalisation inside the lungs. Every arm is trained with several seeds;
  ``ensemble`` rows average the seeds' probabilities (``covidct.experiments.ensembles``).
* 95% CIs: bootstrap over patients/groups; across seeds: mean ± SD.

Everything goes through ``covidct.train.train`` and ``covidct.evaluate.evaluate_run``;
``benchmarks/bench_generalization.py`` is the command line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import keras
import pandas as pd
import yaml

from covidct.config import load_config
from covidct.errors import CovidctError
from covidct.evaluate import evaluate_run
from covidct.experiments.ensembles import ensemble, external_summary, internal_scores
from covidct.experiments.external import (
    CONFIG_DIR,
    EXTERNAL,
    EXTERNAL_LABEL_MAP,
    MIN_LUNG_FRACTION,
    bundle_data,
    external_data,
    smoke_external_data,
)
from covidct.experiments.rounds import POSITIVE
from covidct.runs import run_status
from covidct.train import train

#: Cumulative arms, then the leave-one-out arm, then ``histogram``.
ARMS = ("plain", "lungs", "standardize", "appearance", "robust", "no-standardize", "histogram")

log = logging.getLogger(__name__)


def arm_config(arm: str, seed: int, args):
    """The arm's RunConfig with the command line's size, epochs, seed and output folder."""
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
        raise CovidctError(f"{run_dir}: expected one predictions_external-*.csv, found {len(found)}")
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


def run_ablation(args) -> dict:
    """Train and evaluate every arm × seed, ensemble the seeds, return (and write) the results dict."""
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
    """The results JSON, written to a temporary file and renamed (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float))
    os.replace(tmp, path)
