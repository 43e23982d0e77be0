"""The model of a run: the registered builder for the run's inputs, pretrained weights, freezing, optimizer.

``build_configured_model`` (classification and volume models) and ``build_segmentation_model`` (one logit per
pixel) call the model registry with the shapes of the data; ``model.weights`` naming a ``task: pretrain``
run's ``model.keras`` is copied in layer by layer. ``make_optimizer`` serves the phases of ``model.freeze``
(which layers train in each phase: ``covidct.models.transfer``); ``recalibration_source`` the BatchNorm
recalibration of ``training.bn_recalibration``.
"""

from __future__ import annotations

import keras
import numpy as np

from covidct.config import RunConfig
from covidct.errors import CovidctError
from covidct.models import build_model, get_spec
from covidct.models.inference import is_pretrained_checkpoint
from covidct.train.batchnorm import recalibration_rows
from covidct.train.data import SliceSequence
from covidct.train.restoration import load_pretrained


def model_input_shape(images: np.ndarray, input_names: tuple) -> tuple:
    """Input shape for the builder: (H, W, C), or (H, W, 1) per input of an image+mask model."""
    h, w, c = (int(s) for s in images.shape[1:4])
    return (h, w, 1) if len(input_names) > 1 else (h, w, c)


def build_configured_model(cfg: RunConfig, images: np.ndarray, num_classes: int):
    """Build the registered model named in ``cfg.model`` for these images."""
    spec = get_spec(cfg.model.name)
    if spec.task not in ("classification", "volume"):
        raise CovidctError(
            f"Model {cfg.model.name!r} is a {spec.task} model; it takes task: {spec.task} (build_segmentation_model), "
            "not the classifier builder (see covidct.models.list_models(task='classification'))."
        )
    if (spec.task == "volume") != (images.ndim == 5):
        raise CovidctError(
            f"Model {cfg.model.name!r} ({spec.task}) cannot take images of shape {tuple(images.shape[1:])}: volume "
            "models take (D, H, W, 1) volumes, slice models (H, W, C) images. Let prepare_data(cfg) build the data."
        )
    shape = (
        tuple(int(s) for s in images.shape[1:])
        if spec.task == "volume"
        else model_input_shape(images, tuple(spec.inputs))
    )
    return _with_pretrained(cfg, lambda weights: build_model(
        cfg.model.name,
        input_shape=shape,
        num_classes=num_classes,
        weights=weights,
        **dict(cfg.model.kwargs or {}),
    ))


def _with_pretrained(cfg: RunConfig, build):
    """``build(weights)``; a ``task: pretrain`` run's ``model.keras`` as ``model.weights`` is copied in layer
    by layer instead (``covidct.train.restoration.load_pretrained``: the head stays random)."""
    if not is_pretrained_checkpoint(cfg.model.weights):
        return build(cfg.model.weights)
    model = build(None)
    load_pretrained(model, cfg.model.weights)
    return model


def build_segmentation_model(cfg: RunConfig, size_hw: tuple):
    """Build the registered segmenter ``cfg.model.name`` for (H, W, 1) display images, 1 logit per pixel."""
    spec = get_spec(cfg.model.name)
    if spec.task != "segmentation":
        raise CovidctError(
            f"Model {cfg.model.name!r} is a {spec.task} model; task segmentation needs a segmentation model "
            "(covidct models --task segmentation)."
        )
    shape = (int(size_hw[0]), int(size_hw[1]), 1)
    return _with_pretrained(cfg, lambda weights: build_model(
        cfg.model.name,
        input_shape=shape,
        num_classes=1,
        weights=weights,
        **dict(cfg.model.kwargs or {}),
    ))


def recalibration_source(cfg: RunConfig, images, train_index, input_names: tuple):
    """``training.bn_recalibration`` training rows as a callable yielding clean input batches (None: off)."""
    t = cfg.training
    rows = recalibration_rows(train_index, t.bn_recalibration, t.seed)
    if len(rows) == 0:
        return None
    # Larger batches than training's where they are small: fewer eager calls (the passes run outside
    # model.fit, op by op), same statistics in expectation. Capped at about 2 M input values per batch.
    per_sample = int(np.prod(np.shape(images)[1:]))
    batch_size = max(t.batch_size, min(128, (1 << 21) // max(per_sample, 1)))
    sequence = SliceSequence(images, rows, batch_size=batch_size, input_names=input_names)
    return lambda: (sequence[i][0] for i in range(len(sequence)))


def make_optimizer(cfg: RunConfig, learning_rate: float, total_steps: int):
    """Adam or AdamW with an optional cosine decay over ``total_steps``."""
    t = cfg.training
    lr = learning_rate
    if t.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, int(total_steps)))
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=t.weight_decay)
    return keras.optimizers.Adam(learning_rate=lr)


def current_learning_rate(optimizer) -> float:
    """The optimizer's learning rate now (a schedule evaluated at its step); NaN when it cannot be read."""
    lr = optimizer.learning_rate
    try:
        return float(keras.ops.convert_to_numpy(lr))
    except Exception:
        return float("nan")
