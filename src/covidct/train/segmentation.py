"""What ``task: segmentation`` changes in the one training path: mask data, splits, batches, scores.

``covidct.train.train(cfg)`` compiles and fits every model, segmenters included; this module supplies
the parts that differ when the target is a per-pixel mask instead of a class:

- **Data.** Image/mask pairs from ``covidct.segment.data`` (``load_pairs`` for ``kaggle-lungs`` and
  ``medseg``, ``phantom_pairs`` for ``phantom``), uint8 display images (N, H, W, 1) and binary masks
  (N, H, W); with ``segmentation.lung_input`` ``masked`` or ``auto`` also dilated classical lung masks;
  with ``segmentation.crop: lungs`` each pair is the square around its lungs (``covidct.segment.data.lung_crop``),
  with its box and the whole slice's mask, on which ``covidct.segment.evaluate`` scores the pasted-back test
  predictions (validation Dice, the selector, is computed on the crops).
- **Splits** (``plan_splits``). Without folds: the dataset's ``test`` rows are the reported part, its
  ``val`` rows (or, when it has none, a ``segmentation.val_fraction`` of the training groups) select
  the checkpoint, the rest trains. With ``segmentation.folds = k``: grouped k-fold cross-validation,
  each fold's held-out groups are its test part and a validation part is carved (by group) out of its
  training part. No group is ever in two parts of one split. ``segmentation.val_fraction: 0`` (only with
  ``training.monitor: last``, a fixed epoch budget that selects nothing) carves no validation part: every
  training group is fitted.
- **Batches** (``MaskSequence``). Shuffled float32 image/mask batches with a random left-right mirror
  and rotation applied to image and mask together (``augment_batch``), drawn from (seed, epoch, batch),
  so a resumed run sees exactly the batches an uninterrupted one would have.
- **Scores** (``mask_validation_scores``). ``val_dice`` (mean per-image Dice of ``sigmoid >= 0.5``;
  both masks empty scores 1) selects the checkpoint; ``val_loss`` is the Dice + BCE loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import keras
import numpy as np
import pandas as pd

from covidct.data.splits import group_folds, holdout_groups
from covidct.errors import CovidctError, unknown_name_error
from covidct.models.inference import (  # re-exported: their old home
    predict_mask_logits,
    predict_mask_probabilities,
)
from covidct.segment.data import (
    SEGMENTATION_DATASETS,
    crop_pairs_to_lungs,
    dilated_lung_mask,
    load_pairs,
    phantom_pairs,
)
from covidct.train.data import epoch_order, epoch_steps

log = logging.getLogger(__name__)

SPLIT_FILE = "split.csv"


# ------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------


def needs_lungs(cfg) -> bool:
    """Whether the run feeds lung-masked images (``segmentation.lung_input`` ``masked`` or ``auto``)."""
    return cfg.segmentation.lung_input != "none"


def load_segmentation_pairs(cfg):
    """The image/mask pairs of ``cfg.data`` at ``cfg.data.size`` (``covidct.segment.data``).

    ``data.dataset`` ``kaggle-lungs`` or ``medseg`` reads ``data.root`` (a data root holding the staged
    folders, or the dataset folder itself; default ``COVIDCT_DATA_ROOT``); ``phantom`` makes synthetic
    pairs from ``data.options`` (``n``, ``target``: ``lungs`` or ``lesion``, ``seed``).

    Returns:
        ``covidct.segment.data.SegmentationPairs`` (with ``lungs`` when the lung input needs them).
    """
    d = cfg.data
    if d.dataset == "phantom":
        options = dict(d.options or {})
        unknown = sorted(set(options) - {"n", "target", "seed"})
        if unknown:
            raise CovidctError(
                f"data.options {unknown} do not apply to phantom segmentation pairs (n, target, seed)."
            )
        pairs = phantom_pairs(
            n=int(options.get("n", 60)),
            size=d.size,
            target=str(options.get("target", "lungs")),
            seed=int(options.get("seed", d.seed)),
        )
        if cfg.segmentation.crop == "lungs":
            return crop_pairs_to_lungs(pairs, d.size)
        if needs_lungs(cfg):
            pairs.lungs = np.stack([dilated_lung_mask(image[..., 0]) for image in pairs.images])
        return pairs
    if d.dataset not in SEGMENTATION_DATASETS:
        raise unknown_name_error("segmentation dataset", d.dataset, [*SEGMENTATION_DATASETS, "phantom"])
    return load_pairs(
        d.dataset, d.root, d.size, with_lungs=needs_lungs(cfg), crop=cfg.segmentation.crop, cache_root=d.cache_root
    )


def check_pairs(pairs, cfg) -> None:
    """Stop with a clear message when the pairs cannot train the configured segmenter.

    Raises:
        CovidctError: wrong array shapes, a size other than ``data.size``, non-binary masks, or lung
            masks missing for a lung-masked input.
    """
    images, masks = np.asarray(pairs.images), np.asarray(pairs.masks)
    source = f"data ({cfg.data.dataset})"
    if images.ndim != 4 or images.shape[-1] != 1 or masks.shape != images.shape[:3]:
        raise CovidctError(
            f"{source}: segmentation pairs need images (N, H, W, 1) and masks (N, H, W); got {images.shape} and "
            f"{masks.shape}."
        )
    if images.shape[1:3] != (cfg.data.size, cfg.data.size):
        raise CovidctError(
            f"{source}: the pairs are {images.shape[1]}x{images.shape[2]} px but data.size is {cfg.data.size}; "
            "load them at data.size (load_pairs(..., size=...)) or change data.size."
        )
    if (
        len(images) != len(pairs.names)
        or len(pairs.groups) != len(images)
        or len(pairs.splits) != len(images)
    ):
        raise CovidctError(
            f"{source}: names, groups and splits must have one entry per image ({len(images)})."
        )
    if not np.isin(np.unique(masks), (0, 1)).all():
        raise CovidctError(
            f"{source}: masks must be binary {{0, 1}}; got values {np.unique(masks)[:6].tolist()}."
        )
    if cfg.segmentation.crop == "lungs" and (
        pairs.boxes is None or pairs.frame_masks is None or len(pairs.boxes) != len(images)
    ):
        raise CovidctError(
            f"{source}: segmentation.crop='lungs' needs lung-cropped pairs with boxes and whole-slice masks: load "
            "them with load_pairs(..., crop='lungs') or covidct.segment.data.crop_pairs_to_lungs."
        )
    if needs_lungs(cfg) and pairs.lungs is None:
        raise CovidctError(
            f"segmentation.lung_input={cfg.segmentation.lung_input!r} needs lung masks: load the pairs with "
            "with_lungs=True (load_pairs(..., with_lungs=True)) or use lung_input: none."
        )


def lung_masked(images: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Images with everything outside the (dilated) lung mask set to 0: the ``masked`` lung input."""
    return images * (np.asarray(lungs)[..., None] > 0).astype(images.dtype)


def model_inputs(pairs, masked: bool) -> np.ndarray:
    """The uint8 (N, H, W, 1) images a segmenter sees: plain or lung-masked."""
    return lung_masked(pairs.images, pairs.lungs) if masked else pairs.images


# ------------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------------


def group_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train, val) by group (``covidct.data.splits.holdout_groups``)."""
    return holdout_groups(groups, fraction, seed)


def grouped_folds(groups: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Test-row indices of ``k`` grouped folds (``covidct.data.splits.group_folds``)."""
    return group_folds(groups, k, seed, setting="segmentation.folds (--folds)")


@dataclass
class SplitPlan:
    """Rows of one split of the pairs: ``name`` is ``""`` (the test split) or ``fold_<k>``."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def frame(self, pairs) -> pd.DataFrame:
        """``name, group, split`` of every row used (saved as ``split.csv``)."""
        rows = [(i, part) for part in ("train", "val", "test") for i in getattr(self, part)]
        return pd.DataFrame(
            {
                "name": [pairs.names[i] for i, _ in rows],
                "group": [str(pairs.groups[i]) for i, _ in rows],
                "split": [part for _, part in rows],
            }
        )


def plan_splits(pairs, cfg) -> list[SplitPlan]:
    """The splits to fit: one (dataset test split) or ``segmentation.folds`` (grouped CV); see the module doc.

    Raises:
        CovidctError: no test rows without folds, too few groups for a validation part.
    """
    s, seed = cfg.segmentation, cfg.data.seed
    groups = np.asarray(pairs.groups).astype(str)
    splits = np.asarray(pairs.splits).astype(str)
    plans = []
    if not s.folds:
        test = np.flatnonzero(splits == "test")
        if not len(test):
            raise CovidctError(
                f"data.dataset {cfg.data.dataset!r} has no 'test' split; set segmentation.folds (e.g. 5, --folds 5) "
                "for grouped cross-validation."
            )
        rest = np.flatnonzero(splits != "test")
        official_val = rest[splits[rest] == "val"]
        if len(official_val):
            train, val = rest[splits[rest] != "val"], official_val
        elif s.val_fraction == 0:
            train, val = rest, rest[:0]
        else:
            fit_rows, val_rows = group_split(groups[rest], s.val_fraction, seed)
            train, val = rest[fit_rows], rest[val_rows]
        plans.append(SplitPlan("", train, val, test))
    else:
        for k, test in enumerate(grouped_folds(groups, s.folds, seed)):
            rest = np.setdiff1d(np.arange(len(groups)), test)
            if s.val_fraction == 0:  # monitor last: a fixed budget on every training group, nothing selected
                plans.append(SplitPlan(f"fold_{k}", rest, rest[:0], np.sort(test)))
                continue
            fit_rows, val_rows = group_split(groups[rest], s.val_fraction, seed)
            plans.append(SplitPlan(f"fold_{k}", rest[fit_rows], rest[val_rows], np.sort(test)))
    for plan in plans:
        where = plan.name or "the training part"
        if not len(plan.train) or (not len(plan.val) and s.val_fraction > 0):
            raise CovidctError(
                f"{where} has {len(np.unique(groups[np.r_[plan.train, plan.val]]))} group(s): selection needs a "
                "validation part with at least one group and a training part with another. Use more data or fewer folds."
            )
        parts = [set(groups[getattr(plan, p)]) for p in ("train", "val", "test")]
        if parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]:
            raise CovidctError(
                f"{where}: a group lies in two of train/val/test (the dataset's official split mixes groups); "
                "use segmentation.folds for a grouped split."
            )
    return plans


# ------------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------------


def augment_batch(
    images: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    rotation_deg: float = 0.0,
    flip: bool = True,
):
    """Randomly mirror (left-right, p = 0.5) and rotate (uniform in +-``rotation_deg``) each image/mask pair.

    Left-right mirror images and small rotations are plausible slices. Images are rotated with linear
    interpolation and a 0 (air) fill, masks with nearest-neighbour interpolation, so masks stay binary.

    Args:
        images: float32 (N, H, W, C).
        masks: float32 (N, H, W, 1) in {0, 1}.
        rng: numpy random generator.
        rotation_deg: largest rotation in degrees (0: no rotation).
        flip: mirror left-right with probability 0.5.

    Returns:
        (images, masks), new arrays of the same shapes.
    """
    images, masks = images.copy(), masks.copy()
    height, width = images.shape[1:3]
    for index in range(len(images)):
        if flip and rng.random() < 0.5:
            images[index], masks[index] = images[index, :, ::-1], masks[index, :, ::-1]
        if rotation_deg > 0:
            angle = float(rng.uniform(-rotation_deg, rotation_deg))
            matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
            image = cv2.warpAffine(
                images[index],
                matrix,
                (width, height),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            mask = cv2.warpAffine(
                masks[index, ..., 0],
                matrix,
                (width, height),
                flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            images[index] = image.reshape(images[index].shape)
            masks[index, ..., 0] = mask
    return images, masks


class MaskSequence(keras.utils.PyDataset):
    """Batches of (image, mask) float32 arrays read by row index, shuffled and augmented per epoch.

    Args:
        images: uint8 (N, H, W, 1) model inputs (plain or lung-masked).
        masks: uint8 (N, H, W) binary masks.
        indices: rows of the training part.
        batch_size: pairs per batch.
        shuffle: reshuffle the rows every epoch (seeded by ``seed`` and the epoch).
        seed: seed of shuffling and augmentation.
        augmentation: ``{"flip": bool, "rotation_deg": float}`` (``covidct.config.segmentation_augmentation``)
            or None.
        max_steps: cap on batches per epoch.
        drop_last: leave out the last, incomplete batch of each epoch (``training.drop_last``).
    """

    def __init__(
        self,
        images,
        masks,
        indices,
        batch_size: int = 8,
        shuffle: bool = True,
        seed: int = 0,
        augmentation: dict | None = None,
        max_steps: int | None = None,
        drop_last: bool = False,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images = images
        self.masks = masks
        self.indices = np.asarray(indices, dtype=np.int64)
        self.drop_last = bool(drop_last)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.augmentation = augmentation
        self.max_steps = max_steps
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Fix this epoch's row order (a pure function of seed and epoch; augmentation adds the batch index)."""
        self.epoch = int(epoch)
        self.order = epoch_order(self.indices, self.seed, self.epoch, self.shuffle)

    def __len__(self) -> int:
        return epoch_steps(len(self.order), self.batch_size, self.max_steps, self.drop_last)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        x = np.asarray(self.images[rows], dtype="float32")
        y = np.asarray(self.masks[rows], dtype="float32")[..., None]
        if self.augmentation:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            x, y = augment_batch(
                x, y, rng, self.augmentation.get("rotation_deg", 0.0), self.augmentation.get("flip", True)
            )
        return x, y


# ------------------------------------------------------------------------------------------------------
# Scores
# ------------------------------------------------------------------------------------------------------


def dice_per_image(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Dice of each binary (N, H, W) prediction against its mask; 1 where both are empty."""
    predicted = np.asarray(predicted).reshape(len(predicted), -1) > 0
    true = np.asarray(true).reshape(len(true), -1) > 0
    total = predicted.sum(1) + true.sum(1)
    intersection = (predicted & true).sum(1)
    return np.where(total > 0, 2.0 * intersection / np.maximum(total, 1), 1.0)


def dice_bce_numpy(true: np.ndarray, logits: np.ndarray, smooth: float = 1.0) -> float:
    """The Dice + BCE loss of ``covidct.train.losses.dice_bce_loss`` in NumPy, mean over images."""
    x = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    y = np.asarray(true, dtype=np.float64).reshape(len(true), -1)
    bce = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))), axis=1)
    p = 1.0 / (1.0 + np.exp(-x))
    soft_dice = (2.0 * (y * p).sum(1) + smooth) / (y.sum(1) + p.sum(1) + smooth)
    return float(np.mean(bce + 1.0 - soft_dice))


def mask_validation_scores(true_masks: np.ndarray, logits: np.ndarray) -> dict:
    """``val_loss`` (Dice + BCE) and ``val_dice`` (mean per-image Dice at probability 0.5) of (N, H, W) logits."""
    return {
        "val_loss": dice_bce_numpy(true_masks, logits),
        "val_dice": float(np.mean(dice_per_image(logits >= 0.0, true_masks))),
    }


__all__ = [
    "MaskSequence",
    "SplitPlan",
    "augment_batch",
    "grouped_folds",
    "load_segmentation_pairs",
    "mask_validation_scores",
    "plan_splits",
    "predict_mask_logits",
    "predict_mask_probabilities",
]
