"""Losses on logits, written with ``keras.ops`` so they run on TensorFlow, JAX and PyTorch.

Both losses take integer labels (``y_true`` of shape (B,) or (B, 1)) and logits: (B, C) for a softmax
model or (B, 1) for a single sigmoid logit. They are computed in float32 even under mixed precision.

The focal loss (Lin et al. 2017, arXiv:1708.02002) is ``-alpha_t (1 - p_t)^gamma log p_t`` averaged
over the batch (the seed summed it and had no alpha; mean reduction keeps the learning rate
independent of the batch size).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from covidct.errors import CovidctError


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
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha, "num_classes": self.num_classes}


def make_loss(name: str, num_classes: int, gamma: float = 2.0, alpha=None) -> keras.losses.Loss:
    """The configured loss: ``"ce"`` or ``"focal"``."""
    if name == "ce":
        return CrossEntropyFromLogits()
    if name == "focal":
        return FocalLossFromLogits(gamma=gamma, alpha=alpha, num_classes=num_classes)
    from covidct.errors import unknown_name_error

    raise unknown_name_error("loss", name, ("ce", "focal"))


def loss_numpy(name: str, y_true: np.ndarray, logits: np.ndarray, gamma: float = 2.0, alpha=None) -> float:
    """The same losses in NumPy (mean over samples), for validation scores without a second graph."""
    from covidct.evaluate.metrics import logits_to_probs

    probs = logits_to_probs(logits)
    y = np.asarray(y_true).astype(int).ravel()
    pt = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    if name == "ce":
        return float(np.mean(-np.log(pt)))
    weights = 1.0 if alpha is None else _alpha_vector(alpha, probs.shape[1])[y]
    return float(np.mean(-weights * (1.0 - pt) ** gamma * np.log(pt)))
