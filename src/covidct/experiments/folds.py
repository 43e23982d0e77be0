"""The non-test rows of a candidate's config, and a fold's training data over them.

The test rows are dropped right after loading: their images never enter the data of a fold, nothing of
them is trained on or scored. ``--export-data`` writes the non-test arrays for a machine without the raw
dataset (the test rows never leave this machine); ``--data-dir`` reads them there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.config import load_config
from covidct.errors import CovidctError
from covidct.experiments.rounds import BASE_CONFIG, CANDIDATES
from covidct.train.data import data_from_arrays, prepare_data

log = logging.getLogger(__name__)


def data_key(name: str, args) -> tuple[str, int]:
    """(stage, size) of a candidate's data."""
    cfg = candidate_config(name, 0, args)
    return cfg.data.stage, int(cfg.data.size)


def bundle_stem(data_dir, stage: str, size: int) -> Path:
    return Path(data_dir) / f"nontest-{stage}-{size}"


def non_test_data(args, name: str = "base"):
    """Candidate ``name``'s data with the test rows dropped (TrainingData of train + val rows only): built from
    the raw dataset through its config, or read from ``--data-dir`` (written by ``--export-data``)."""

    cfg = candidate_config(name, 0, args)
    source = f"{cfg.data.dataset} (non-test rows)"
    if args.data_dir:
        stem = bundle_stem(args.data_dir, cfg.data.stage, cfg.data.size)
        if not Path(f"{stem}.npz").is_file():
            raise CovidctError(f"{stem}.npz is missing: export it here with --export-data (candidate {name!r}).")
        with np.load(f"{stem}.npz") as bundle:
            images, classes = bundle["images"], [str(c) for c in bundle["class_names"]]
        manifest = pd.read_csv(f"{stem}.csv", keep_default_na=False)
        if len(manifest) != len(images) or (manifest["split"].astype(str) == "test").any():
            raise CovidctError(f"{stem}: {len(images)} images vs {len(manifest)} rows, or test rows inside")
        return data_from_arrays(images, manifest, classes=classes, source=source)
    data = prepare_data(cfg, progress=False)
    keep = np.flatnonzero(data.manifest["split"].astype(str).to_numpy() != "test")
    dropped = len(data.manifest) - len(keep)
    manifest = data.manifest.iloc[keep].reset_index(drop=True)
    images = np.asarray(data.images[keep])
    log.info("%s: %d non-test rows in %d groups kept; %d test rows dropped", name, len(keep),
             manifest["group"].nunique(), dropped)
    return data_from_arrays(images, manifest, classes=data.class_names, source=source)


def candidate_data(args) -> tuple[dict, dict]:
    """The selected candidates' non-test data, loaded once per (stage, size): ``({key: data}, {name: data})``.
    Every key's rows come in the same order (checked), so one fold assignment serves all candidates."""
    by_key, by_name = {}, {}
    for name in args.candidates:
        key = data_key(name, args)
        if key not in by_key:
            by_key[key] = non_test_data(args, name)
            if not by_key[key].manifest["path"].equals(next(iter(by_key.values())).manifest["path"]):
                raise CovidctError(f"candidate {name!r}: its non-test rows differ from the other candidates'")
        by_name[name] = by_key[key]
    return by_key, by_name


def export_non_test(args) -> list[Path]:
    """Write the selected candidates' non-test data (``nontest-<stage>-<size>.npz`` + ``.csv``) for a machine
    without the raw dataset (a GPU box): the test rows never leave this machine."""
    out = Path(args.export_data)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, data in candidate_data(args)[0].items():
        stem = bundle_stem(out, *key)
        np.savez_compressed(f"{stem}.npz", images=np.asarray(data.images), class_names=np.asarray(data.class_names))
        data.manifest.to_csv(f"{stem}.csv", index=False)
        written += [Path(f"{stem}.npz"), Path(f"{stem}.csv")]
    return written


def fold_data(data, held_out: np.ndarray, train_fraction: float = 1.0, seed: int = 0):
    """The non-test data with fold ``held_out``'s rows as ``val`` and the others as ``train``.

    ``train_fraction`` < 1 keeps only part of the training rows, by whole groups (``subsample_groups``); the
    held-out rows are the same, so the candidate's out-of-fold predictions pair with the others'."""

    split = np.full(len(data.manifest), "train", dtype=object)
    split[held_out] = "val"
    images, manifest = data.images, data.manifest.assign(split=split)
    if train_fraction < 1.0:
        train_rows = np.flatnonzero(split == "train")
        keep = np.sort(np.concatenate([train_rows[subsample_groups(manifest.iloc[train_rows], train_fraction, seed)],
                                       held_out]))
        images, manifest = np.asarray(data.images[keep]), manifest.iloc[keep].reset_index(drop=True)
    return data_from_arrays(images, manifest, classes=data.class_names, source="cross-validation fold")


def subsample_groups(manifest: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Positions (into ``manifest``) of whole groups holding about ``fraction`` of each class's rows.

    Groups are stratified by their majority label; within each stratum they are taken in a seeded random order
    until the stratum's kept rows reach ``fraction`` of its rows (the last group taken may overshoot)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    groups = manifest["group"].astype(str).to_numpy()
    majority = manifest.groupby(groups)["label"].agg(lambda x: x.astype(str).value_counts().index[0])
    sizes = pd.Series(groups).value_counts()
    chosen = []
    for label in sorted(set(majority)):
        stratum = np.array(sorted(majority.index[majority == label]))
        target, total = fraction * sizes[stratum].sum(), 0
        for group in stratum[rng.permutation(len(stratum))]:
            if total >= target:
                break
            chosen.append(group)
            total += sizes[group]
    return np.flatnonzero(np.isin(groups, chosen))


def candidate_config(name: str, fold: int, args):
    """The candidate's RunConfig for one fold: its overrides, a fixed budget, validation at the end only."""
    overrides = list(CANDIDATES[name]) + [
        f"name=cv-{name}-k{fold}of{args.folds}-cvseed{args.cv_seed}-seed{args.seed}",
        f"output_root={args.runs_root}",
        f"training.seed={args.seed}",
        f"data.cache_root={args.cache_root}",
        "training.shortcut_probe=false",
        "evaluation.n_bootstrap=0",
    ]
    if args.max_steps:
        overrides.append(f"training.max_steps_per_epoch={args.max_steps}")
    if args.smoke:
        overrides += [
            "data.dataset=phantom",
            "data.root=null",
            "data.options={n: 120, size: 64, seed: 0}",
            "data.label_map={COV: COV, Normal: NonCOV, OtherPneumonia: NonCOV}",
            f"data.size={48 if any(o.startswith('data.size=') for o in CANDIDATES[name]) else 32}",
            f"training.epochs={2 if '24' not in name else 3}",
            "training.bn_recalibration=64",
        ]
    cfg = load_config(BASE_CONFIG, overrides)
    if cfg.training.monitor != "last":
        raise CovidctError(f"candidate {name!r}: the held-out fold must select nothing (training.monitor: last).")
    return load_config(BASE_CONFIG, overrides + [f"training.validation_freq={cfg.training.epochs}"])
