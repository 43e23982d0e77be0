"""3D CNNs for whole CT volumes (task ``"volume"``), input ``(D, H, W, 1)``.

Volumes follow the toolkit convention: HU clipped to [-1000, 400] and mapped linearly to 0..255
(lung and soft tissue kept, bone and air saturated); the models rescale by 1/255 inside.

* ``cnn3d_covidscan`` (CovidScan, MosMedData, 64x64x32 i.e. (32, 64, 64, 1)): Conv3D(64, 3, relu) →
  MaxPool3D(2) → BN → Dropout 0.5 → Conv3D(128, 3, relu) → MaxPool3D(2) → BN → Dropout 0.5 → Flatten
  → Dense(512, relu) → Dense(256, relu) → Dense(num_classes) logits. The Flatten makes the Dense layer
  large (77 M parameters at the default shape).
* ``cnn3d_kerasio`` (keras-io ``3D_image_classification``, (64, 128, 128, 1)): four Conv3D(3, relu) →
  MaxPool3D(2) → BN blocks of 64-64-128-256 filters → global average pool → Dense(512, relu) →
  Dropout 0.3 → Dense(num_classes) logits.

All convolutions and pools are valid (Keras default), so each axis has a minimum size: 10 for
covidscan, 46 for kerasio.

Reference:
    Zunair et al. "Uniformizing Techniques to Process CT scans with 3D CNNs for Tuberculosis
    Prediction", 2020, arXiv:2007.13224; keras.io/examples/vision/3D_image_classification/;
    MosMedData, Morozov et al. 2020, arXiv:2005.06465.
"""

from __future__ import annotations

import functools

import keras
from keras import layers

from covidct.models._common import (
    check_input_shape,
    check_min_size,
    load_weights_file,
    min_input_size,
)
from covidct.models.registry import ModelSpec, register_model

# name: (conv filters, dropout after each block, head Dense widths, head dropout, flatten (True) or GAP)
VARIANTS = {
    "cnn3d_covidscan": ((64, 128), 0.5, (512, 256), 0.0, True),
    "cnn3d_kerasio": ((64, 64, 128, 256), 0.0, (512,), 0.3, False),
}

DEFAULT_SHAPES = {
    "cnn3d_covidscan": (32, 64, 64, 1),
    "cnn3d_kerasio": (64, 128, 128, 1),
}


def _min_size(n_blocks: int) -> int:
    return min_input_size([(3, 1), (2, 2)] * n_blocks)


def build_cnn3d(input_shape, num_classes: int, weights=None, *, _variant: str = "cnn3d_covidscan"):
    """Build a 3D CNN volume classifier.

    Args:
        input_shape: ``(D, H, W, 1)``, values in [0, 255] (HU -1000..400 mapped linearly).
        num_classes: number of logits.
        weights: None or a path to a weights file saved from this model.

    Returns:
        An uncompiled Functional ``keras.Model`` producing logits.
    """
    filters, block_dropout, hidden, head_dropout, flatten = VARIANTS[_variant]
    shape = check_input_shape(_variant, input_shape, rank=4)
    check_min_size(_variant, shape[:3], _min_size(len(filters)))
    inputs = keras.Input(shape, name="volume")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, width in enumerate(filters, start=1):
        x = layers.Conv3D(width, 3, activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling3D(2, name=f"pool{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        if block_dropout:
            x = layers.Dropout(block_dropout, name=f"dropout{i}")(x)
    if flatten:
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling3D(name="global_avg_pool")(x)
    for i, units in enumerate(hidden, start=1):
        x = layers.Dense(units, activation="relu", name=f"dense{i}")(x)
    if head_dropout:
        x = layers.Dropout(head_dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name=_variant)
    return load_weights_file(model, weights, _variant)


_REFERENCES = {
    "cnn3d_covidscan": "CovidScan, github.com/kaiznanji/CovidScan (MosMedData 3D CNN, 64x64x32); Zunair et al. 2020, arXiv:2007.13224",
    "cnn3d_kerasio": "keras.io/examples/vision/3D_image_classification (128x128x64)",
}

for _name, (_filters, _bd, _hidden, _hd, _flat) in VARIANTS.items():
    _min = _min_size(len(_filters))
    register_model(
        ModelSpec(
            name=_name,
            builder=functools.partial(build_cnn3d, _variant=_name),
            task="volume",
            inputs=("volume",),
            family="cnn3d",
            input_shape=DEFAULT_SHAPES[_name],
            gradcam_layer=f"conv{len(_filters)}",
            reference=_REFERENCES[_name],
            description=(
                f"Conv3D {'-'.join(map(str, _filters))}, {'Flatten' if _flat else 'GAP'} → "
                f"Dense {'-'.join(map(str, _hidden))}; min {_min} per axis"
            ),
            test_input_shape=(16, 32, 32, 1) if _min <= 16 else (_min + 2, _min + 2, _min + 2, 1),
        )
    )
