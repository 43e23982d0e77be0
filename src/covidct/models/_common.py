"""Pieces shared by the model families: input checks, grayscale-to-RGB, ImageNet preprocessing, heads.

Nothing here registers a model. The helpers keep every builder short and make the error messages
the same everywhere (a ``CovidctError`` naming the model and the value at fault).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import keras
from keras import layers, ops

from covidct.errors import CovidctError

# ----------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------


def check_input_shape(name: str, input_shape, rank: int = 3, channels: Sequence[int] | None = None) -> tuple:
    """Validate a channels-last input shape and return it as a tuple of ints.

    Args:
        name: model name, used in the error message.
        input_shape: e.g. ``(224, 224, 1)`` (rank 3) or ``(32, 64, 64, 1)`` (rank 4, volumes).
        rank: expected number of dimensions (without the batch axis).
        channels: allowed channel counts, or None for any positive count.

    Returns:
        The shape as a tuple of Python ints.

    Raises:
        CovidctError: wrong rank, a non-positive or non-integer size, or a channel count not allowed.
    """
    try:
        shape = tuple(int(s) for s in input_shape)
        exact = all(float(s) == int(s) for s in input_shape)
    except (TypeError, ValueError) as exc:
        raise CovidctError(f"Model {name!r}: input_shape must be a tuple of ints, got {input_shape!r}.") from exc
    if not exact or len(shape) != rank or any(s < 1 for s in shape):
        example = "(224, 224, 1)" if rank == 3 else "(32, 64, 64, 1)"
        raise CovidctError(
            f"Model {name!r}: input_shape must be {rank} positive ints, channels last (e.g. {example}); "
            f"got {input_shape!r}."
        )
    if channels is not None and shape[-1] not in channels:
        raise CovidctError(
            f"Model {name!r}: {shape[-1]} input channel(s) not supported; use one of {tuple(channels)} "
            f"(grayscale CT is 1 channel; it is repeated to RGB inside the model)."
        )
    return shape


def output_size(size: int, ops_list: Sequence[tuple]) -> int:
    """Spatial size after a chain of valid convolutions/pools along one axis (0 when it collapses).

    Args:
        size: input size in pixels (or slices).
        ops_list: ``(kernel, stride)`` pairs applied in order, all with valid padding.

    Returns:
        The output size; 0 when some step would get an input smaller than its kernel.
    """
    for kernel, stride in ops_list:
        if size < kernel:
            return 0
        size = (size - kernel) // stride + 1
    return size


def min_input_size(ops_list: Sequence[tuple], limit: int = 4096) -> int:
    """Smallest input size for which ``output_size(size, ops_list) >= 1``."""
    for size in range(1, limit + 1):
        if output_size(size, ops_list) >= 1:
            return size
    raise CovidctError(f"No input size up to {limit} survives the layer chain {list(ops_list)}.")


def check_min_size(name: str, spatial: Sequence[int], minimum: int | Sequence[int]) -> None:
    """Raise a ``CovidctError`` when a spatial size is below the model's minimum.

    Args:
        name: model name, used in the message.
        spatial: the spatial sizes of the input (H, W) or (D, H, W).
        minimum: the smallest allowed size, one for all axes or one per axis.
    """
    minima = [minimum] * len(spatial) if isinstance(minimum, int) else list(minimum)
    if any(s < m for s, m in zip(spatial, minima)):
        raise CovidctError(
            f"Model {name!r} needs inputs of at least {'x'.join(map(str, minima))} "
            f"(its valid convolutions and pools shrink the image); got {'x'.join(map(str, spatial))}. "
            f"Use a larger input_shape."
        )


def check_divisible(name: str, spatial: Sequence[int], factor: int) -> None:
    """Encoder-decoder nets need sizes divisible by ``2**depth``; say so clearly."""
    if any(s % factor for s in spatial):
        raise CovidctError(
            f"Model {name!r} needs height and width divisible by {factor} (one halving per encoder level); "
            f"got {'x'.join(map(str, spatial))}. Resize to e.g. {((spatial[0] // factor) or 1) * factor} px."
        )


def check_fraction(name: str, option: str, value: float) -> None:
    """A dropout rate or similar must lie in [0, 1)."""
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise CovidctError(f"Model {name!r}: {option} must be a number in [0, 1), got {value!r}.")


def check_positive_int(name: str, option: str, value) -> int:
    """Widths and counts must be positive integers."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CovidctError(f"Model {name!r}: {option} must be a positive integer, got {value!r}.")
    return value


# ----------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="covidct")
class ImageNetPreprocess(layers.Layer):
    """The ``preprocess_input`` of keras.applications as a layer, so it is saved with the model.

    Args:
        mode: ``"caffe"`` (RGB→BGR, subtract the ImageNet mean in 0..255; ResNet50, VGG19),
            ``"tf"`` (scale to [-1, 1]; InceptionResNetV2, BiT) or ``"torch"`` (0..1, ImageNet mean/std).
    """

    MODES = ("caffe", "tf", "torch")

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise CovidctError(f"ImageNetPreprocess: mode must be one of {self.MODES}, got {mode!r}.")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor([0.485, 0.456, 0.406], dtype=self.compute_dtype)
            std = ops.convert_to_tensor([0.229, 0.224, 0.225], dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        mean_bgr = ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=self.compute_dtype)
        return ops.flip(x, axis=-1) - mean_bgr

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def to_rgb(x, channels: int, name: str = "to_rgb"):
    """Repeat a 1-channel tensor to 3 channels (a named Concatenate layer); 3 channels pass through."""
    if channels == 3:
        return x
    return layers.Concatenate(axis=-1, name=name)([x, x, x])


def dense_head(x, num_classes: int, hidden: Sequence[int] = (), dropout_rate: float = 0.0, prefix: str = "head"):
    """Dense(hidden..., relu) → optional Dropout → Dense(num_classes) logits, every layer named."""
    for i, units in enumerate(hidden, start=1):
        x = layers.Dense(units, activation="relu", name=f"{prefix}_dense{i}")(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, name=f"{prefix}_dropout")(x)
    return layers.Dense(num_classes, name="logits")(x)


# ----------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------


def load_weights_file(model, weights, name: str):
    """Load ``weights`` (None or a path to ``.weights.h5`` / ``.keras`` / ``.h5``) into ``model``.

    Args:
        model: the freshly built model.
        weights: None (keep the random initialisation) or a path.
        name: model name for the messages.

    Returns:
        The model.

    Raises:
        CovidctError: the file does not exist or does not fit the model.
    """
    if weights is None:
        return model
    if not isinstance(weights, (str, Path)):
        raise CovidctError(f"Model {name!r}: weights must be None or a file path, got {weights!r}.")
    path = Path(weights).expanduser()
    if not path.is_file():
        hint = (
            " It names a run's checkpoint: train that run first (a task: pretrain run from its own config, e.g. "
            "configs/medseg/unet-pretrain-genesis.yaml), or point model.weights at that run folder's model.keras."
            if path.name == "model.keras"
            else ""
        )
        raise CovidctError(f"Model {name!r}: weights file {str(path)!r} does not exist.{hint}")
    try:
        model.load_weights(str(path))
    except Exception as exc:  # Keras raises ValueError/KeyError/OSError depending on the format.
        raise CovidctError(
            f"Model {name!r}: could not load weights from {str(path)!r} ({type(exc).__name__}: {exc}). "
            f"Was the file saved from a model built with the same name, input_shape and num_classes?"
        ) from exc
    return model


def build_application_base(
    name: str,
    app_fn: Callable,
    x,
    input_shape_rgb: tuple,
    weights,
    weights_file_example: str,
):
    """Call a keras.applications constructor *on our tensor* so its layers join our model flat.

    Passing ``input_tensor`` makes keras.applications build its layers on ``x`` instead of a nested
    sub-model, so every base layer (e.g. ``top_activation``) is a top-level layer of the final model:
    Grad-CAM reaches it with ``model.get_layer(name)`` and gradients flow without sub-model tricks.

    Args:
        name: registry name, for messages.
        app_fn: e.g. ``keras.applications.EfficientNetB0``.
        x: the preprocessed 3-channel tensor.
        input_shape_rgb: ``(H, W, 3)``.
        weights: None, ``"imagenet"`` or a path to a local ``*_notop.h5`` file.
        weights_file_example: file name shown in the offline error, e.g. ``"efficientnetb0_notop.h5"``.

    Returns:
        The keras.applications Functional model (its layers are shared with the caller's graph).

    Raises:
        CovidctError: a missing local file, or ImageNet weights that cannot be downloaded (offline).
    """
    if weights is not None and weights != "imagenet":
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise CovidctError(
                f"Model {name!r}: weights file {str(path)!r} does not exist. Pass weights='imagenet' "
                f"(downloads once to ~/.keras/models) or the path of a local {weights_file_example}."
            )
        weights = str(path)
    try:
        return app_fn(include_top=False, weights=weights, input_tensor=x, input_shape=input_shape_rgb)
    except Exception as exc:
        if weights != "imagenet":
            raise CovidctError(
                f"Model {name!r}: could not load weights {weights!r} ({type(exc).__name__}: {exc})."
            ) from exc
        raise CovidctError(
            f"Model {name!r}: the ImageNet weights could not be downloaded ({type(exc).__name__}: {exc}). "
            f"Offline? Download {weights_file_example} on a connected machine (keras.applications puts it "
            f"in ~/.keras/models/) and pass it as weights=\"/path/to/{weights_file_example}\"."
        ) from exc


def freeze_layers(layer_list) -> None:
    """Make layers non-trainable (BatchNorm then also runs in inference mode in Keras 3)."""
    for layer in layer_list:
        layer.trainable = False


def application_classifier(
    name: str,
    app_name: str,
    input_shape,
    num_classes: int,
    weights,
    *,
    preprocess_mode: str | None,
    weights_file: str,
    hidden: Sequence[int] = (),
    dropout_rate: float = 0.0,
    freeze_backbone: bool = False,
    min_size: int = 32,
):
    """A keras.applications base with our input handling and a Dense head, as one flat model.

    ``image`` (values in [0, 255], 1 or 3 channels) → ``to_rgb`` → ``imagenet_preprocess`` (the
    application's own ``preprocess_input`` as a saved layer) → base → ``global_avg_pool`` →
    Dense(hidden, relu)… → optional Dropout → ``logits``.

    Args:
        name: registry name.
        app_name: constructor in ``keras.applications``, e.g. ``"ResNet50"``.
        input_shape: ``(H, W, C)``, C in {1, 3}.
        num_classes: number of logits.
        weights: None, ``"imagenet"`` or a local notop weights file.
        preprocess_mode: ``"caffe"``, ``"tf"``, ``"torch"`` or None (the base scales by itself).
        weights_file: notop file name shown in the offline error.
        hidden: widths of hidden Dense layers in the head.
        dropout_rate: dropout before the logits, in [0, 1).
        freeze_backbone: make the base non-trainable.
        min_size: smallest height/width the base accepts.

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    shape = check_input_shape(name, input_shape, rank=3, channels=(1, 3))
    check_fraction(name, "dropout_rate", dropout_rate)
    check_min_size(name, shape[:2], min_size)
    inputs = keras.Input(shape, name="image")
    x = to_rgb(inputs, shape[-1])
    if preprocess_mode is not None:
        x = ImageNetPreprocess(preprocess_mode, name="imagenet_preprocess")(x)
    app_fn = getattr(keras.applications, app_name)
    base = build_application_base(name, app_fn, x, (shape[0], shape[1], 3), weights, weights_file)
    features = layers.GlobalAveragePooling2D(name="global_avg_pool")(base.output)
    outputs = dense_head(features, num_classes, hidden=hidden, dropout_rate=dropout_rate)
    model = keras.Model(inputs, outputs, name=name)
    if freeze_backbone:
        freeze_layers(base.layers)
    return model
