"""Training data of a run: the configured dataset, split by group, through the preprocessed cache.

``prepare_data(cfg)`` loads the dataset, assigns the grouped splits and builds (or reuses) the cache of the
run's stage and size (for a volume model, the volume cache of ``covidct.train.volume_data``); phantom data
and arrays in memory become the same ``TrainingData``. The samples themselves (``TrainingData``,
``SliceSequence``, label maps) live in ``covidct.train.samples`` and are re-exported here.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from covidct.data.cache import build_cache
from covidct.data.datasets import load_dataset
from covidct.data.phantom import make_dataset
from covidct.data.splits import assign_splits
from covidct.data.windows import window_hu
from covidct.errors import CovidctError
from covidct.preprocess import get_stage
from covidct.train.samples import (  # noqa: F401  (re-exported: their old home)
    SliceSequence,
    TrainingData,
    apply_label_map,
    balanced_class_weights,
    epoch_order,
    epoch_steps,
    parse_label_map,
    resolve_classes,
)
from covidct.train.sources import add_extra_sources
from covidct.train.volume_data import is_volume_model, prepare_volume_data

log = logging.getLogger(__name__)


def check_training_splits(labels: np.ndarray, split: np.ndarray, class_names: list, source: str = "dataset") -> None:
    """Stop when training cannot be honest: one class, a class missing from train or validation.

    Raises:
        CovidctError: naming the split and class, and suggesting a fix.
    """
    if len(class_names) < 2:
        raise CovidctError(
            f"{source}: only one class ({class_names}) was found; a classifier needs at least two. "
            "Check the dataset root and data.label_map."
        )
    for name in ("train", "val"):
        rows = split == name
        if not rows.any():
            raise CovidctError(
                f"{source}: the {name!r} split is empty. Set data.split_fractions (e.g. [0.7, 0.15, 0.15]) "
                "or data.keep_official_splits=false."
            )
        missing = [class_names[c] for c in range(len(class_names)) if not (labels[rows] == c).any()]
        if missing:
            raise CovidctError(
                f"{source}: class(es) {missing} have no images in the {name!r} split, so "
                f"{'the model cannot learn them' if name == 'train' else 'the checkpoint cannot be selected on them'}. "
                "Use more groups, another data.seed, or different data.split_fractions."
            )


def prepare_data(cfg, progress: bool = True) -> TrainingData:
    """Load the configured dataset, split it by group and build (or reuse) the preprocessed cache.

    Args:
        cfg: a ``covidct.config.RunConfig``.
        progress: show the cache's progress bar.

    Returns:
        TrainingData over the cache (images are a read-only memmap); for a volume model (``task="volume"``)
        the volume cache of ``covidct.train.volume_data.prepare_volume_data``.
    """

    if is_volume_model(cfg.model.name):  # 3D models read the volume cache (N, D, H, W, 1) instead
        return prepare_volume_data(cfg, progress=progress)
    d = cfg.data
    manifest = load_dataset(d.dataset, root=d.root, **dict(d.options or {}))
    manifest = apply_label_map(manifest, d.label_map, source=d.dataset)
    manifest = assign_splits(manifest, fractions=tuple(d.split_fractions), seed=d.seed, keep_official=d.keep_official_splits)
    cache = build_cache(manifest, stage=get_stage(d.stage), size=d.size, cache_root=d.cache_root, progress=progress)
    if cache.failed is not None and len(cache.failed):
        warnings.warn(f"{len(cache.failed)} image(s) failed preprocessing and were skipped (see {cache.path}).", stacklevel=2)
    images, manifest = cache.images, cache.manifest
    if d.extra_sources:  # further datasets join the training split only (covidct.train.sources)
        images, manifest = add_extra_sources(images, manifest, d.extra_sources, d.stage, d.size, d.cache_root,
                                             classes=d.classes, progress=progress)
    return data_from_arrays(images, manifest, classes=d.classes, cache_path=str(cache.path), source=d.dataset)


def data_from_arrays(images, manifest: pd.DataFrame, classes=None, cache_path: str = "", source: str = "dataset") -> TrainingData:
    """Wrap images (N, H, W, C) uint8 and an aligned manifest (with a ``split`` column) as TrainingData."""
    images = np.asarray(images) if not isinstance(images, np.memmap) else images
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or len(images) != len(manifest):
        raise CovidctError(f"{source}: images must be (N, H, W, C) aligned with the manifest; got {images.shape} for {len(manifest)} rows.")
    manifest = manifest.reset_index(drop=True)
    class_names = resolve_classes(manifest["label"], classes, source=source)
    labels = manifest["label"].astype(str).map({c: i for i, c in enumerate(class_names)}).to_numpy().astype(int)
    return TrainingData(images=images, labels=labels, manifest=manifest, class_names=class_names, cache_path=cache_path)


def phantom_slice_data(n: int, size: int, seed: int = 0, drop: str | None = None, val_every: int = 5) -> TrainingData:
    """Windowed phantom slices (``make_dataset``) as TrainingData: every ``val_every``-th patient in ``val``,
    the rest in ``train`` (patient-disjoint), rows of class ``drop`` left out. For comparisons that need a
    2-D model beside another one (slice aggregation on volumes) without a cache."""

    phantoms = make_dataset(n=n, size=size, seed=seed, slices_per_patient=5)
    images = np.round(window_hu(phantoms.images_hu) * 255).astype(np.uint8)[..., None]
    groups = np.asarray(phantoms.groups)
    split_of = {p: ("val" if i % val_every == 0 else "train") for i, p in enumerate(sorted(set(groups)))}
    manifest = pd.DataFrame({"path": [f"s{i}" for i in range(len(groups))], "label": phantoms.labels,
                             "group": groups, "split": [split_of[g] for g in groups], "source": "phantom"})
    keep = (manifest["label"] != drop).to_numpy()
    return data_from_arrays(images[keep], manifest[keep].reset_index(drop=True), source="phantom")


def phantom_external_data(stage: str, size: int, cache_root: str = ".cache/covidct", n: int = 60,
                          seed: int = 7, classes=None, label_map: dict | None = None) -> TrainingData:
    """Phantoms of another seed, preprocessed with a run's stage and size, every row in ``test``.

    The stand-in for an external dataset when none is at hand (smoke runs, notebooks without data): new
    synthetic patients the run never saw, drawn by the same generator, so a small gap is expected.

    Args:
        stage: the run's preprocessing stage.
        size: the run's input size.
        cache_root: folder of the preprocessed cache.
        n: phantom slices (64 px, written once to ``data/phantom/n<n>-s64-seed<seed>``).
        seed: phantom seed (the demo trains on seed 0).
        classes: the run's class order (default: sorted labels).
        label_map: ``{phantom label: run class}`` for a run with other classes (the phantom labels are COV,
            Normal and OtherPneumonia, e.g. ``{"COV": "COV", "Normal": "NonCOV", "OtherPneumonia": "NonCOV"}``).

    Returns:
        TrainingData whose rows are all in the ``test`` split.
    """

    manifest = load_dataset("phantom", n=n, size=64, seed=seed)
    manifest = apply_label_map(manifest, label_map, source=f"phantom-seed{seed}").assign(split="test")
    cache = build_cache(manifest, stage=get_stage(stage), size=size, cache_root=cache_root, progress=False)
    return data_from_arrays(cache.images, cache.manifest.assign(split="test"), classes=classes,
                            cache_path=str(cache.path), source=f"phantom-seed{seed}")


