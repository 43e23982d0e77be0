"""2-D training augmentation as Keras preprocessing layers, applied to batches outside the network.

The saved model never contains augmentation, so prediction and Grad-CAM see the plain network. Pixels
shifted in from outside the image are filled with 0 (``fill_mode="constant"``), as in the study: CT
background is black, and reflected anatomy would be a fake lung. The layers work on any Keras backend
(no TensorFlow needed).
"""

from __future__ import annotations

import keras
import numpy as np


def make_augmenter(factors: dict | None, seed: int = 0) -> keras.Sequential | None:
    """Build the augmentation pipeline.

    Args:
        factors: ``{"rotation", "zoom", "translation", "flip"}`` as returned by
            ``covidct.config.augmentation_factors`` (None: no augmentation). Rotation is a fraction of
            a full turn (0.1 = ±36°), zoom and translation fractions of the image size.
        seed: seed of the random layers; the trainer rebuilds the pipeline with a new seed every epoch
            so an interrupted run resumes with the same random draws.

    Returns:
        A ``keras.Sequential`` to call with ``training=True`` on float32 (B, H, W, C) batches, or None.
    """
    if not factors:
        return None
    stages = []
    if factors.get("flip", True):
        stages.append(keras.layers.RandomFlip("horizontal", seed=seed, name="aug_flip"))
    if factors.get("rotation"):
        stages.append(
            keras.layers.RandomRotation(
                abs(factors["rotation"]), fill_mode="constant", fill_value=0.0, seed=seed + 1, name="aug_rotation"
            )
        )
    if factors.get("zoom"):
        stages.append(
            keras.layers.RandomZoom(factors["zoom"], fill_mode="constant", fill_value=0.0, seed=seed + 2, name="aug_zoom")
        )
    if factors.get("translation"):
        t = abs(factors["translation"])
        stages.append(
            keras.layers.RandomTranslation(t, t, fill_mode="constant", fill_value=0.0, seed=seed + 3, name="aug_translation")
        )
    if factors.get("appearance"):
        from covidct.train.appearance import make_appearance_layers

        # Appearance after geometry, so blur/noise/JPEG act on the final pixel grid (issue 8).
        stages.extend(make_appearance_layers(factors["appearance"], seed=seed + 4))
    if not stages:
        return None
    return keras.Sequential(stages, name="augmentation")


def augment_batch(augmenter: keras.Sequential | None, batch: np.ndarray) -> np.ndarray:
    """Apply ``augmenter`` (training mode) to a float32 (B, H, W, C) batch and return NumPy float32."""
    if augmenter is None:
        return batch
    out = augmenter(batch, training=True)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")
