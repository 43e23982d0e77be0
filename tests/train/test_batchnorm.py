"""BatchNorm recalibration ("precise BN"): hand-computed statistics, dropout off, frozen layers, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from covidct.train.batchnorm import recalibrate_batch_norm, recalibration_rows


def _bn_model(dropout: float = 0.0, width: int = 2):
    inputs = keras.Input((width,))
    x = keras.layers.Dropout(dropout, name="drop")(inputs) if dropout else inputs
    outputs = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, outputs)


def _stats(model):
    bn = model.get_layer("bn")
    return keras.ops.convert_to_numpy(bn.moving_mean), keras.ops.convert_to_numpy(bn.moving_variance)


def test_statistics_are_the_row_weighted_mean_of_batch_statistics():
    model = _bn_model()
    batches = [np.array([[0.0, 0.0], [2.0, 4.0]], "float32"), np.array([[4.0, 8.0]], "float32")]
    # batch 1 (2 rows): mean (1, 2), biased variance (1, 4); batch 2 (1 row): mean (4, 8), variance (0, 0)
    assert recalibrate_batch_norm(model, iter(batches)) == 2
    mean, variance = _stats(model)
    np.testing.assert_allclose(mean, [2.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(variance, [2.0 / 3.0, 8.0 / 3.0], rtol=1e-6)
    assert model.get_layer("bn").momentum == pytest.approx(0.99)


def test_dropout_is_off_during_recalibration_and_restored_after():
    model = _bn_model(dropout=0.5, width=64)
    batch = np.full((8, 64), 3.0, "float32")  # with dropout on, the mean would scatter around 3 and the variance be ~9
    recalibrate_batch_norm(model, [batch, batch])
    mean, variance = _stats(model)
    np.testing.assert_allclose(mean, 3.0, rtol=1e-6)
    np.testing.assert_allclose(variance, 0.0, atol=1e-6)
    assert model.get_layer("drop").rate == 0.5


def test_frozen_batch_norm_and_empty_input_keep_their_statistics():
    model = _bn_model()
    before = _stats(model)
    assert recalibrate_batch_norm(model, []) == 0
    model.get_layer("bn").trainable = False
    assert recalibrate_batch_norm(model, [np.ones((4, 2), "float32")]) == 0
    for old, new in zip(before, _stats(model)):
        np.testing.assert_array_equal(old, new)


def test_an_interrupted_pass_puts_the_old_statistics_back():
    model = _bn_model()
    before = _stats(model)

    def batches():
        yield np.array([[5.0, 5.0], [7.0, 9.0]], "float32")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recalibrate_batch_norm(model, batches())
    for old, new in zip(before, _stats(model)):
        np.testing.assert_array_equal(old, new)
    assert model.get_layer("bn").momentum == pytest.approx(0.99)


def test_recalibration_rows():
    rows = np.arange(100, 130)
    np.testing.assert_array_equal(recalibration_rows(rows[::-1], 64, seed=0), rows)
    assert len(recalibration_rows(rows, 0, seed=0)) == 0
    picked = recalibration_rows(rows, 10, seed=3)
    assert len(picked) == 10 and len(set(picked)) == 10 and set(picked) <= set(rows)
    assert np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(picked, recalibration_rows(rows, 10, seed=3))


def _conv_model():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.Dropout(0.5, name="drop")(keras.layers.ReLU()(x))
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.BatchNormalization(name="bn_b")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def _all_stats(model):
    return [keras.ops.convert_to_numpy(v) for name in ("bn_a", "bn_b") for v in (model.get_layer(name).moving_mean, model.get_layer(name).moving_variance)]


def test_compiled_passes_give_the_eager_statistics():
    keras.utils.set_random_seed(0)
    model = _conv_model()
    batches = [np.random.default_rng(i).normal(i, 1 + i, (5 - i, 8, 8, 1)).astype("float32") for i in range(3)]
    weights, before = model.get_weights(), _all_stats(model)
    assert recalibrate_batch_norm(model, batches, compiled=False) == 3
    eager = _all_stats(model)
    model.set_weights(weights)
    assert recalibrate_batch_norm(model, batches, compiled=True) == 3
    for a, b in zip(eager, _all_stats(model)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(np.abs(a - b).max() > 1e-3 for a, b in zip(eager, before))  # every statistic was recalibrated


def test_a_thawed_layer_is_recalibrated_by_the_cached_compiled_pass():
    model = _conv_model()
    batch = np.random.default_rng(0).normal(2.0, 3.0, (6, 8, 8, 1)).astype("float32")
    model.get_layer("bn_a").trainable = False  # traced with bn_a in inference mode
    recalibrate_batch_norm(model, [batch])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("bn_a").moving_mean), 0.0)
    model.get_layer("bn_a").trainable = True  # a backbone thaws: the cached function must not be reused
    recalibrate_batch_norm(model, [batch])
    conv = keras.ops.convert_to_numpy(model.get_layer("conv")(batch)).astype("float64")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer("bn_a").moving_mean), conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer("bn_a").moving_variance), conv.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
