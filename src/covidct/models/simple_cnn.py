"""Small CNNs trained from scratch: the CT-COV19 study's ``simple_cnn`` and a fast ``small_cnn``.

``simple_cnn`` is the CT-COV19 study's baseline exactly: Rescaling(1/255) → three Conv(3x3, valid, relu) +
MaxPool(2) blocks of 16-32-64 filters → GlobalMaxPool → Dense(32, relu) → Dense(num_classes) logits.

``small_cnn`` is the toolkit's own quick model for demos and CPU runs: four Conv(3x3, same) → BatchNorm
→ ReLU → MaxPool(2) blocks of 16-32-64-128 filters → GlobalAveragePool → Dropout → Dense logits,
about 98k parameters. It trains on 600 phantom slices at 64 px in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import functools

import keras
from keras import layers

from covidct.errors import CovidctError
from covidct.models._common import (
    check_fraction,
    check_input_shape,
    check_min_size,
    load_weights_file,
    min_input_size,
)
from covidct.models.registry import ModelSpec, register_model

# The original study's three valid 3x3 convolutions, each followed by a 2x2 max-pool.
_SIMPLE_CHAIN = [(3, 1), (2, 2)] * 3


def build_simple_cnn(input_shape, num_classes: int, weights=None, *, _name: str = "simple_cnn"):
    """Build the CT-COV19 study's simple CNN.

    Args:
        input_shape: ``(H, W, C)``, values in [0, 255]; H and W at least 22.
        num_classes: number of logits.
        weights: None or a path to a weights file saved from this model.

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    shape = check_input_shape(_name, input_shape, rank=3)
    check_min_size(_name, shape[:2], min_input_size(_SIMPLE_CHAIN))
    inputs = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="valid", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalMaxPooling2D(name="global_max_pool")(x)
    x = layers.Dense(32, activation="relu", name="dense1")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name=_name)
    return load_weights_file(model, weights, _name)


def build_small_cnn(
    input_shape,
    num_classes: int,
    weights=None,
    *,
    filters: tuple = (16, 32, 64, 128),
    dropout_rate: float = 0.2,
    _name: str = "small_cnn",
):
    """Build the fast 4-block CNN used by the demo and CPU runs.

    Args:
        input_shape: ``(H, W, C)``, values in [0, 255]; H and W at least 16 (four halvings).
        num_classes: number of logits.
        weights: None or a path to a weights file saved from this model.
        filters: filters of the conv blocks, one block per entry.
        dropout_rate: dropout before the logits layer, in [0, 1).

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    shape = check_input_shape(_name, input_shape, rank=3)
    check_fraction(_name, "dropout_rate", dropout_rate)
    if not filters or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in filters):
        raise CovidctError(f"Model {_name!r}: filters must be a non-empty tuple of positive ints, got {filters!r}.")
    check_min_size(_name, shape[:2], 2 ** len(filters))
    inputs = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, width in enumerate(filters, start=1):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="global_avg_pool")(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name=_name)
    return load_weights_file(model, weights, _name)


register_model(
    ModelSpec(
        name="simple_cnn",
        builder=functools.partial(build_simple_cnn, _name="simple_cnn"),
        task="classification",
        family="simple_cnn",
        input_shape=(512, 512, 1),
        gradcam_layer="conv3",
        reference="CT-COV19 study baseline, github.com/m2dgithub/CT-COV19",
        description="3 conv blocks 16-32-64, valid padding, GlobalMaxPool, Dense(32)",
        test_input_shape=(32, 32, 1),
    )
)

register_model(
    ModelSpec(
        name="small_cnn",
        builder=functools.partial(build_small_cnn, _name="small_cnn"),
        task="classification",
        family="simple_cnn",
        input_shape=(128, 128, 1),
        gradcam_layer="block4_relu",
        reference="covidct's own fast baseline (4 Conv-BN-ReLU-MaxPool blocks), for demos and CPU runs",
        description="4 conv-BN blocks 16-32-64-128, ~98k params, fast on CPU",
        test_input_shape=(32, 32, 1),
    )
)
