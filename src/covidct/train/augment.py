"""2-D training augmentation as Keras preprocessing layers, applied to batches outside the network.

The saved model never contains augmentation, so prediction and Grad-CAM see the plain network. Pixels
shifted in from outside the image are filled with 0 (``fill_mode="constant"``), as in the study: CT
background is black, and reflected anatomy would be a fake lung. The layers work on any Keras backend
(no TensorFlow needed).

``BatchAugmenter`` is what the training sequence uses: the layers built once per run, re-seeded every epoch
(the draws of ``make_augmenter(factors, seed)``), and on TensorFlow called as one ``tf.function`` instead of
op by op: 0.4-0.65x of the eager time per batch on a CPU, the same pixels for the stage augmentation and
within 1e-4 grey levels for the ``robust`` chain (``benchmarks/bench_augment.py``, BENCHMARKS.md). On JAX
(``jax.jit`` measured no faster on a CPU, also inside training: ``benchmarks/bench_pipeline.py``; on a GPU not
measured yet) and PyTorch the layers run eagerly.
"""

from __future__ import annotations

import os

import keras
import numpy as np
from matplotlib.figure import Figure

from covidct.config import TrainingConfig
from covidct.preprocess import get_stage
from covidct.train.appearance import make_appearance_layers
from covidct.train.recipes import STAGE_AUGMENTATION, augmentation_factors


def make_augmenter(factors: dict | None, seed: int = 0) -> keras.Sequential | None:
    """Build the augmentation pipeline.

    Args:
        factors: ``{"rotation", "zoom", "translation", "flip"}`` as returned by
            ``covidct.train.recipes.augmentation_factors`` (None: no augmentation). Rotation is a fraction of
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
        # Appearance after geometry, so blur/noise/JPEG act on the final pixel grid.
        stages.extend(make_appearance_layers(factors["appearance"], seed=seed + 4))
    if not stages:
        return None
    return keras.Sequential(stages, name="augmentation")


#: Environment variable overriding ``compile_augmentation()``: ``on``, ``off`` or ``auto`` (the default).
COMPILE_AUGMENTATION_ENV = "COVIDCT_COMPILE_AUGMENTATION"


def compile_augmentation() -> bool:
    """Whether ``BatchAugmenter`` compiles by default: on TensorFlow only (see the module doc), unless
    ``$COVIDCT_COMPILE_AUGMENTATION`` says ``on`` (TensorFlow or JAX) or ``off`` (for A/B timings on a GPU)."""
    setting = os.environ.get(COMPILE_AUGMENTATION_ENV, "auto").strip().lower()
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"${COMPILE_AUGMENTATION_ENV}={setting!r}: use on, off or auto.")
    if setting == "auto":
        return keras.backend.backend() == "tensorflow"
    return setting == "on" and keras.backend.backend() in ("tensorflow", "jax")


class BatchAugmenter:
    """The training augmentation of one run: ``make_augmenter``'s layers, built once, re-seeded per epoch.

    Args:
        factors: as ``make_augmenter`` (None or nothing to draw: batches pass through unchanged).
        seed: the first draws' seed (``reseed`` sets another).
        compiled: call the layers as one compiled function (``tf.function`` on TensorFlow, ``jax.jit`` of
            ``stateless_call`` on JAX); None: ``compile_augmentation()``.

    ``augmenter(batch)`` takes a float32 (B, H, W, C) NumPy batch and returns NumPy float32; after
    ``reseed(s)`` the next batches get the same draws as ``make_augmenter(factors, s)`` would give.
    """

    def __init__(self, factors: dict, seed: int = 0, compiled: bool | None = None):
        self.factors = factors
        self.layers = make_augmenter(factors, seed)
        self.compiled = compile_augmentation() if compiled is None else bool(compiled)
        if self.compiled and keras.backend.backend() not in ("tensorflow", "jax"):
            raise ValueError(f"BatchAugmenter: compiled=True needs TensorFlow or JAX, not {keras.backend.backend()}.")
        self._function = None
        self._state = None  # JAX: the seed states between compiled calls

    def reseed(self, seed: int) -> None:
        """Continue with the draws of ``make_augmenter(self.factors, seed)`` (the seed generators' states)."""
        if self.layers is None:
            return
        fresh = make_augmenter(self.factors, seed)
        for target, source in zip(_seed_states(self.layers), _seed_states(fresh), strict=True):
            target.assign(source.value)
        self._state = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.layers is None or not self.compiled:
            return augment_batch(self.layers, batch)
        if keras.backend.backend() == "jax":
            return self._call_jax(batch)
        if self._function is None:
            import tensorflow as tf

            spec = tf.TensorSpec((None, *batch.shape[1:]), tf.float32)  # one trace for every batch size
            self._function = tf.function(lambda x: self.layers(x, training=True), input_signature=[spec])
        return np.asarray(self._function(batch).numpy(), dtype="float32")

    def _call_jax(self, batch: np.ndarray) -> np.ndarray:
        import jax

        if self._function is None:
            self.layers.build((None, *batch.shape[1:]))
            layers = self.layers
            self._function = jax.jit(lambda state, x: layers.stateless_call([], state, x, training=True))
        if self._state is None:
            self._state = [v.value for v in self.layers.non_trainable_variables]
        out, self._state = self._function(self._state, batch)
        for variable, value in zip(self.layers.non_trainable_variables, self._state, strict=True):
            variable.assign(value)  # the layers stay the source of truth (reseed, eager calls)
        return np.asarray(out, dtype="float32")


def _seed_states(layers: keras.Sequential) -> list:
    """The state variables of the layers' seed generators, in layer order (the layers' only variables)."""
    states = [v for layer in layers.layers for v in layer.non_trainable_variables]
    if any(v.trainable for v in layers.variables) or len(states) != len(layers.variables):
        raise ValueError("augmentation layers with variables other than seed states cannot be re-seeded")
    return states


def augment_batch(augmenter: keras.Sequential | None, batch: np.ndarray) -> np.ndarray:
    """Apply ``augmenter`` (training mode) to a float32 (B, H, W, C) batch and return NumPy float32."""
    if augmenter is None:
        return batch
    out = augmenter(batch, training=True)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")


def plot_stage_augmentations(image, size: int = 224, samples: int = 5, stages=None, training=None):
    """Each preprocessing stage's output of one image (first column) beside ``samples`` augmented draws.

    Args:
        image: a ``covidct.data.io.CTImage`` (HU or display values).
        size: side of the stage output in pixels.
        samples: augmented draws per stage.
        stages: stage names, one row each; default the study's stages (``covidct.train.recipes.STAGE_AUGMENTATION``).
        training: the ``TrainingConfig`` whose augmentation factors apply (default ``augmentation="stage"``).

    Returns:
        A matplotlib Figure (rows: stages; columns: stage output, then the draws).
    """

    stages = list(stages or STAGE_AUGMENTATION)
    training = training or TrainingConfig(augmentation="stage")
    figure = Figure(figsize=(2 * (samples + 1), 2 * len(stages)))
    axes = figure.subplots(len(stages), samples + 1, squeeze=False)
    for row, stage in enumerate(stages):
        sample = get_stage(stage)(image, size)[0].image.astype("float32")
        augmenter = make_augmenter(augmentation_factors(training, stage), seed=row)
        batch = np.repeat(sample[None], samples, axis=0)
        augmented = np.asarray(augmenter(batch, training=True)) if augmenter is not None else batch
        axes[row, 0].imshow(sample[..., 0], cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_ylabel(stage)
        for k in range(samples):
            axes[row, k + 1].imshow(augmented[k, ..., 0], cmap="gray", vmin=0, vmax=255)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0, 0].set_title("stage output")
    figure.tight_layout()
    return figure
