"""Training samples in memory: images with labels and splits (``TrainingData``), class names and label maps,
the seeded per-epoch order of rows, and ``SliceSequence`` (uint8 images → float32 batches, a ``PyDataset``).

No TensorFlow is needed (the same code runs on TF, JAX and PyTorch backends). Shuffling and augmentation
are seeded per epoch, so a resumed run draws exactly the batches an uninterrupted run would have drawn.
Slices (``covidct.train.data``) and volumes (``covidct.train.volume_data``) are both read through here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight

from covidct.errors import CovidctError, did_you_mean
from covidct.models.inference import split_inputs
from covidct.train.augment import BatchAugmenter
from covidct.train.pipeline import Prefetcher, resolve_pipeline

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
                raise CovidctError(
                f"{source}: label(s) {unknown} are not among data.classes {classes}.{did_you_mean(unknown[0], classes)}"
            )
        return classes
    return present


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
        augmentation: factors dict (see ``covidct.train.recipes.augmentation_factors``) or None.
        class_weights: per-class weights turned into sample weights, or None.
        input_names: the model's input names (two names split the channels).
        max_steps: cap on batches per epoch.
        drop_last: leave out the last, incomplete batch of each epoch (``training.drop_last``).
        sampler: ``sampler(seed, epoch) -> rows`` giving each epoch's rows instead of a permutation of
            ``indices`` (``covidct.train.sampling.SourceBalancedSampler``); None: ``epoch_order``.
        pipeline: ``training.input_pipeline`` (``covidct.train.pipeline``): ``threaded`` prepares the next
            batches on a background thread (the same batches as ``inline``).
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
        sampler=None,
        pipeline: str = "inline",
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        self.prefetcher = Prefetcher(self.batch) if resolve_pipeline(pipeline) == "threaded" else None
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
        self.sampler = sampler
        self.augmenter = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Fix this epoch's row order and augmentation draws (a pure function of seed and epoch)."""
        if self.prefetcher is not None:
            self.prefetcher.reset()  # no batch of the last epoch is being prepared while the draws are re-seeded
        self.epoch = int(epoch)
        if self.sampler is not None:
            self.order = np.asarray(self.sampler(self.seed, self.epoch), dtype=np.int64)
        else:
            self.order = epoch_order(self.indices, self.seed, self.epoch, self.shuffle)
        seed = self.seed * 10007 + self.epoch * 101
        if self.augmentation and self.augmenter is None:
            self.augmenter = BatchAugmenter(self.augmentation, seed=seed)  # built once, compiled on TensorFlow
        elif self.augmenter is not None:
            self.augmenter.reseed(seed)

    def __len__(self) -> int:
        return epoch_steps(len(self.order), self.batch_size, self.max_steps, self.drop_last)

    def __getitem__(self, index: int):
        if self.prefetcher is not None:
            return self.prefetcher.get(index, len(self))
        return self.batch(index)

    def batch(self, index: int):
        """Batch ``index`` of this epoch, read and augmented now (``__getitem__`` may hand out a prefetched one)."""
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
