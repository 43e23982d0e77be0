"""Inference of the registered models: logits and masks of image rows, and what a checkpoint is.

Below the training path (``covidct.train``), the evaluator, Grad-CAM, features and the learned lung masks of
``covidct.preprocess.lungs`` all predict through these functions, so the data flow keeps one direction:
preprocessing may use a trained model without importing the code that trains it.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from covidct.errors import CovidctError


def split_inputs(batch: np.ndarray, input_names: tuple):
    """One array for a single-input model; ``{name: channel}`` for a multi-input (image, mask) model."""
    if len(input_names) <= 1:
        return batch
    if batch.shape[-1] != len(input_names):
        raise CovidctError(
            f"The model takes inputs {input_names} but the cached images have {batch.shape[-1]} channel(s); "
            "use the 'masked-pair' stage for image+mask models."
        )
    return {name: batch[..., i : i + 1] for i, name in enumerate(input_names)}



def predict_logits(
    model,
    images,
    indices,
    batch_size: int = 64,
    input_names: tuple = ("image",),
    flip: bool = False,
    compiled: bool | None = None,
) -> np.ndarray:
    """Logits (N, C) of the rows ``indices`` of ``images`` (optionally horizontally flipped).

    ``compiled``: use the model's compiled predict function (None: on JAX only, see below).
    """
    indices = np.asarray(indices)
    if len(indices) == 0:
        return np.zeros((0, int(model.outputs[0].shape[-1])), dtype="float32")
    # JAX runs an eager model call op by op (slow on a GPU: most of a U-Net epoch's time went to
    # validation and recalibration passes); its compiled predict function is used instead, every batch
    # padded to the same size so that it compiles once. TensorFlow's eager kernels need no compilation.
    if compiled is None:
        compiled = keras.backend.backend() == "jax"
    outputs = []
    for start in range(0, len(indices), batch_size):
        rows = indices[start : start + batch_size]
        order = np.argsort(rows, kind="stable")
        size = batch_size if compiled and len(indices) > batch_size else len(rows)
        batch = np.zeros((size,) + tuple(images.shape[1:]), dtype="float32")
        batch[order] = images[rows[order]]
        if flip:  # left-right: the W axis of (N, H, W, C) slices and of (N, D, H, W, C) volumes
            batch = batch[..., ::-1, :].copy()
        if compiled:  # inference mode: the zero rows padding the last batch do not change the others
            out = model.predict_on_batch(split_inputs(batch, input_names))[: len(rows)]
        else:
            out = model(split_inputs(batch, input_names), training=False)
        outputs.append(np.asarray(keras.ops.convert_to_numpy(out), dtype="float32"))
    logits = np.concatenate(outputs, axis=0)
    return logits.reshape(len(indices), -1)


def predict_mask_logits(
    model, images: np.ndarray, indices=None, batch_size: int = 16, flip: bool = False
) -> np.ndarray:
    """Per-pixel logits (N, H, W) float32 of a one-channel segmenter for the rows ``indices`` of ``images``
    (``flip``: of the left-right mirrored images, as ``predict_logits`` feeds them)."""
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    flat = predict_logits(model, images, indices, batch_size, flip=flip)
    return flat.reshape((len(indices),) + tuple(images.shape[1:3]))


def predict_mask_probabilities(model, images: np.ndarray, batch_size: int = 16, tta: bool = False) -> np.ndarray:
    """sigmoid of ``predict_mask_logits`` (N, H, W) float32; with ``tta`` the mean of the images' maps and of
    their left-right mirrors' maps (mirrored back): the test-time augmentation of ``evaluation.tta``."""
    from scipy.special import expit

    images = np.asarray(images)
    probabilities = expit(predict_mask_logits(model, images, batch_size=batch_size))
    if tta:  # the mirrored input's map, mirrored back onto the image
        mirrored = predict_mask_logits(model, images, batch_size=batch_size, flip=True)[:, :, ::-1]
        probabilities = (probabilities + expit(mirrored)) / 2.0
    return probabilities.astype(np.float32)


def load_model_file(path, what: str = "Model file"):
    """Load a saved ``.keras`` model (uncompiled), or stop with a message naming the file and the fix.

    Keras reports a truncated or foreign file as "File not found"; this says what it is instead.

    Args:
        path: the ``.keras`` file.
        what: what the file is, for the message (``"Run checkpoint"``, ``"Segmenter"``).

    Raises:
        CovidctError: the file is missing, truncated, not a Keras model, or uses a layer nobody registered.
    """
    import covidct.models  # noqa: F401  (registers the custom layers of saved models)

    path = Path(path)
    if not path.is_file():
        raise CovidctError(f"{what} {path} does not exist.")
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as error:  # noqa: BLE001  (Keras raises ValueError, OSError, KeyError, TypeError, ...)
        cause = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise CovidctError(
            f"{what} {path} cannot be loaded ({cause}). It is truncated (an interrupted copy or a full disk), or not "
            "a model saved by covidct/Keras 3. Restore the file, or retrain the run (covidct train ... --overwrite)."
        ) from None


def is_pretrained_checkpoint(path) -> bool:
    """Whether ``path`` is the ``model.keras`` of a ``task: pretrain`` run (its ``run.json`` says so)."""
    if path is None or str(path) == "imagenet":
        return False
    info = Path(str(path)).expanduser().parent / "run.json"
    try:
        return json.loads(info.read_text()).get("task") == "pretrain"
    except (OSError, ValueError):
        return False


__all__ = [
    "is_pretrained_checkpoint",
    "load_model_file",
    "predict_logits",
    "predict_mask_logits",
    "predict_mask_probabilities",
    "split_inputs",
]
