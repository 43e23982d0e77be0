"""The classic U-Net (Ronneberger et al. 2015), depth 4, same padding, logits out.

Encoder: four levels of two 3x3 convs (relu) with f, 2f, 4f, 8f filters and a 2x2 max-pool after
each; bottleneck 16f; decoder: Conv2DTranspose(2x2, stride 2) → concatenate the skip → two 3x3 convs;
a 1x1 conv gives ``num_classes`` logit channels. ``base_filters`` (f, 64 in the paper) sets the
width; ``batch_norm=True`` adds BatchNorm after every conv (not in the paper, steadier on small data).
Input values in [0, 255] (Rescaling(1/255) first); height and width divisible by 16.

Reference:
    Ronneberger, Fischer, Brox. "U-Net: Convolutional Networks for Biomedical Image Segmentation",
    MICCAI 2015, arXiv:1505.04597. Used for infection segmentation in Covid Classification and Opacification using Transfer Learning.
"""

from __future__ import annotations

import keras
from keras import layers

from covidct.models._common import check_divisible, check_input_shape, check_positive_int, load_weights_file
from covidct.models.registry import ModelSpec, register_model

NAME = "unet"
DEPTH = 4


def _conv_pair(x, filters: int, prefix: str, batch_norm: bool):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"{prefix}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{prefix}_bn{i}")(x)
        x = layers.ReLU(name=f"{prefix}_relu{i}")(x)
    return x


def build_unet(input_shape, num_classes: int = 1, weights=None, *, base_filters: int = 64, batch_norm: bool = False):
    """Build a depth-4 U-Net.

    Args:
        input_shape: ``(H, W, C)``, values in [0, 255], H and W divisible by 16.
        num_classes: output channels (1: one logit per pixel for a binary mask).
        weights: None or a path to a weights file saved from this model.
        base_filters: filters of the first level (64 in the paper).
        batch_norm: BatchNorm after each conv.

    Returns:
        An uncompiled Functional ``keras.Model`` mapping ``(H, W, C)`` to ``(H, W, num_classes)`` logits.
    """
    shape = check_input_shape(NAME, input_shape, rank=3)
    f = check_positive_int(NAME, "base_filters", base_filters)
    check_divisible(NAME, shape[:2], 2**DEPTH)
    inputs = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    skips = []
    for level in range(1, DEPTH + 1):
        x = _conv_pair(x, f * 2 ** (level - 1), f"enc{level}", batch_norm)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv_pair(x, f * 2**DEPTH, "bottleneck", batch_norm)
    for level in range(DEPTH, 0, -1):
        filters = f * 2 ** (level - 1)
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_upconv")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skips[level - 1], x])
        x = _conv_pair(x, filters, f"dec{level}", batch_norm)
    outputs = layers.Conv2D(num_classes, 1, name="logits")(x)
    model = keras.Model(inputs, outputs, name=NAME)
    return load_weights_file(model, weights, NAME)


register_model(
    ModelSpec(
        name=NAME,
        builder=build_unet,
        task="segmentation",
        family="unet",
        input_shape=(256, 256, 1),
        reference="Ronneberger et al. 2015, U-Net, arXiv:1505.04597 (infection masks in Covid Classification and Opacification using Transfer Learning)",
        description="classic U-Net, depth 4; base_filters and batch_norm options",
        test_input_shape=(32, 32, 1),
    )
)
