"""predict_logits: the compiled path (padded batches, one compile) equals the eager call, row by row."""

from __future__ import annotations

import keras
import numpy as np

from covidct.models.inference import predict_logits


def _tiny_classifier():
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Dropout(0.5)(keras.layers.BatchNormalization()(x))
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


def test_compiled_prediction_with_a_padded_last_batch_equals_eager():
    keras.utils.set_random_seed(0)
    model = _tiny_classifier()  # BatchNorm + Dropout: both must be in inference mode
    images = np.random.default_rng(0).random((23, 16, 16, 1), dtype=np.float32) * 255
    rows = np.array([20, 3, 7, 7, 0, 15, 11, 22, 1, 9, 2])  # unsorted, a repeat, last batch of 3 padded to 4
    eager = predict_logits(model, images, rows, batch_size=4, compiled=False)
    compiled = predict_logits(model, images, rows, batch_size=4, compiled=True)
    flipped = predict_logits(model, images, rows, batch_size=4, flip=True, compiled=True)
    assert eager.shape == compiled.shape == (11, 3)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(compiled[2], compiled[3])  # the same image twice
    one = keras.ops.convert_to_numpy(model(images[20:21, :, ::-1, :], training=False))[0]
    np.testing.assert_allclose(flipped[0], one, rtol=1e-4, atol=1e-4)
