"""``covidct segment train``: build a ``task: segmentation`` config, train it with ``train(cfg)``, evaluate.

Segmenters (lungs, infection) are fitted by the one training path, ``covidct.train.train(cfg)``
(``task: segmentation``: Dice + BCE loss, checkpoint on validation Dice, early stopping, resume; see
``covidct.train.segmentation``). This module only turns the command's flags into that config
(``segmentation_config``) and, once training has finished, scores the test rows per image
(``covidct.train.workflow.evaluate_after_training``: ``covidct.segment.evaluate.evaluate_segmentation``). The run folder::

    runs/<name>/config.yaml  model.keras  history.csv  run.json  split.csv  metrics_test.json  per_image_test.csv
    runs/<name>/fold_<k>/... and metrics_cv.json  per_image_cv.csv      (with --folds k: grouped k-fold CV)

Selection is on a validation part of the training data (by group), never on the reported test part.
"""

from __future__ import annotations

import logging
from pathlib import Path

from covidct.config import config_from_dict, validate_config
from covidct.errors import CovidctError
from covidct.train.trainer import train
from covidct.train.workflow import evaluate_after_training

logger = logging.getLogger(__name__)


def segmentation_config(
    model: str = "bcd_unet",
    dataset: str = "kaggle-lungs",
    root=None,
    size: int = 64,
    epochs: int = 30,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    folds: int = 0,
    seed: int = 0,
    augment: bool = True,
    model_kwargs: dict | None = None,
    rotation_deg: float = 0.0,
    patience: int = 0,
    lung_input: str = "none",
    crop: str = "none",
    bn_momentum: float | None = None,
    bn_recalibration: int = 1024,
    val_fraction: float = 0.15,
    monitor: str = "val_dice",
    schedule: str = "none",
    weights: str | None = None,
    drop_last: str = "auto",
    name: str = "",
    output_root: str = "runs",
):
    """The validated ``RunConfig`` (``task: segmentation``) behind ``covidct segment train``.

    Args:
        model: registered segmenter (``"bcd_unet"``, ``"unet"``; ``covidct models --task segmentation``).
        dataset: ``"kaggle-lungs"`` (official train/test split), ``"medseg"`` (needs ``folds``) or ``"phantom"``.
        root: data root (default ``COVIDCT_DATA_ROOT``, else ./data).
        size: input side in pixels.
        epochs: training epochs (the best validation epoch is kept).
        batch_size: batch size.
        learning_rate: Adam learning rate.
        folds: 0 uses the dataset's test split; k >= 2 runs grouped k-fold cross-validation.
        seed: seed of the splits, the weights and the augmentation.
        augment: random left-right mirroring (and rotation, see ``rotation_deg``) of image and mask together.
        model_kwargs: extra builder arguments (e.g. ``{"base_filters": 8}``).
        rotation_deg: largest random rotation in degrees when augmenting (0: mirroring only).
        patience: stop once validation Dice has not improved for this many epochs, counted from epoch
            ``min(patience, epochs // 2)`` on (0: run all epochs); the best validation epoch is kept either way.
        lung_input: ``"none"``, ``"masked"`` or ``"auto"`` (see ``covidct.config.SegmentationConfig``).
        crop: ``"none"`` or ``"lungs"`` (crop to the lungs before resampling; ``SegmentationConfig.crop``).
        bn_momentum: momentum of every BatchNormalization layer (default: the builder's).
        bn_recalibration: clean training images that reset BatchNorm statistics before each validation
            (``training.bn_recalibration``; 0: off).
        val_fraction: fraction of the training groups that selects (validation part); 0 with
            ``monitor="last"``: every training group is fitted.
        monitor: ``"val_dice"`` (checkpoint on validation Dice), ``"val_loss"`` or ``"last"`` (a fixed epoch
            budget: the final epoch is kept, nothing is selected, early stopping is off).
        schedule: learning-rate schedule, ``"none"`` or ``"cosine"`` (decay over all training steps).
        weights: initial weights (``model.weights``): None (random) or a weights file of the same model and
            ``model_kwargs``, e.g. a ``task: pretrain`` run's ``model.keras`` (``covidct.train.restoration``).
        drop_last: ``training.drop_last``: ``"auto"`` (leave out each epoch's incomplete last batch where the
            step is XLA-compiled: JAX or a GPU), ``"on"`` or ``"off"``.
        name: run name (default ``segment-<model>-<dataset>-<size>``).
        output_root: parent folder of run folders.

    Returns:
        A frozen, validated ``covidct.config.RunConfig``.
    """
    if not isinstance(model, str):
        raise CovidctError(
            f"model must be the name of a registered segmentation model (covidct models --task segmentation), got "
            f"{type(model).__name__}; register a custom builder with covidct.models.register_model first."
        )
    tree = {
        "name": name,
        "output_root": output_root,
        "task": "segmentation",
        "data": {"dataset": dataset, "root": None if root is None else str(root), "size": size, "seed": seed},
        "model": {"name": model, "kwargs": dict(model_kwargs or {}), "weights": None if weights is None else str(weights)},
        "training": {
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "loss": "dice_bce",
            "monitor": monitor,
            "schedule": schedule,
            "augmentation": {"flip": True, "rotation": float(rotation_deg) / 360.0} if augment else "none",
            "early_stopping_patience": patience,
            "min_epochs": min(patience, epochs // 2),
            "seed": seed,
            "shortcut_probe": False,
            "bn_momentum": bn_momentum,
            "bn_recalibration": bn_recalibration,
            "drop_last": drop_last,
        },
        "segmentation": {"lung_input": lung_input, "folds": folds, "val_fraction": val_fraction, "crop": crop},
    }
    return validate_config(
        config_from_dict(tree, source="covidct segment train"), source="covidct segment train"
    )


def train_segmenter(
    model="bcd_unet",
    run_dir=None,
    overwrite: bool = False,
    pairs=None,
    resume: bool = False,
    progress: bool = False,
    fold: int | None = None,
    jobs: int = 1,
    **settings,
) -> Path:
    """Train a segmenter through ``train(cfg)`` and evaluate it per image on its test rows; returns the run folder.

    Args:
        model: registered segmenter, as in ``segmentation_config``.
        run_dir: output folder (default ``runs/segment-<model>-<dataset>-<size>``).
        overwrite: replace an existing run (otherwise a finished run is an error).
        pairs: pre-loaded ``SegmentationPairs`` (tests, notebooks); default: loaded from ``dataset``/``root``.
        resume: continue an interrupted run (finished folds and epochs are kept).
        progress: show Keras' progress bar.
        fold: with ``folds``: fit this fold alone and leave the run unfinished (``train(cfg, fold=...)``: the
            folds of one CV in parallel processes on one ``run_dir``); nothing is evaluated until a last call
            without ``fold`` (``resume=True``) finishes the run.
        jobs: with ``folds``: fit up to ``jobs`` folds at once, one fresh process each (``train(cfg, jobs=...)``).
        **settings: the other keyword arguments of ``segmentation_config`` (dataset, root, size, epochs, ...).

    Returns:
        Path of the run folder (with ``metrics_test.json``, or ``metrics_cv.json`` for folds; neither after a
        call with ``fold``).
    """
    cfg = segmentation_config(model=model, **settings)
    run = train(cfg, run_dir=run_dir, resume=resume, overwrite=overwrite, data=pairs, progress=progress, fold=fold,
                jobs=jobs)
    if fold is None:
        evaluate_after_training(run, data=pairs)
    return run


__all__ = ["segmentation_config", "train_segmenter"]
