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
"""

from __future__ import annotations

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
from covidct.models.efficientnet import MIN_SIZE
from covidct.models.registry import ModelSpec, register_model

NAME = "masked_efficientnet_b0"


def build_masked_efficientnet(
    input_shape,
    num_classes: int,
    weights=None,
    *,
    freeze_backbone: bool = False,
    dropout_rate: float = 0.4,
):
    """Build the image × mask EfficientNetB0 classifier of Covid-detection-with-CT-scans.

    Args:
        input_shape: shape of ``image``, ``(H, W, C)`` with C in {1, 3}; ``mask`` is ``(H, W, 1)``.
        num_classes: number of logits (the original study used 1 sigmoid output; here logits).
        weights: None, ``"imagenet"`` (EfficientNetB0 base only) or a local ``efficientnetb0_notop.h5``.
        freeze_backbone: keep the EfficientNet base fixed (the original study trained it).
        dropout_rate: the two head dropouts, in [0, 1).

    Returns:
        An uncompiled Functional ``keras.Model`` with inputs ``[image, mask]`` producing logits.
    """
    shape = check_input_shape(NAME, input_shape, rank=3, channels=(1, 3))
    check_fraction(NAME, "dropout_rate", dropout_rate)
    if min(shape[:2]) < MIN_SIZE:
        raise CovidctError(f"Model {NAME!r} needs inputs of at least {MIN_SIZE}x{MIN_SIZE}; got {shape}.")
    image = keras.Input(shape, name="image")
    mask = keras.Input((shape[0], shape[1], 1), name="mask")
    mask01 = layers.Rescaling(1.0 / 255, name="mask_scale")(mask)
    if shape[-1] == 3:
        mask01 = to_rgb(mask01, 1, name="mask_to_rgb")
    masked = layers.Multiply(name="apply_mask")([image, mask01])
    x = to_rgb(masked, shape[-1])
    base = build_application_base(
        NAME, keras.applications.EfficientNetB0, x, (shape[0], shape[1], 3), weights, "efficientnetb0_notop.h5"
    )
    features = base.output
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
    model = keras.Model([image, mask], outputs, name=NAME)
    if freeze_backbone:
        freeze_layers(base.layers)
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
