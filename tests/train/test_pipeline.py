"""``training.input_pipeline``: the threaded pipeline hands out the batches the inline one makes, in order."""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest

from covidct.config import config_from_dict, validate_config
from covidct.errors import CovidctError
from covidct.train.data import SliceSequence
from covidct.train.pipeline import Prefetcher, resolve_pipeline
from covidct.train.recipes import ROBUST_AUGMENTATION


def _sequence(pipeline: str, compiled: bool) -> SliceSequence:
    images = np.random.default_rng(0).integers(0, 255, (70, 24, 24, 1)).astype("uint8")
    sequence = SliceSequence(images, np.arange(70), labels=np.arange(70) % 3, batch_size=16, shuffle=True, seed=3,
                             augmentation=ROBUST_AUGMENTATION, pipeline=pipeline)
    sequence.augmenter.compiled = compiled
    return sequence


@pytest.mark.parametrize("compiled", [False, True])
def test_threaded_batches_are_the_inline_batches(compiled):
    """Three epochs (the first again last: re-seeded), every batch and label equal bit for bit."""
    if compiled and keras.backend.backend() not in ("tensorflow", "jax"):
        pytest.skip("compiled augmentation: TensorFlow or JAX")
    inline, threaded = _sequence("inline", compiled), _sequence("threaded", compiled)
    assert inline.prefetcher is None and threaded.prefetcher is not None
    for epoch in (0, 1, 0):
        inline.set_epoch(epoch)
        threaded.set_epoch(epoch)
        assert len(inline) == len(threaded) == 5
        for index in range(len(inline)):
            (x, y), (u, v) = inline[index], threaded[index]
            np.testing.assert_array_equal(u, x)
            np.testing.assert_array_equal(v, y)
    threaded.prefetcher.close()


def test_the_prefetcher_prepares_the_next_batches_in_order_while_the_caller_waits():
    calls, release = [], threading.Event()

    def make(index):
        calls.append(index)
        if index == 2:
            release.wait(10)  # batch 2 is being prepared while the caller still holds batch 0
        return index * 10

    prefetcher = Prefetcher(make, depth=2)
    assert prefetcher.get(0, 6) == 0
    for _ in range(200):
        if calls == [0, 1, 2]:
            break
        threading.Event().wait(0.01)
    assert calls == [0, 1, 2]  # two batches ahead, not more, while the caller has not asked
    release.set()
    assert [prefetcher.get(i, 6) for i in (1, 2, 3, 4, 5)] == [10, 20, 30, 40, 50]
    assert calls == [0, 1, 2, 3, 4, 5]  # nothing past the end
    prefetcher.reset()
    assert prefetcher.get(3, 6) == 30 and prefetcher.get(5, 6) == 50  # a jump drops what was queued
    assert calls[:7] == [0, 1, 2, 3, 4, 5, 3] and all(c in (4, 5) for c in calls[7:])
    prefetcher.close()


def test_settings_resolve_per_backend_and_unknown_ones_are_refused():
    assert resolve_pipeline("inline") == "inline" and resolve_pipeline("threaded") == "threaded"
    assert resolve_pipeline("auto") == resolve_pipeline(None) == "inline"
    with pytest.raises(CovidctError, match="Did you mean: threaded"):
        resolve_pipeline("thread")
    with pytest.raises(CovidctError, match="training.input_pipeline"):
        validate_config(config_from_dict({"name": "x", "data": {"dataset": "phantom"}, "model": {"name": "simple_cnn"},
                                          "training": {"input_pipeline": "prefetch"}}))
    assert config_from_dict({"name": "x", "data": {"dataset": "phantom"}, "model": {"name": "simple_cnn"},
                             "training": {"input_pipeline": "threaded"}}).training.input_pipeline == "threaded"
