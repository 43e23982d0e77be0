"""``BatchAugmenter``: re-seeding gives ``make_augmenter``'s draws; the compiled call gives the eager pixels."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from covidct.train.augment import BatchAugmenter, augment_batch, compile_augmentation, make_augmenter
from covidct.train.data import SliceSequence
from covidct.train.recipes import ROBUST_AUGMENTATION

STAGE = {"rotation": 0.1, "zoom": -0.2, "translation": 0.1, "flip": True}


def _batch(n=6, size=32, seed=0):
    x = np.random.default_rng(seed).uniform(0, 255, (n, size, size, 1)).astype("float32")
    x[:, :4] = 0.0  # a black band: the appearance layers keep exact zeros
    return x


@pytest.mark.parametrize("compiled", [False, True])
def test_reseed_gives_the_draws_of_a_fresh_augmenter(compiled):
    x = _batch()
    augmenter = BatchAugmenter(STAGE, seed=0, compiled=compiled)
    for seed in (3, 11, 3):  # a seed used twice gives its draws again
        augmenter.reseed(seed)
        reference = make_augmenter(STAGE, seed)
        for batch in (x, x[:4]):  # two calls: the second continues the first's random stream
            expected = augment_batch(reference, batch)
            got = augmenter(batch)
            assert got.dtype == np.float32 and got.shape == batch.shape
            # The stage layers compile to the same arithmetic (checked exactly on TensorFlow; XLA on JAX
            # may fuse the interpolation differently: within a thousandth of a grey level).
            tolerance = 0 if not compiled or keras.backend.backend() == "tensorflow" else 1e-3
            np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
            assert not np.allclose(got, batch)


def test_compiled_robust_chain_is_within_a_thousandth_of_a_grey_level():
    x = _batch(size=48)
    eager, compiled = BatchAugmenter(ROBUST_AUGMENTATION, 7, compiled=False), BatchAugmenter(ROBUST_AUGMENTATION, 7, compiled=True)
    for _ in range(2):
        a, b = eager(x), compiled(x)
        assert np.abs(a - b).max() < 1e-3 and np.abs(a - x).max() > 10
        np.testing.assert_array_equal(a == 0, b == 0)  # same pixels kept at exactly 0


def test_tensorflow_traces_once_for_every_batch_size():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function trace count: TensorFlow only")
    augmenter = BatchAugmenter(STAGE, seed=0)
    assert augmenter.compiled and compile_augmentation()
    for n in (6, 4, 6, 1):
        augmenter(_batch(n))
    augmenter.reseed(5)
    augmenter(_batch(3))
    assert augmenter._function.experimental_get_tracing_count() == 1


def test_nothing_to_draw_passes_batches_through():
    x = _batch()
    augmenter = BatchAugmenter({"rotation": 0.0, "zoom": 0.0, "translation": 0.0, "flip": False}, seed=0)
    augmenter.reseed(4)
    assert augmenter.layers is None and augmenter(x) is x


def test_sequence_epochs_draw_what_fresh_augmenters_would():
    images = np.random.default_rng(1).integers(0, 255, size=(10, 24, 24, 1), dtype=np.uint8)
    seq = SliceSequence(images, np.arange(10), np.arange(10) % 2, batch_size=4, shuffle=True, seed=2,
                        augmentation=STAGE)
    built = seq.augmenter
    for epoch in (0, 1, 3, 1):  # also out of order (a resumed run starts at its epoch)
        seq.set_epoch(epoch)
        assert seq.augmenter is built  # one augmenter for the run, re-seeded
        reference = make_augmenter(STAGE, seed=2 * 10007 + epoch * 101)
        for index in range(len(seq)):
            rows = seq.order[index * 4:(index + 1) * 4]
            expected = augment_batch(reference, images[rows].astype("float32"))
            tolerance = 0 if keras.backend.backend() != "jax" or not built.compiled else 1e-3
            np.testing.assert_allclose(seq[index][0], expected, rtol=0, atol=tolerance)


def test_the_environment_overrides_the_default(monkeypatch):
    from covidct.train.augment import COMPILE_AUGMENTATION_ENV

    default = keras.backend.backend() == "tensorflow"
    for setting, expected in (("auto", default), ("on", True), ("OFF", False)):
        monkeypatch.setenv(COMPILE_AUGMENTATION_ENV, setting)
        assert compile_augmentation() is expected
        assert BatchAugmenter(STAGE, 0).compiled is expected
    monkeypatch.setenv(COMPILE_AUGMENTATION_ENV, "yes")
    with pytest.raises(ValueError, match="COVIDCT_COMPILE_AUGMENTATION='yes': use on, off or auto"):
        compile_augmentation()
