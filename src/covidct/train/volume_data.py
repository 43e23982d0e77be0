"""Training input for volume models (``task="volume"``): the volume cache as ``TrainingData``.

``train(cfg)`` and ``evaluate_run`` call ``covidct.train.data.prepare_data(cfg)``; when ``cfg.model.name``
is a volume model (``cnn3d_covidscan``, ``cnn3d_kerasio``) it hands over to ``prepare_volume_data``,
which loads the dataset, maps the labels, splits by group (patient), and preprocesses every volume
once into ``covidct.data.volumes.build_volume_cache``: HU [-1000, 400] mapped to uint8 0..255, resized
to a fixed (D, H, W). The result is the same ``TrainingData`` the slice path gives, with images
``(N, D, H, W, 1)`` instead of ``(N, H, W, C)``, so fitting, checkpoint selection and evaluation are
shared (one training path, one evaluation path).

**Shape.** ``data.volume_shape`` (e.g. ``[32, 64, 64]`` or ``"covidscan"``, in covidct's (D, H, W)
order; see ``covidct.data.volumes.SHAPES``) or, when None, the model's default input shape.
``data.stage`` and ``data.size`` do not apply to volumes.

**Augmentation.** With ``training.augmentation`` other than ``"none"``, training batches go through
``covidct.train.augment_volume.VolumeAugmenter`` (in-plane rotation, left-right flips, small intensity
shifts), drawn from (seed, epoch, batch) so a resumed run sees the same batches:
``"stage"`` / ``"robust"`` use its defaults (±15°, flips, ±10 grey levels, ±5% contrast); a dict's
``rotation`` (a fraction of a full turn, as for slices) and ``flip`` set ``rotation_deg`` and ``flip_lr``
(``zoom``, ``translation`` and ``appearance`` are 2-D only and ignored, with a warning).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from covidct.data.datasets import load_dataset
from covidct.data.splits import assign_splits
from covidct.data.volumes import build_volume_cache, resolve_shape, volume_rows
from covidct.errors import CovidctError
from covidct.models import get_spec
from covidct.train.augment_volume import VolumeAugmenter
from covidct.train.recipes import augmentation_factors
from covidct.train.samples import SliceSequence, TrainingData, apply_label_map, resolve_classes

log = logging.getLogger(__name__)


def is_volume_model(name: str) -> bool:
    """Whether the registered model ``name`` is a volume (3D) model."""
    return get_spec(name).task == "volume"


def volume_shape_of(cfg) -> tuple[int, int, int]:
    """The (D, H, W) volumes are resized to: ``data.volume_shape`` or the model's default input shape."""
    shape = cfg.data.volume_shape
    if shape is None:
        return tuple(int(s) for s in get_spec(cfg.model.name).input_shape[:3])
    return resolve_shape(shape)


def _volume_data(cache, classes, source: str) -> TrainingData:
    manifest = cache.manifest.reset_index(drop=True)
    class_names = resolve_classes(manifest["label"], classes, source=source)
    labels = manifest["label"].astype(str).map({c: i for i, c in enumerate(class_names)}).to_numpy().astype(int)
    return TrainingData(images=cache.images, labels=labels, manifest=manifest, class_names=class_names, cache_path=str(cache.path))


def prepare_volume_data(cfg, progress: bool = True) -> TrainingData:
    """Load the configured dataset as volumes, split it by group and build (or reuse) the volume cache.

    Args:
        cfg: a ``covidct.config.RunConfig`` whose model is a volume model.
        progress: show the cache's progress bar.

    Returns:
        TrainingData with images a read-only uint8 memmap (N, D, H, W, 1) and one manifest row per
        volume (a per-slice manifest, e.g. ``covid-ct-md``, is collapsed to one row per file).
    """
    d = cfg.data
    manifest = load_dataset(d.dataset, root=d.root, **dict(d.options or {}))
    manifest = volume_rows(apply_label_map(manifest, d.label_map, source=d.dataset))
    manifest = assign_splits(manifest, fractions=tuple(d.split_fractions), seed=d.seed, keep_official=d.keep_official_splits)
    cache = build_volume_cache(manifest, shape=volume_shape_of(cfg), cache_root=d.cache_root, progress=progress)
    if len(cache.failed):
        warnings.warn(f"{len(cache.failed)} volume(s) failed preprocessing and were skipped (see {cache.path}).", stacklevel=2)
    return _volume_data(cache, d.classes, d.dataset)


def external_volume_data(loaded, dataset: str, root, label_map, progress: bool = False) -> TrainingData:
    """Another dataset as volumes at a volume run's shape, labels mapped onto the run's classes (all ``test``)."""
    manifest = volume_rows(apply_label_map(load_dataset(dataset, root=root), label_map, source=dataset))
    unknown = sorted(set(manifest["label"].astype(str)) - set(loaded.class_names))
    if unknown:
        raise CovidctError(
            f"External dataset {dataset!r}: label(s) {unknown} are not classes of the run {loaded.class_names}. "
            f"Pass a label map, e.g. --label-map \"{unknown[0]}={loaded.class_names[0]}\"."
        )
    shape = loaded.info.get("volume_shape") or volume_shape_of(loaded.config)
    cache = build_volume_cache(manifest.assign(split="test"), shape=shape, cache_root=loaded.config.data.cache_root, progress=progress)
    return _volume_data(cache, loaded.class_names, dataset)


def volume_augmentation(training) -> dict | None:
    """``VolumeAugmenter`` keyword arguments for ``training.augmentation`` (None: off); see the module doc."""
    aug = training.augmentation
    factors = augmentation_factors(training, "original")  # validates dict keys
    if factors is None:
        return None
    if aug in ("stage", "robust"):
        return {}
    ignored = sorted(k for k in ("zoom", "translation", "appearance") if factors.get(k))
    if ignored:
        log.warning("training.augmentation: %s apply to 2-D slices only; volume models ignore them.", ignored)
    return {"rotation_deg": abs(float(factors["rotation"])) * 360.0, "flip_lr": bool(factors["flip"])}


class VolumeSequence(SliceSequence):
    """``SliceSequence`` over (N, D, H, W, 1) volumes, with ``VolumeAugmenter`` instead of 2-D layers.

    Args:
        images: uint8 (N, D, H, W, 1) (a memmap is read one batch at a time).
        indices, labels, batch_size, shuffle, seed, class_weights, input_names, max_steps, drop_last: as
            ``SliceSequence``.
        augmentation: ``VolumeAugmenter`` keyword arguments (``volume_augmentation``) or None.
    """

    def __init__(self, images, indices, labels=None, batch_size: int = 8, shuffle: bool = False, seed: int = 0,
                 augmentation: dict | None = None, class_weights=None, input_names: tuple = ("volume",),
                 max_steps: int | None = None, drop_last: bool = False):
        if len(np.shape(images)) != 5:
            raise CovidctError(f"VolumeSequence: volumes must be (N, D, H, W, C), got shape {np.shape(images)}.")
        self.volume_augmentation = None if augmentation is None else dict(augmentation)
        super().__init__(images, indices, labels=labels, batch_size=batch_size, shuffle=shuffle, seed=seed,
                         augmentation=None, class_weights=class_weights, input_names=input_names, max_steps=max_steps,
                         drop_last=drop_last)

    def __getitem__(self, index: int):
        item = super().__getitem__(index)
        if self.volume_augmentation is None:
            return item

        # One generator per (seed, epoch, batch): the draws do not depend on the order batches are read.
        seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
        augment = VolumeAugmenter(**self.volume_augmentation, seed=seed)
        return (augment(item[0]),) + tuple(item[1:])


__all__ = [
    "is_volume_model",
    "volume_shape_of",
    "prepare_volume_data",
    "external_volume_data",
    "volume_augmentation",
    "VolumeSequence",
]
