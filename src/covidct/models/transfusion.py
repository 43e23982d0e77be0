"""Transfusion CBR networks (Raghu et al. 2019): small Conv-BatchNorm-ReLU nets from scratch.

A CBR block is Conv(k x k, valid) → BatchNorm → ReLU → MaxPool(3, stride 2); the blocks are followed by
global average pooling and a Dense logits layer. Rescaling(1/255) comes first (pixel convention).

The four variants are rows of ``VARIANTS`` fed to one builder. LargeT has five blocks and pools after
the first four only (the original study's code built LargeT as a copy of Tiny; here the variants differ and a
test asserts it).

Reference:
    Raghu, Zhang, Kleinberg, Bengio. "Transfusion: Understanding Transfer Learning for Medical
    Imaging", NeurIPS 2019, arXiv:1902.07208.
"""

from __future__ import annotations

import functools

import keras
from keras import layers

from covidct.models._common import check_input_shape, check_min_size, load_weights_file, min_input_size
from covidct.models.registry import ModelSpec, register_model

REFERENCE = "Raghu et al. 2019, Transfusion, arXiv:1902.07208 (CBR nets as used in the CT-COV19 study)"

# name: (kernel size, filters per block, number of leading blocks followed by a max-pool)
VARIANTS = {
    "transfusion_tiny": (5, (64, 128, 256, 512), 4),
    "transfusion_small": (7, (32, 64, 128, 256), 4),
    "transfusion_largew": (7, (64, 128, 256, 512), 4),
    "transfusion_larget": (7, (32, 64, 128, 256, 512), 4),
}


def _size_chain(kernel: int, n_blocks: int, n_pooled: int) -> list:
    chain = []
    for i in range(n_blocks):
        chain.append((kernel, 1))
        if i < n_pooled:
            chain.append((3, 2))
    return chain


def build_transfusion(input_shape, num_classes: int, weights=None, *, _variant: str = "transfusion_tiny"):
    """Build a Transfusion CBR network.

    Args:
        input_shape: ``(H, W, C)``, values in [0, 255]. Valid padding shrinks the image fast: the
            minimum sizes are 91 (Tiny), 121 (Small, LargeW) and 217 px (LargeT).
        num_classes: number of logits.
        weights: None or a path to a weights file saved from this model.

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    kernel, filters, n_pooled = VARIANTS[_variant]
    shape = check_input_shape(_variant, input_shape, rank=3)
    check_min_size(_variant, shape[:2], min_input_size(_size_chain(kernel, len(filters), n_pooled)))
    inputs = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, width in enumerate(filters, start=1):
        x = layers.Conv2D(width, kernel, padding="valid", name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        if i <= n_pooled:
            x = layers.MaxPooling2D(pool_size=3, strides=2, name=f"block{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="global_avg_pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name=_variant)
    return load_weights_file(model, weights, _variant)


for _name, (_kernel, _filters, _pooled) in VARIANTS.items():
    _min = min_input_size(_size_chain(_kernel, len(_filters), _pooled))
    register_model(
        ModelSpec(
            name=_name,
            builder=functools.partial(build_transfusion, _variant=_name),
            task="classification",
            family="transfusion",
            input_shape=(512, 512, 1),
            gradcam_layer=f"block{len(_filters)}_relu",
            reference=REFERENCE,
            description=(
                f"{len(_filters)} CBR blocks {_kernel}x{_kernel} {'-'.join(map(str, _filters))}, "
                f"min input {_min} px"
            ),
            # The smallest multiple of 8 at or above the minimum size keeps the tests fast.
            test_input_shape=(-(-_min // 8) * 8, -(-_min // 8) * 8, 1),
        )
    )
