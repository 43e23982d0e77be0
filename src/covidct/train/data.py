"""Training input: the cache's uint8 memmap → float32 batches via a ``keras.utils.PyDataset``.

No TensorFlow is needed (the same code runs on TF, JAX and PyTorch backends). Shuffling and
augmentation are seeded per epoch, so a resumed run draws exactly the batches an uninterrupted run
would have drawn.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight

from covidct.errors import CovidctError
from covidct.models.inference import split_inputs
from covidct.train.augment import BatchAugmenter

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Images and labels of one dataset at one stage and size, with their splits.

    Attributes:
        images: uint8 (N, H, W, C), usually the cache's memmap.
        labels: int (N,) class indices into ``class_names``.
        manifest: DataFrame aligned with ``images`` (``path, label, group, split, ...``).
        class_names: class order of the model outputs.
        cache_path: the cache folder, when the data came from one.
    """

    images: np.ndarray
    labels: np.ndarray
    manifest: pd.DataFrame
    class_names: list
    cache_path: str = ""

    def indices(self, split: str) -> np.ndarray:
        """Row indices of a split (``train``, ``val``, ``test``)."""
        return np.flatnonzero(self.manifest["split"].astype(str).to_numpy() == split)

    @property
    def groups(self) -> np.ndarray:
        return self.manifest["group"].astype(str).to_numpy()


def apply_label_map(manifest: pd.DataFrame, label_map: dict | None, source: str = "dataset") -> pd.DataFrame:
    """Rename labels with ``{raw: class}``; raw labels not in the map raise with close matches.

    Args:
        manifest: the Manifest.
        label_map: mapping of raw labels to classes, e.g. ``{"COVID-19": "COV", "CAP": "non-COV"}``; a
            value of None or ``"drop"`` removes that label's rows.
        source: name used in messages.

    Returns:
        A copy with the ``label`` column mapped (and an ``original_label`` column).
    """
    if not label_map:
        return manifest
    labels = manifest["label"].astype(str)
    missing = sorted(set(labels) - set(map(str, label_map)))
    if missing:
        from covidct.errors import did_you_mean

        raise CovidctError(
            f"{source}: label(s) {missing} are not in the label map {dict(label_map)}."
            f"{did_you_mean(missing[0], label_map)} Map every label (use 'drop' to leave one out)."
        )
    frame = manifest.copy()
    frame["original_label"] = labels
    frame["label"] = labels.map(lambda v: label_map[v])
    keep = frame["label"].notna() & (frame["label"].astype(str) != "drop")
    return frame[keep].assign(label=lambda f: f["label"].astype(str)).reset_index(drop=True)


def parse_label_map(text: str | dict | None) -> dict | None:
    """Parse ``"COVID-19=COV,CAP=non-COV,Normal=non-COV"`` into a dict (a dict passes through)."""
    if text is None or isinstance(text, dict):
        return text
    mapping = {}
    for item in str(text).split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise CovidctError(f"Label map entry {item!r} must look like RAW=CLASS (e.g. 'COVID-19=COV').")
        raw, cls = item.split("=", 1)
        mapping[raw.strip()] = cls.strip()
    return mapping


def resolve_classes(labels, classes=None, source: str = "dataset") -> list[str]:
    """The class order: ``classes`` if given (every label must be one), else the sorted labels."""
    present = sorted(set(map(str, labels)))
    if classes:
        classes = [str(c) for c in classes]
        unknown = sorted(set(present) - set(classes))
        if unknown:
            from covidct.errors import did_you_mean

            raise CovidctError(
                f"{source}: label(s) {unknown} are not among data.classes {classes}.{did_you_mean(unknown[0], classes)}"
            )
        return classes
    return present


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
    from covidct.data.cache import build_cache
    from covidct.data.datasets import load_dataset
    from covidct.data.splits import assign_splits
    from covidct.preprocess import get_stage
    from covidct.train.volume_data import is_volume_model, prepare_volume_data

    if is_volume_model(cfg.model.name):  # 3D models read the volume cache (N, D, H, W, 1) instead
        return prepare_volume_data(cfg, progress=progress)
    d = cfg.data
    manifest = load_dataset(d.dataset, root=d.root, **dict(d.options or {}))
    manifest = apply_label_map(manifest, d.label_map, source=d.dataset)
    manifest = assign_splits(manifest, fractions=tuple(d.split_fractions), seed=d.seed, keep_official=d.keep_official_splits)
    cache = build_cache(manifest, stage=get_stage(d.stage), size=d.size, cache_root=d.cache_root, progress=progress)
    if cache.failed is not None and len(cache.failed):
        warnings.warn(f"{len(cache.failed)} image(s) failed preprocessing and were skipped (see {cache.path}).", stacklevel=2)
    return data_from_arrays(cache.images, cache.manifest, classes=d.classes, cache_path=str(cache.path), source=d.dataset)


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
    from covidct.data.phantom import make_dataset
    from covidct.data.windows import window_hu

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
    from covidct.data.cache import build_cache
    from covidct.data.datasets import load_dataset
    from covidct.preprocess import get_stage

    manifest = load_dataset("phantom", n=n, size=64, seed=seed)
    manifest = apply_label_map(manifest, label_map, source=f"phantom-seed{seed}").assign(split="test")
    cache = build_cache(manifest, stage=get_stage(stage), size=size, cache_root=cache_root, progress=False)
    return data_from_arrays(cache.images, cache.manifest.assign(split="test"), classes=classes,
                            cache_path=str(cache.path), source=f"phantom-seed{seed}")


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights n / (k * count_c), one per class (classes must be present)."""
    classes = np.arange(num_classes)
    return compute_class_weight("balanced", classes=classes, y=np.asarray(labels).astype(int))


def epoch_order(indices: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The rows of one epoch: ``indices`` permuted by a pure function of (seed, epoch), or as given."""
    if not shuffle:
        return indices
    return indices[np.random.default_rng([seed, epoch]).permutation(len(indices))]


def epoch_steps(rows: int, batch_size: int, max_steps: int | None = None, drop_last: bool = False) -> int:
    """Batches in one training epoch of ``rows`` rows: with ``drop_last`` only full batches (at least one),
    then capped at ``max_steps``."""
    steps = rows // batch_size if drop_last and rows >= batch_size else int(np.ceil(rows / batch_size))
    return min(steps, max_steps) if max_steps else steps


class SliceSequence(keras.utils.PyDataset):
    """Batches of (x, y[, sample_weight]) read from a uint8 image array by row index.

    Args:
        images: uint8 (N, H, W, C) (a memmap is read lazily, one batch at a time).
        indices: rows of this split.
        labels: int (N,) labels, or None for prediction batches (x only).
        batch_size: images per batch.
        shuffle: reshuffle the rows every epoch (seeded by ``seed`` and the epoch).
        seed: seed of shuffling and augmentation.
        augmentation: factors dict (see ``covidct.config.augmentation_factors``) or None.
        class_weights: per-class weights turned into sample weights, or None.
        input_names: the model's input names (two names split the channels).
        max_steps: cap on batches per epoch.
        drop_last: leave out the last, incomplete batch of each epoch (``training.drop_last``).
    """

    def __init__(
        self,
        images,
        indices,
        labels=None,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        augmentation: dict | None = None,
        class_weights=None,
        input_names: tuple = ("image",),
        max_steps: int | None = None,
        drop_last: bool = False,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.drop_last = bool(drop_last)
        self.labels = None if labels is None else np.asarray(labels).astype("int32")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.augmentation = augmentation
        self.class_weights = None if class_weights is None else np.asarray(class_weights, dtype="float32")
        self.input_names = tuple(input_names)
        self.max_steps = max_steps
        self.order = self.indices
        self.augmenter = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Fix this epoch's row order and augmentation draws (a pure function of seed and epoch)."""
        self.epoch = int(epoch)
        self.order = epoch_order(self.indices, self.seed, self.epoch, self.shuffle)
        seed = self.seed * 10007 + self.epoch * 101
        if self.augmentation and self.augmenter is None:
            self.augmenter = BatchAugmenter(self.augmentation, seed=seed)  # built once, compiled on TensorFlow
        elif self.augmenter is not None:
            self.augmenter.reseed(seed)

    def __len__(self) -> int:
        return epoch_steps(len(self.order), self.batch_size, self.max_steps, self.drop_last)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        # Sorted reads are faster on a memmap; the batch is put back in shuffled order afterwards.
        sort = np.argsort(rows, kind="stable")
        batch = np.empty((len(rows),) + tuple(self.images.shape[1:]), dtype="float32")
        batch[sort] = self.images[rows[sort]]
        if self.augmenter is not None:
            batch = self.augmenter(batch)
        x = split_inputs(batch, self.input_names)
        if self.labels is None:
            return (x,)
        y = self.labels[rows]
        if self.class_weights is None:
            return x, y
        return x, y, self.class_weights[y]
