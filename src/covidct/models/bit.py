"""BiT ResNet-v2 (Big Transfer) for Keras 3, with a loader for the official ``.npz`` weights.

TF-Hub BiT layers do not work under Keras 3, so the network is written here: a pre-activation
ResNet-v2 with bottleneck units, GroupNorm(32) instead of BatchNorm and weight-standardised
convolutions (``StandardizedConv2D``, a registered Keras layer). It follows the official
``bit_pytorch/models.py``: root = 7x7/2 conv, pad 1, 3x3/2 max-pool; the stride of a unit sits on its
3x3 conv; a unit with a stride or a width change has a 1x1 projection of the pre-activated input; the
head is GroupNorm → ReLU → global average pool → Dense.

Inputs follow the toolkit convention (values in [0, 255], 1 or 3 channels). A 1-channel image is
repeated to 3 channels (layer ``to_rgb``) and scaled to [-1, 1] (layer ``rescale``) inside the model,
as BiT was trained (the official fine-tuning code normalises with mean 0.5 and std 0.5).

Layer names mirror the official variable names, so ``load_bit_npz`` maps them one to one:

=============================================================  =================================
official ``.npz`` key                                           Keras layer / weight
=============================================================  =================================
``resnet/root_block/standardized_conv2d/kernel``                ``root_conv`` kernel
``resnet/block{b}/unit{uu}/{a,b,c}/standardized_conv2d/kernel``  ``block{b}_unit{uu}_{a,b,c}_conv``
``resnet/block{b}/unit{uu}/{a,b,c}/group_norm/{gamma,beta}``     ``block{b}_unit{uu}_{a,b,c}_gn``
``resnet/block{b}/unit01/a/proj/standardized_conv2d/kernel``     ``block{b}_unit01_proj_conv``
``resnet/group_norm/{gamma,beta}``                              ``head_gn``
``resnet/head/conv2d/{kernel,bias}`` (only with load_head)      ``logits`` (kernel ``[0, 0]``)
=============================================================  =================================

Reference:
    Kolesnikov et al. "Big Transfer (BiT): General Visual Representation Learning", ECCV 2020,
    arXiv:1912.11370; weights https://storage.googleapis.com/bit_models/BiT-S-R50x1.npz;
    code github.com/google-research/big_transfer.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from covidct.errors import CovidctError
from covidct.models._common import (
    check_input_shape,
    freeze_layers,
    load_weights_file,
    to_rgb,
)
from covidct.models.registry import ModelSpec, register_model

logger = logging.getLogger(__name__)

REFERENCE = "Kolesnikov et al. 2020, Big Transfer (BiT), arXiv:1912.11370; github.com/google-research/big_transfer"

# name: (units per block, width factor)
VARIANTS = {
    "bit_r50x1": ((3, 4, 6, 3), 1),
}

GN_EPSILON = 1e-5  # torch.nn.GroupNorm / the official TF group_norm default
WS_EPSILON = 1e-10  # official StdConv2d


@keras.saving.register_keras_serializable(package="covidct")
class StandardizedConv2D(layers.Conv2D):
    """A Conv2D whose kernel is standardised (zero mean, unit variance per output filter) at each call.

    The statistics run over the kernel's (height, width, input channels) axes, in float32 even under
    mixed precision, with epsilon 1e-10 as in the official BiT code.
    """

    def convolution_op(self, inputs, kernel):
        kernel32 = ops.cast(kernel, "float32")
        mean = ops.mean(kernel32, axis=(0, 1, 2), keepdims=True)
        var = ops.var(kernel32, axis=(0, 1, 2), keepdims=True)
        standardized = (kernel32 - mean) / ops.sqrt(var + WS_EPSILON)
        return super().convolution_op(inputs, ops.cast(standardized, inputs.dtype))


def _ws_conv(x, filters: int, kernel: int, stride: int, name: str):
    """Weight-standardised conv with the official explicit symmetric padding (not Keras 'same')."""
    if kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    return StandardizedConv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)


def _group_norm(x, name: str):
    return layers.GroupNormalization(groups=32, epsilon=GN_EPSILON, name=name)(x)


def _bottleneck_unit(x, cin: int, cout: int, cmid: int, stride: int, prefix: str):
    """One pre-activation bottleneck unit (GN-ReLU-conv x3) with an optional projection shortcut."""
    pre = layers.ReLU(name=f"{prefix}_a_relu")(_group_norm(x, f"{prefix}_a_gn"))
    if stride != 1 or cin != cout:
        shortcut = _ws_conv(pre, cout, 1, stride, f"{prefix}_proj_conv")
    else:
        shortcut = x
    y = _ws_conv(pre, cmid, 1, 1, f"{prefix}_a_conv")
    y = layers.ReLU(name=f"{prefix}_b_relu")(_group_norm(y, f"{prefix}_b_gn"))
    y = _ws_conv(y, cmid, 3, stride, f"{prefix}_b_conv")
    y = layers.ReLU(name=f"{prefix}_c_relu")(_group_norm(y, f"{prefix}_c_gn"))
    y = _ws_conv(y, cout, 1, 1, f"{prefix}_c_conv")
    return layers.Add(name=f"{prefix}_add")([y, shortcut])


def build_bit(
    input_shape,
    num_classes: int,
    weights=None,
    *,
    freeze_backbone: bool = False,
    zero_head: bool = False,
    _variant: str = "bit_r50x1",
):
    """Build a BiT ResNet-v2.

    Args:
        input_shape: ``(H, W, C)`` with C in {1, 3}, values in [0, 255]; H, W at least 32.
        num_classes: number of logits.
        weights: None (random), a path to an official BiT ``.npz`` file (backbone loaded with
            ``load_bit_npz``), or a path to a Keras weights file saved from this model.
        freeze_backbone: train only the Dense head (the original study's linear probe).
        zero_head: initialise the head to zeros (BiT's fine-tuning recipe).

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    block_units, width = VARIANTS[_variant]
    shape = check_input_shape(_variant, input_shape, rank=3, channels=(1, 3))
    if min(shape[:2]) < 32:
        raise CovidctError(f"Model {_variant!r} needs inputs of at least 32x32 (5 halvings); got {shape}.")
    inputs = keras.Input(shape, name="image")
    x = to_rgb(inputs, shape[-1])
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)
    x = _ws_conv(x, 64 * width, 7, 2, "root_conv")
    x = layers.ZeroPadding2D(1, name="root_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="root_pool")(x)
    cin = 64 * width
    for b, n_units in enumerate(block_units, start=1):
        cmid = 64 * width * 2 ** (b - 1)
        cout = 4 * cmid
        for u in range(1, n_units + 1):
            stride = 2 if (u == 1 and b > 1) else 1
            x = _bottleneck_unit(x, cin, cout, cmid, stride, f"block{b}_unit{u:02d}")
            cin = cout
    x = _group_norm(x, "head_gn")
    x = layers.ReLU(name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="global_avg_pool")(x)
    init = "zeros" if zero_head else "glorot_uniform"
    outputs = layers.Dense(num_classes, kernel_initializer=init, bias_initializer="zeros", name="logits")(x)
    model = keras.Model(inputs, outputs, name=_variant)
    if weights is not None:
        if Path(str(weights)).suffix == ".npz":
            load_bit_npz(model, weights)
        else:
            load_weights_file(model, weights, _variant)
    if freeze_backbone:
        freeze_layers([layer for layer in model.layers if layer.name != "logits"])
    return model


# ----------------------------------------------------------------------------------------------------
# Official .npz weights
# ----------------------------------------------------------------------------------------------------

_UNIT_LAYER = re.compile(r"^block(\d+)_unit(\d+)_(a|b|c|proj)_(gn|conv)$")


def bit_npz_names(model, load_head: bool = False) -> dict:
    """Map official BiT ``.npz`` variable names to this model's weights.

    Args:
        model: a model built by ``build_bit`` (any input shape).
        load_head: include the ``resnet/head/conv2d`` kernel and bias (mapped to ``logits``).

    Returns:
        ``{npz_key: (keras_variable, transform)}`` where ``transform`` turns the npz array into the
        variable's layout (identity, or ``[0, 0]`` for the 1x1 head conv).
    """
    mapping = {}
    identity = lambda a: a  # noqa: E731 - a tiny, local, documented transform
    for layer in model.layers:
        if layer.name == "root_conv":
            mapping["resnet/root_block/standardized_conv2d/kernel"] = (layer.kernel, identity)
        elif layer.name == "head_gn":
            mapping["resnet/group_norm/gamma"] = (layer.gamma, identity)
            mapping["resnet/group_norm/beta"] = (layer.beta, identity)
        elif layer.name == "logits" and load_head:
            mapping["resnet/head/conv2d/kernel"] = (layer.kernel, lambda a: a[0, 0])
            mapping["resnet/head/conv2d/bias"] = (layer.bias, identity)
        else:
            match = _UNIT_LAYER.match(layer.name)
            if not match:
                continue
            block, unit, part, kind = match.groups()
            prefix = f"resnet/block{block}/unit{unit}"
            if part == "proj":
                mapping[f"{prefix}/a/proj/standardized_conv2d/kernel"] = (layer.kernel, identity)
            elif kind == "conv":
                mapping[f"{prefix}/{part}/standardized_conv2d/kernel"] = (layer.kernel, identity)
            else:
                mapping[f"{prefix}/{part}/group_norm/gamma"] = (layer.gamma, identity)
                mapping[f"{prefix}/{part}/group_norm/beta"] = (layer.beta, identity)
    return mapping


def load_bit_npz(model, path, load_head: bool = False):
    """Load an official BiT ``.npz`` file (e.g. ``BiT-S-R50x1.npz``) into a model built here.

    Every expected array is checked before anything is assigned: a missing key or a shape that does
    not fit raises one ``CovidctError`` naming the keys, and the model is left unchanged.

    Args:
        model: a model from ``build_model("bit_r50x1", ...)``.
        path: the ``.npz`` file.
        load_head: also load the pre-training head (needs ``num_classes`` equal to its size, 21843
            for BiT-M, 1000 for BiT-S); by default the head keeps its own initialisation.

    Returns:
        The model, with the backbone weights replaced.

    Raises:
        CovidctError: missing file, missing keys or mismatched shapes.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CovidctError(
            f"BiT weights file {str(path)!r} does not exist. Download e.g. "
            f"https://storage.googleapis.com/bit_models/BiT-S-R50x1.npz and pass its path."
        )
    with np.load(path) as npz:
        # Some released files number their convs (standardized_conv2d_3); the official loaders
        # strip the suffix, and so do we.
        arrays = {re.sub(r"/standardized_conv2d_\d+/", "/standardized_conv2d/", k): npz[k] for k in npz.files}
    mapping = bit_npz_names(model, load_head=load_head)
    if not mapping:
        raise CovidctError(f"Model {model.name!r} has no BiT layers (root_conv, block*_unit*); build it with bit_r50x1.")
    missing = [key for key in mapping if key not in arrays]
    misshaped = []
    for key, (variable, transform) in mapping.items():
        if key in arrays:
            value = transform(arrays[key])
            if tuple(value.shape) != tuple(variable.shape):
                misshaped.append(f"{key}: file {tuple(value.shape)} vs model {tuple(variable.shape)}")
    if missing or misshaped:
        lines = []
        if missing:
            lines.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:5])}")
        if misshaped:
            lines.append(f"{len(misshaped)} shape mismatch(es): {'; '.join(misshaped[:5])}")
        raise CovidctError(
            f"BiT weights {str(path)!r} do not fit model {model.name!r}: {'. '.join(lines)}. "
            f"Is it a BiT R50x1 file (BiT-S-R50x1.npz / BiT-M-R50x1.npz)?"
        )
    for key, (variable, transform) in mapping.items():
        variable.assign(transform(arrays[key]).astype(variable.dtype))
    unused = sorted(set(arrays) - set(mapping))
    if unused:
        logger.info("load_bit_npz: %d array(s) of %s not used (e.g. %s)", len(unused), path.name, unused[0])
    return model


for _name in VARIANTS:
    register_model(
        ModelSpec(
            name=_name,
            builder=functools.partial(build_bit, _variant=_name),
            task="classification",
            family="bit",
            input_shape=(224, 224, 1),
            gradcam_layer="head_relu",
            reference=REFERENCE,
            imagenet_weights=False,
            description="ResNet-v2 50x1, GroupNorm + weight standardisation; official .npz loader",
            test_input_shape=(32, 32, 1),
        )
    )
