"""BCD-U-Net (D3): a U-Net with densely connected bottleneck convs and ConvLSTM skip fusion.

Follows the authors' ``BCDU_net_D3`` (Azad et al. 2019), with ``base_filters`` (64 in the paper)
scaling every width, so tests and CPU training can use 16:

* encoder: two 3x3 convs (relu, same) per level with f, 2f, 4f filters, 2x2 max-pool after each;
  the 4f level's output passes Dropout 0.5 before it is used as a skip;
* bottleneck: three 8f conv blocks (two 3x3 convs each), densely connected: block 3 reads the
  concatenation of blocks 1 and 2; Dropout 0.5 after each block;
* decoder, per level: Conv2DTranspose(2x2, stride 2) → BatchNorm → ReLU; the skip map and the
  upsampled map are stacked as a sequence of length 2 (``Reshape`` to (1, h, w, c) and concatenate on
  the time axis) and fused by a ConvLSTM2D (3x3, backwards over the sequence, as the authors); then
  two 3x3 convs;
* output: Conv2D(2, 3x3, relu) then a 1x1 Conv2D with ``num_classes`` channels, linear: logits
  (apply a sigmoid for the mask probability; the authors put the sigmoid in the model).

Input values in [0, 255] (Rescaling(1/255) first); height and width divisible by 8.

Reference:
    Azad, Asadi-Aghbolaghi, Fathy, Escalera. "Bi-Directional ConvLSTM U-Net with Densley Connected
    Convolutions", ICCV Workshops 2019, arXiv:1909.00166; github.com/rezazad68/BCDU-Net.
"""

from __future__ import annotations

import keras
from keras import layers

from covidct.models._common import (
    check_divisible,
    check_fraction,
    check_input_shape,
    check_positive_int,
    load_weights_file,
)
from covidct.models.registry import ModelSpec, register_model

NAME = "bcd_unet"


def _conv_pair(x, filters: int, prefix: str):
    for i in (1, 2):
        x = layers.Conv2D(
            filters, 3, padding="same", activation="relu", kernel_initializer="he_normal", name=f"{prefix}_conv{i}"
        )(x)
    return x


def _fuse(skip, up, filters: int, prefix: str):
    """Stack skip and upsampled maps on a time axis of length 2 and fuse them with a ConvLSTM2D."""
    h, w, c = skip.shape[1], skip.shape[2], skip.shape[3]
    s = layers.Reshape((1, h, w, c), name=f"{prefix}_skip_seq")(skip)
    u = layers.Reshape((1, h, w, up.shape[3]), name=f"{prefix}_up_seq")(up)
    seq = layers.Concatenate(axis=1, name=f"{prefix}_seq")([s, u])
    return layers.ConvLSTM2D(
        filters,
        3,
        padding="same",
        return_sequences=False,
        go_backwards=True,
        kernel_initializer="he_normal",
        name=f"{prefix}_convlstm",
    )(seq)


def _up(x, filters: int, prefix: str):
    x = layers.Conv2DTranspose(
        filters, 2, strides=2, padding="same", kernel_initializer="he_normal", name=f"{prefix}_upconv"
    )(x)
    x = layers.BatchNormalization(name=f"{prefix}_up_bn")(x)
    return layers.ReLU(name=f"{prefix}_up_relu")(x)


def build_bcd_unet(
    input_shape, num_classes: int = 1, weights=None, *, base_filters: int = 64, dropout_rate: float = 0.5
):
    """Build BCD-U-Net D3.

    Args:
        input_shape: ``(H, W, C)``, values in [0, 255], H and W divisible by 8.
        num_classes: output channels (1: one logit per pixel for a binary mask).
        weights: None or a path to a weights file saved from this model.
        base_filters: width of the first level (64 in the paper; 16 is plenty at 64 px on CPU).
        dropout_rate: dropout of the paper's Dropout(0.5) layers, in [0, 1).

    Returns:
        An uncompiled Functional ``keras.Model`` mapping ``(H, W, C)`` to ``(H, W, num_classes)`` logits.
    """
    shape = check_input_shape(NAME, input_shape, rank=3)
    f = check_positive_int(NAME, "base_filters", base_filters)
    check_fraction(NAME, "dropout_rate", dropout_rate)
    check_divisible(NAME, shape[:2], 8)
    inputs = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    enc1 = _conv_pair(x, f, "enc1")
    enc2 = _conv_pair(layers.MaxPooling2D(2, name="enc1_pool")(enc1), 2 * f, "enc2")
    enc3 = _conv_pair(layers.MaxPooling2D(2, name="enc2_pool")(enc2), 4 * f, "enc3")
    skip3 = layers.Dropout(dropout_rate, name="enc3_dropout")(enc3)
    x = layers.MaxPooling2D(2, name="enc3_pool")(enc3)
    dense1 = layers.Dropout(dropout_rate, name="dense1_dropout")(_conv_pair(x, 8 * f, "dense1"))
    dense2 = layers.Dropout(dropout_rate, name="dense2_dropout")(_conv_pair(dense1, 8 * f, "dense2"))
    merged = layers.Concatenate(name="dense_concat")([dense2, dense1])
    dense3 = layers.Dropout(dropout_rate, name="dense3_dropout")(_conv_pair(merged, 8 * f, "dense3"))
    x = _conv_pair(_fuse(skip3, _up(dense3, 4 * f, "dec3"), 2 * f, "dec3"), 4 * f, "dec3")
    x = _conv_pair(_fuse(enc2, _up(x, 2 * f, "dec2"), f, "dec2"), 2 * f, "dec2")
    x = _conv_pair(_fuse(enc1, _up(x, f, "dec1"), max(f // 2, 1), "dec1"), f, "dec1")
    x = layers.Conv2D(2, 3, padding="same", activation="relu", kernel_initializer="he_normal", name="out_conv")(x)
    outputs = layers.Conv2D(num_classes, 1, name="logits")(x)
    model = keras.Model(inputs, outputs, name=NAME)
    return load_weights_file(model, weights, NAME)


register_model(
    ModelSpec(
        name=NAME,
        builder=build_bcd_unet,
        task="segmentation",
        family="bcd_unet",
        input_shape=(256, 256, 1),
        reference="Azad et al. 2019, BCDU-Net, arXiv:1909.00166 (lung masks in Covid-detection-with-CT-scans)",
        description="BCD-U-Net D3: dense 8f bottleneck, ConvLSTM skip fusion; base_filters option",
        test_input_shape=(32, 32, 1),
    )
)
