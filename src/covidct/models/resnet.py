"""ResNets of covid_from_ctscan: ResNet-50 (keras.applications, ImageNet, frozen) and ResNet-18 from scratch.

``resnet50``: ``image`` → ``to_rgb`` → ``imagenet_preprocess`` (caffe mode: RGB→BGR, minus the ImageNet
mean, exactly ``keras.applications.resnet50.preprocess_input``) → ResNet50 base → global average pool →
Dense(128, relu) → Dense(num_classes). covid_from_ctscan froze the ImageNet base: ``freeze_backbone=True``.

``resnet18``: the basic-block ResNet (He et al. 2016) with stages [2, 2, 2, 2] of 64-128-256-512
filters, Rescaling(1/255) first, and covid_from_ctscan's head: global average pool (512) → Dense(128, relu) →
Dropout 0.3 → Dense(num_classes).

Reference:
    He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv:1512.03385.
"""

from __future__ import annotations

import keras
from keras import layers

from covidct.models._common import (
    application_classifier,
    check_fraction,
    check_input_shape,
    check_min_size,
    dense_head,
    load_weights_file,
)
from covidct.models.registry import ModelSpec, register_model

REFERENCE = "He et al. 2016, arXiv:1512.03385; covid_from_ctscan (ResNet-50 frozen / ResNet-18 from scratch)"


def build_resnet50(input_shape, num_classes: int, weights=None, *, freeze_backbone: bool = False):
    """Build keras.applications ResNet50 with covid_from_ctscan's head (2048 → 128 → num_classes).

    Args:
        input_shape: ``(H, W, C)`` with C in {1, 3}, values in [0, 255]; H, W at least 32.
        num_classes: number of logits.
        weights: None, ``"imagenet"`` or a local ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``.
        freeze_backbone: keep the base fixed (covid_from_ctscan did, with ImageNet weights).

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    return application_classifier(
        "resnet50",
        "ResNet50",
        input_shape,
        num_classes,
        weights,
        preprocess_mode="caffe",
        weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        hidden=(128,),
        freeze_backbone=freeze_backbone,
    )


def _basic_block(x, filters: int, stride: int, prefix: str):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv1")(x)
    y = layers.BatchNormalization(name=f"{prefix}_bn1")(y)
    y = layers.ReLU(name=f"{prefix}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv2")(y)
    y = layers.BatchNormalization(name=f"{prefix}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{prefix}_proj_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{prefix}_proj_bn")(shortcut)
    y = layers.Add(name=f"{prefix}_add")([y, shortcut])
    return layers.ReLU(name=f"{prefix}_out")(y)


def build_resnet18(input_shape, num_classes: int, weights=None, *, dropout_rate: float = 0.3):
    """Build ResNet-18 (basic blocks [2, 2, 2, 2]) from scratch with covid_from_ctscan's head.

    Args:
        input_shape: ``(H, W, C)``, values in [0, 255]; H, W at least 32.
        num_classes: number of logits.
        weights: None or a path to a weights file saved from this model.
        dropout_rate: dropout between Dense(128) and the logits (covid_from_ctscan: 0.3).

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    shape = check_input_shape("resnet18", input_shape, rank=3)
    check_fraction("resnet18", "dropout_rate", dropout_rate)
    check_min_size("resnet18", shape[:2], 32)
    inputs = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in (1, 2):
            stride = 2 if (block == 1 and stage > 1) else 1
            x = _basic_block(x, filters, stride, f"stage{stage}_block{block}")
    x = layers.GlobalAveragePooling2D(name="global_avg_pool")(x)
    outputs = dense_head(x, num_classes, hidden=(128,), dropout_rate=dropout_rate)
    model = keras.Model(inputs, outputs, name="resnet18")
    return load_weights_file(model, weights, "resnet18")


register_model(
    ModelSpec(
        name="resnet50",
        builder=build_resnet50,
        task="classification",
        family="resnet",
        input_shape=(224, 224, 1),
        gradcam_layer="conv5_block3_out",
        reference=REFERENCE,
        imagenet_weights=True,
        description="keras.applications ResNet50 + Dense(128) head (covid_from_ctscan)",
        test_input_shape=(32, 32, 1),
    )
)

register_model(
    ModelSpec(
        name="resnet18",
        builder=build_resnet18,
        task="classification",
        family="resnet",
        input_shape=(224, 224, 1),
        gradcam_layer="stage4_block2_out",
        reference=REFERENCE,
        description="ResNet-18 from scratch, head 512-128-dropout-logits (covid_from_ctscan)",
        test_input_shape=(32, 32, 1),
    )
)
