"""Losses on logits, written with ``keras.ops`` so they run on TensorFlow, JAX and PyTorch.

The classification losses take integer labels (``y_true`` of shape (B,) or (B, 1)) and logits: (B, C)
for a softmax model or (B, 1) for a single sigmoid logit. The segmentation loss (``dice_bce``, for
``task: segmentation``) takes binary masks (B, H, W, 1) and per-pixel logits of the same shape; the
restoration loss (``restoration_mse``, for ``task: pretrain``) clean images in [0, 1] of that shape. All are
computed in float32 even under mixed precision.

The focal loss (Lin et al. 2017, arXiv:1708.02002) is ``-alpha_t (1 - p_t)^gamma log p_t`` averaged
over the batch (the original study summed it and had no alpha; mean reduction keeps the learning rate
independent of the batch size).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from covidct.errors import CovidctError, unknown_name_error
from covidct.evaluate.metrics import logits_to_probs


def _alpha_vector(alpha, num_classes: int):
    """Per-class alpha weights: float -> (1-a, a) for two classes / a for all; list -> as given."""
    if alpha is None:
        return None
    if isinstance(alpha, (list, tuple)):
        if len(alpha) != num_classes:
            raise CovidctError(f"focal_alpha has {len(alpha)} values for {num_classes} classes.")
        return np.asarray(alpha, dtype="float32")
    if num_classes == 2:
        return np.asarray([1.0 - float(alpha), float(alpha)], dtype="float32")
    return np.full(num_classes, float(alpha), dtype="float32")


def _log_probs(logits):
    """(B, C) log-probabilities; a single logit becomes two columns [log(1-p), log(p)]."""
    logits = ops.cast(logits, "float32")
    if logits.shape[-1] == 1:
        return ops.concatenate([ops.log_sigmoid(-logits), ops.log_sigmoid(logits)], axis=-1)
    return ops.log_softmax(logits, axis=-1)


@keras.saving.register_keras_serializable(package="covidct")
class CrossEntropyFromLogits(keras.losses.Loss):
    """Sparse categorical (or binary, for one logit) cross-entropy from logits, mean over the batch."""

    def __init__(self, name: str = "ce", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        log_p = _log_probs(y_pred)
        num_classes = log_p.shape[-1]
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), num_classes)
        return -ops.sum(onehot * log_p, axis=-1)


@keras.saving.register_keras_serializable(package="covidct")
class FocalLossFromLogits(keras.losses.Loss):
    """Focal loss from logits with focusing parameter ``gamma`` and optional class weights ``alpha``.

    Args:
        gamma: focusing parameter (0 gives cross-entropy).
        alpha: None, a float (positive-class weight for two classes; a common factor otherwise) or a
            list with one weight per class.
        num_classes: number of classes (2 for a single sigmoid logit).
    """

    def __init__(self, gamma: float = 2.0, alpha=None, num_classes: int = 2, name: str = "focal", **kwargs):
        super().__init__(name=name, **kwargs)
        if gamma < 0:
            raise CovidctError(f"focal_gamma must be >= 0, got {gamma}.")
        self.gamma = float(gamma)
        self.alpha = alpha
        self.num_classes = int(num_classes)
        self._alpha = _alpha_vector(alpha, self.num_classes)

    def call(self, y_true, y_pred):
        log_p = _log_probs(y_pred)
        num_classes = log_p.shape[-1]
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), num_classes)
        log_pt = ops.sum(onehot * log_p, axis=-1)
        pt = ops.exp(log_pt)
        loss = -ops.power(1.0 - pt, self.gamma) * log_pt
        if self._alpha is not None:
            loss = loss * ops.sum(onehot * ops.convert_to_tensor(self._alpha), axis=-1)
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "alpha": self.alpha,
            "num_classes": self.num_classes,
        }


def dice_bce_loss(y_true, logits, smooth: float = 1.0):
    """Per-image binary cross-entropy (from logits, mean over pixels) plus soft Dice loss (1 - soft Dice).

    Args:
        y_true: (B, H, W, 1) binary masks.
        logits: (B, H, W, 1) per-pixel logits.
        smooth: added to numerator and denominator of the soft Dice (an empty mask predicted empty scores 1).

    Returns:
        (B,) losses; Keras averages them over the batch.
    """
    logits = ops.cast(logits, "float32")
    y_true = ops.cast(y_true, "float32")
    axes = tuple(range(1, len(logits.shape)))
    # Stable BCE from logits: max(x, 0) - x * y + log(1 + exp(-|x|)).
    bce = ops.mean(ops.relu(logits) - logits * y_true + ops.log1p(ops.exp(-ops.abs(logits))), axis=axes)
    probabilities = ops.sigmoid(logits)
    intersection = ops.sum(y_true * probabilities, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(probabilities, axis=axes)
    soft_dice = (2.0 * intersection + smooth) / (total + smooth)
    return bce + (1.0 - soft_dice)


@keras.saving.register_keras_serializable(package="covidct")
class DiceBCEFromLogits(keras.losses.Loss):
    """Binary cross-entropy + soft Dice loss of a per-pixel mask from logits (``task: segmentation``)."""

    def __init__(self, smooth: float = 1.0, name: str = "dice_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return dice_bce_loss(y_true, y_pred, self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="covidct")
class RestorationMSE(keras.losses.Loss):
    """Mean squared error between ``sigmoid(logits)`` and a clean image in [0, 1] (``task: pretrain``)."""

    def __init__(self, name: str = "restoration_mse", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        predicted = ops.sigmoid(ops.cast(y_pred, "float32"))
        axes = tuple(range(1, len(y_pred.shape)))
        return ops.mean(ops.square(predicted - ops.cast(y_true, "float32")), axis=axes)


def make_loss(name: str, num_classes: int, gamma: float = 2.0, alpha=None) -> keras.losses.Loss:
    """The configured loss: ``"ce"``, ``"focal"``, ``"dice_bce"`` (segmentation) or ``"restoration_mse"``
    (restoration pretraining)."""
    if name == "ce":
        return CrossEntropyFromLogits()
    if name == "focal":
        return FocalLossFromLogits(gamma=gamma, alpha=alpha, num_classes=num_classes)
    if name == "dice_bce":
        return DiceBCEFromLogits()
    if name == "restoration_mse":
        return RestorationMSE()

    raise unknown_name_error("loss", name, ("ce", "focal", "dice_bce", "restoration_mse"))


def loss_numpy(name: str, y_true: np.ndarray, logits: np.ndarray, gamma: float = 2.0, alpha=None) -> float:
    """The same losses in NumPy (mean over samples), for validation scores without a second graph."""
    probs = logits_to_probs(logits)
    y = np.asarray(y_true).astype(int).ravel()
    pt = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    if name == "ce":
        return float(np.mean(-np.log(pt)))
    weights = 1.0 if alpha is None else _alpha_vector(alpha, probs.shape[1])[y]
    return float(np.mean(-weights * (1.0 - pt) ** gamma * np.log(pt)))
