"""Training segmenters (lungs, infection) with plain Keras ``compile``/``fit``.

``train_segmenter`` fits a registered segmentation model (``bcd_unet``, ``unet``; 1 logit channel per
pixel, input display values in [0, 255] scaled inside the model) with Dice + binary cross-entropy and
writes a run folder like the classification runs::

    runs/<name>/config.yaml  model.keras  history.csv  metrics_test.json  per_image_test.csv
    runs/<name>/fold_<k>/... and metrics_cv.json        (with --folds k: grouped k-fold CV)

Selection is on a validation subset of the training part (by group), never on the reported test part:
the weights of the epoch with the best validation Dice are kept. This module is meant to merge into the
one training path ``covidct.train.train(cfg)`` once that handles ``task: segmentation`` (loss, metric
and the mask arrays are the only differences).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from covidct.errors import CovidctError, unknown_name_error
from covidct.segment.data import SegmentationPairs, load_pairs
from covidct.segment.metrics import per_image_metrics, summarize

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentConfig:
    """Settings of one segmentation run (saved as config.yaml)."""

    model: str = "bcd_unet"
    dataset: str = "kaggle-lungs"
    root: str = ""
    size: int = 64
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    folds: int = 0
    val_fraction: float = 0.15
    augment: bool = True
    rotation_deg: float = 0.0
    patience: int = 0
    lung_input: str = "none"
    bn_momentum: float | None = None
    seed: int = 0
    model_kwargs: dict = field(default_factory=dict)
    task: str = "segmentation"


LUNG_INPUTS = ("none", "masked", "auto")


def dice_bce_loss(y_true, logits, smooth: float = 1.0):
    """Mean binary cross-entropy (from logits) plus soft Dice loss (1 - soft Dice), per batch."""
    import keras
    from keras import ops

    y_true = ops.cast(y_true, logits.dtype)
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, logits, from_logits=True))
    probabilities = ops.sigmoid(logits)
    axes = tuple(range(1, len(logits.shape)))
    intersection = ops.sum(y_true * probabilities, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(probabilities, axis=axes)
    soft_dice = (2.0 * intersection + smooth) / (total + smooth)
    return bce + ops.mean(1.0 - soft_dice)


def dice_metric(y_true, logits):
    """Hard Dice of sigmoid(logits) >= 0.5 per image, averaged over the batch (Keras metric)."""
    from keras import ops

    y_true = ops.cast(y_true > 0.5, "float32")
    predicted = ops.cast(logits >= 0.0, "float32")
    axes = tuple(range(1, len(logits.shape)))
    intersection = ops.sum(y_true * predicted, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(predicted, axis=axes)
    return ops.mean(ops.where(total > 0, 2.0 * intersection / ops.maximum(total, 1e-7), 1.0))


def build_segmenter(model, size: int, model_kwargs: dict | None = None, bn_momentum: float | None = None):
    """Build a segmenter: a registry name (``build_model(name, (size, size, 1), num_classes=1)``) or a
    callable ``builder(input_shape) -> keras.Model`` (used by tests).

    ``bn_momentum`` (when given) replaces the momentum of every BatchNormalization layer. On a small set
    (a few hundred steps per run) Keras' default 0.99 leaves the moving statistics near their initial
    values for many epochs, so validation predictions (inference mode) stay empty while training Dice
    rises; 0.9 lets them follow within an epoch or two.
    """
    if callable(model):
        network = model((size, size, 1))
    else:
        from covidct.models import build_model

        network = build_model(model, input_shape=(size, size, 1), num_classes=1, **(model_kwargs or {}))
    if bn_momentum is not None:
        import keras

        def all_layers(container):
            for layer in getattr(container, "layers", []):
                yield layer
                yield from all_layers(layer)

        for layer in all_layers(network):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    return network


def augment_batch(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator, rotation_deg: float = 0.0):
    """Randomly mirror (left-right, p = 0.5) and rotate (uniform in +-``rotation_deg``) each image/mask pair.

    Left-right mirror images and small rotations are plausible slices. Images are rotated with linear
    interpolation and a 0 (air) fill, masks with nearest-neighbour interpolation, so masks stay binary.

    Args:
        images: float32 (N, H, W, C).
        masks: float32 (N, H, W, 1) in {0, 1}.
        rng: numpy random generator.
        rotation_deg: largest rotation in degrees (0: flips only).

    Returns:
        (images, masks), new arrays of the same shapes.
    """
    import cv2

    images, masks = images.copy(), masks.copy()
    height, width = images.shape[1:3]
    for index in range(len(images)):
        if rng.random() < 0.5:
            images[index], masks[index] = images[index, :, ::-1], masks[index, :, ::-1]
        if rotation_deg > 0:
            angle = float(rng.uniform(-rotation_deg, rotation_deg))
            matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
            image = cv2.warpAffine(images[index], matrix, (width, height), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            mask = cv2.warpAffine(masks[index, ..., 0], matrix, (width, height), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            images[index] = image.reshape(images[index].shape)
            masks[index, ..., 0] = mask
    return images, masks


def _batches(images: np.ndarray, masks: np.ndarray, batch_size: int, seed: int, rotation_deg: float):
    """A ``keras.utils.PyDataset`` of shuffled, freshly augmented batches (a new draw every epoch)."""
    import keras

    class AugmentedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(images))

        def __len__(self):
            return int(np.ceil(len(images) / batch_size))

        def __getitem__(self, index):
            rows = self.order[index * batch_size : (index + 1) * batch_size]
            return augment_batch(images[rows], masks[rows], self.rng, rotation_deg)

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(images))

    return AugmentedBatches()


def lung_masked(images: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Images with everything outside the (dilated) lung mask set to 0: the ``masked`` lung input."""
    return images * (lungs[..., None] > 0)


def _group_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train, val) so that no group is in both."""
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(fraction * len(unique)))) if len(unique) > 1 else 0
    val_groups = set(rng.choice(unique, size=n_val, replace=False).tolist()) if n_val else set()
    is_val = np.array([g in val_groups for g in groups])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def grouped_folds(groups: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Test-row indices of ``k`` folds with disjoint groups (sklearn GroupKFold on shuffled groups)."""
    from sklearn.model_selection import GroupKFold

    unique = np.unique(groups)
    if k < 2 or k > len(unique):
        raise CovidctError(f"--folds must lie in 2..{len(unique)} (number of groups), got {k}.")
    rng = np.random.default_rng(seed)
    shuffled = dict(zip(unique, rng.permutation(len(unique))))
    codes = np.array([shuffled[g] for g in groups])
    splitter = GroupKFold(n_splits=k)
    return [test for _, test in splitter.split(np.zeros(len(groups)), groups=codes)]


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def predict_probabilities(model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """sigmoid(model(images)) as float32 (N, H, W)."""
    logits = np.asarray(model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0))
    return (1.0 / (1.0 + np.exp(-logits[..., 0]))).astype(np.float32)


def _fit_variant(cfg: SegmentConfig, model_spec, fit: SegmentationPairs, val: SegmentationPairs, masked: bool,
                 history_path: Path):
    """Fit one model (lung-masked input or not); returns (model, history dict, best validation Dice)."""
    import keras

    keras.utils.set_random_seed(cfg.seed)

    def inputs(pairs: SegmentationPairs) -> np.ndarray:
        images = pairs.images.astype(np.float32)
        return lung_masked(images, pairs.lungs) if masked else images

    x_fit, y_fit = inputs(fit), fit.masks[..., None].astype(np.float32)
    model = build_segmenter(model_spec, cfg.size, cfg.model_kwargs, cfg.bn_momentum)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=dice_bce_loss,
        metrics=[dice_metric],
        # XLA compilation costs more than it saves for these small models on CPU.
        jit_compile=False,
    )
    # history.csv grows epoch by epoch, so a long run can be watched (and its progress is not lost).
    callbacks = [keras.callbacks.CSVLogger(str(history_path))]
    validation = None
    if len(val):
        validation = (inputs(val), val.masks[..., None].astype(np.float32))
        # The weights of the best validation epoch are kept (selection on validation, never on test);
        # with ``patience`` training also stops once validation Dice has not improved for that many epochs,
        # counted only after the first ``patience`` epochs (validation Dice often sits at 0 while a
        # segmenter learns to predict any foreground at all).
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_dice_metric", mode="max", patience=cfg.patience or cfg.epochs, restore_best_weights=True,
                start_from_epoch=min(cfg.patience, cfg.epochs // 2),
            )
        )
    if cfg.augment:
        data = {"x": _batches(x_fit, y_fit, cfg.batch_size, cfg.seed, cfg.rotation_deg)}
    else:
        data = {"x": x_fit, "y": y_fit, "batch_size": cfg.batch_size, "shuffle": True}
    history = model.fit(**data, validation_data=validation, epochs=cfg.epochs, callbacks=callbacks, verbose=0)
    best = float(max(history.history["val_dice_metric"])) if validation is not None else float("nan")
    return model, history.history, best


def fit_one(cfg: SegmentConfig, model_spec, train: SegmentationPairs, test: SegmentationPairs, run_dir: Path) -> dict:
    """Fit one model on ``train`` (validation carved out by group), evaluate on ``test``, write run files.

    With ``cfg.lung_input == "auto"`` two models are fitted on the same split, one on the plain images and
    one on lung-masked images, and the one with the better validation Dice is kept (the test part plays
    no role in the choice).

    Returns:
        The summary written to ``metrics_test.json``.
    """
    import pandas as pd

    if cfg.lung_input not in LUNG_INPUTS:
        raise unknown_name_error("lung input", cfg.lung_input, LUNG_INPUTS)
    if cfg.lung_input != "none" and (train.lungs is None or test.lungs is None):
        raise CovidctError(f"lung_input={cfg.lung_input!r} needs lung masks: load the pairs with with_lungs=True.")
    fit_index, val_index = _group_split(train.groups, cfg.val_fraction, cfg.seed)
    fit, val = train.subset(fit_index), train.subset(val_index)
    if cfg.lung_input == "auto" and not len(val):
        raise CovidctError("lung_input='auto' chooses on validation data, but the validation part is empty.")
    run_dir.mkdir(parents=True, exist_ok=True)
    variants = {"none": [False], "masked": [True], "auto": [False, True]}[cfg.lung_input]
    fitted = []
    for masked in variants:
        history_path = run_dir / ("history.csv" if len(variants) == 1 else f"history_{'masked' if masked else 'plain'}.csv")
        model, history, best = _fit_variant(cfg, model_spec, fit, val, masked, history_path)
        pd.DataFrame(history).rename_axis("epoch").to_csv(history_path)
        fitted.append((best, masked, model, history))
    # Ties (and NaN, no validation) keep the first variant, the plain images.
    best_index = max(range(len(fitted)), key=lambda i: (np.nan_to_num(fitted[i][0], nan=-1.0), -i))
    best_val, masked, model, history = fitted[best_index]
    if len(variants) > 1:
        pd.DataFrame(history).rename_axis("epoch").to_csv(run_dir / "history.csv")
    tmp_model = run_dir / ".model.tmp.keras"
    model.save(tmp_model)
    os.replace(tmp_model, run_dir / "model.keras")
    test_images = test.images.astype(np.float32)
    predicted = predict_probabilities(model, lung_masked(test_images, test.lungs) if masked else test_images) >= 0.5
    per_image = per_image_metrics(predicted, test.masks, names=test.names, groups=test.groups)
    per_image.to_csv(run_dir / "per_image_test.csv", index=False)
    summary = summarize(per_image, seed=cfg.seed)
    summary.update({"split": "test", "selection": "validation (best val Dice)", "n_train": int(len(fit)),
                    "n_val": int(len(val)), "epochs_run": int(len(history["loss"])),
                    "best_epoch": int(np.argmax(history["val_dice_metric"])) if len(val) else None,
                    "val_dice": best_val, "lung_input": "masked" if masked else "none",
                    "val_dice_by_input": {("masked" if m else "none"): b for b, m, _, _ in fitted}})
    _write_json(run_dir / "metrics_test.json", summary)
    return summary


def _save_config(cfg: SegmentConfig, run_dir: Path) -> None:
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))


def train_segmenter(
    model="bcd_unet",
    dataset: str = "kaggle-lungs",
    root=None,
    size: int = 64,
    epochs: int = 30,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    folds: int = 0,
    run_dir=None,
    overwrite: bool = False,
    seed: int = 0,
    augment: bool = True,
    model_kwargs: dict | None = None,
    pairs: SegmentationPairs | None = None,
    rotation_deg: float = 0.0,
    patience: int = 0,
    lung_input: str = "none",
    bn_momentum: float | None = None,
) -> Path:
    """Train and evaluate a segmenter; returns the run folder.

    Args:
        model: registry name (``"bcd_unet"``, ``"unet"``) or a callable ``builder(input_shape)``.
        dataset: ``"kaggle-lungs"`` (official train/test split) or ``"medseg"`` (needs ``folds``).
        root: data root (default ``COVIDCT_DATA_ROOT`` or ../shared/data).
        size: input side in pixels.
        epochs: training epochs (the best validation epoch is kept).
        batch_size: batch size.
        learning_rate: Adam learning rate.
        folds: 0 uses the dataset's test split; k >= 2 runs grouped k-fold cross-validation.
        run_dir: output folder (default ``runs/segment-<model>-<dataset>-<size>``).
        overwrite: replace an existing finished run (otherwise an error).
        seed: random seed (splits, weights).
        augment: random left-right mirroring (and rotation, see ``rotation_deg``) of each training batch,
            drawn anew every epoch.
        model_kwargs: extra builder arguments (e.g. ``{"base_filters": 8}``).
        pairs: pre-loaded ``SegmentationPairs`` (tests); default ``load_pairs(dataset, root, size)``.
        rotation_deg: largest random rotation in degrees when augmenting (0: mirroring only).
        patience: stop once validation Dice has not improved for this many epochs (0: run all epochs);
            the best validation epoch is kept either way.
        lung_input: ``"none"`` (plain images), ``"masked"`` (pixels outside the dilated classical lung mask
            set to 0) or ``"auto"`` (fit both, keep the better on validation, per fold).
        bn_momentum: momentum of the BatchNormalization layers (default: the builder's); see
            ``build_segmenter``.

    Returns:
        Path of the run folder.
    """
    name = model if isinstance(model, str) else getattr(model, "__name__", "custom")
    run_dir = Path(run_dir or Path("runs") / f"segment-{name}-{dataset}-{size}")
    finished = run_dir / ("metrics_cv.json" if folds else "metrics_test.json")
    if finished.exists():
        if not overwrite:
            raise CovidctError(f"Run folder {run_dir} already holds a finished run; pass --overwrite or another --run-dir.")
        shutil.rmtree(run_dir)
    cfg = SegmentConfig(model=name, dataset=dataset, root=str(root or ""), size=size, epochs=epochs,
                        batch_size=batch_size, learning_rate=learning_rate, folds=folds, augment=augment,
                        rotation_deg=rotation_deg, patience=patience, lung_input=lung_input, bn_momentum=bn_momentum, seed=seed,
                        model_kwargs=dict(model_kwargs or {}))
    if lung_input not in LUNG_INPUTS:
        raise unknown_name_error("lung input", lung_input, LUNG_INPUTS)
    if pairs is None:
        pairs = load_pairs(dataset, root, size, with_lungs=lung_input != "none")
    _save_config(cfg, run_dir)
    if not folds:
        is_test = pairs.splits == "test"
        if not is_test.any():
            raise CovidctError(f"Dataset {dataset!r} has no official test split; use --folds 5.")
        fit_one(cfg, model, pairs.subset(np.flatnonzero(~is_test)), pairs.subset(np.flatnonzero(is_test)), run_dir)
        return run_dir
    import pandas as pd

    fold_summaries, all_rows = [], []
    for k, test_index in enumerate(grouped_folds(pairs.groups, folds, seed)):
        train_index = np.setdiff1d(np.arange(len(pairs)), test_index)
        logger.info("fold %d/%d: %d train, %d test", k + 1, folds, len(train_index), len(test_index))
        fold_dir = run_dir / f"fold_{k}"
        fold_summaries.append(fit_one(cfg, model, pairs.subset(train_index), pairs.subset(test_index), fold_dir))
        rows = pd.read_csv(fold_dir / "per_image_test.csv", dtype={"group": str, "name": str})
        rows["fold"] = k
        all_rows.append(rows)
    per_image = pd.concat(all_rows, ignore_index=True)
    per_image.to_csv(run_dir / "per_image_cv.csv", index=False)
    summary = summarize(per_image, seed=seed)
    infected = per_image[per_image["true_fraction"] > 0]
    summary.update({
        "split": f"{folds}-fold grouped cross-validation (each image predicted once, by the fold that held it out)",
        "fold_dice": [s["dice"]["mean"] for s in fold_summaries],
        "fold_lung_input": [s["lung_input"] for s in fold_summaries],
        "fold_val_dice": [s["val_dice"] for s in fold_summaries],
        "fold_epochs_run": [s["epochs_run"] for s in fold_summaries],
        "dice_slices_with_infection": summarize(infected, seed=seed)["dice"] if len(infected) else None,
        "n_slices_with_infection": int(len(infected)),
        "group_proxy": pairs.group_proxy or "group column of the pairs",
    })
    _write_json(run_dir / "metrics_cv.json", summary)
    return run_dir
