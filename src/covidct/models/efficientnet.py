"""EfficientNet B0/B3/B7 from keras.applications with a GAP → Dense logits head.

keras.applications' EfficientNet contains its own input scaling (Rescaling + ImageNet Normalization),
so the model takes values in [0, 255] as the toolkit does. Grayscale (1-channel) input is repeated to
3 channels by the layer ``to_rgb``. The base is built on our tensors (``input_tensor=``), so its
layers are top-level layers of the returned model: ``gradcam_layer="top_activation"`` is found by
``model.get_layer("top_activation")``.

``weights="imagenet"`` downloads the notop weights once (to ``~/.keras/models``); offline, pass the
local file instead: ``weights="/path/to/efficientnetb0_notop.h5"``.

Reference:
    Tan and Le. "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019,
    arXiv:1905.11946.
"""

from __future__ import annotations

import functools

import keras
from keras import layers

from covidct.errors import CovidctError
from covidct.models._common import (
    build_application_base,
    check_fraction,
    check_input_shape,
    freeze_layers,
    to_rgb,
)
from covidct.models.registry import ModelSpec, register_model

REFERENCE = "Tan & Le 2019, EfficientNet, arXiv:1905.11946 (keras.applications; CT-COV19 study)"

# name: (keras.applications constructor name, native resolution, notop weights file)
VARIANTS = {
    "efficientnet_b0": ("EfficientNetB0", 224, "efficientnetb0_notop.h5"),
    "efficientnet_b3": ("EfficientNetB3", 300, "efficientnetb3_notop.h5"),
    "efficientnet_b7": ("EfficientNetB7", 600, "efficientnetb7_notop.h5"),
}

MIN_SIZE = 32  # keras.applications' own lower bound for EfficientNet


def efficientnet_features(name: str, inputs, shape: tuple, weights, app_name: str, weights_file: str):
    """Grayscale→RGB and the keras.applications EfficientNet base on ``inputs``.

    Args:
        name: registry name, for messages.
        inputs: the (possibly masked) image tensor, values in [0, 255], 1 or 3 channels.
        shape: its shape ``(H, W, C)``.
        weights: None, ``"imagenet"`` or a local notop ``.h5`` path.
        app_name: e.g. ``"EfficientNetB0"``.
        weights_file: the notop file name, for the offline message.

    Returns:
        ``(features, base)``: the ``top_activation`` tensor and the keras.applications model.
    """
    if min(shape[:2]) < MIN_SIZE:
        raise CovidctError(f"Model {name!r} needs inputs of at least {MIN_SIZE}x{MIN_SIZE}; got {shape}.")
    x = to_rgb(inputs, shape[-1])
    app_fn = getattr(keras.applications, app_name)
    base = build_application_base(name, app_fn, x, (shape[0], shape[1], 3), weights, weights_file)
    return base.output, base


def build_efficientnet(
    input_shape,
    num_classes: int,
    weights=None,
    *,
    freeze_backbone: bool = False,
    dropout_rate: float = 0.0,
    _variant: str = "efficientnet_b0",
):
    """Build an EfficientNet classifier.

    Args:
        input_shape: ``(H, W, C)`` with C in {1, 3}, values in [0, 255]; H, W at least 32.
        num_classes: number of logits.
        weights: None (random), ``"imagenet"`` (download) or a local notop weights file.
        freeze_backbone: keep the EfficientNet base fixed (its BatchNorms then run in inference mode).
        dropout_rate: dropout between the pooled features and the logits, in [0, 1) (0: none, as the original study).

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    app_name, _, weights_file = VARIANTS[_variant]
    shape = check_input_shape(_variant, input_shape, rank=3, channels=(1, 3))
    check_fraction(_variant, "dropout_rate", dropout_rate)
    inputs = keras.Input(shape, name="image")
    features, base = efficientnet_features(_variant, inputs, shape, weights, app_name, weights_file)
    x = layers.GlobalAveragePooling2D(name="global_avg_pool")(features)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name=_variant)
    if freeze_backbone:
        freeze_layers(base.layers)
    return model


for _name, (_app, _size, _file) in VARIANTS.items():
    register_model(
        ModelSpec(
            name=_name,
            builder=functools.partial(build_efficientnet, _variant=_name),
            task="classification",
            family="efficientnet",
            input_shape=(_size, _size, 1),
            gradcam_layer="top_activation",
            reference=REFERENCE,
            imagenet_weights=True,
            description=f"keras.applications {_app} + GAP + Dense; gray→RGB inside",
            test_input_shape=(32, 32, 1),
        )
    )
