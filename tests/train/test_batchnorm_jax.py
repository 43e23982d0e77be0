"""BatchNorm recalibration on the JAX backend: the jitted ``stateless_call`` pass (run with KERAS_BACKEND=jax pytest -m jax)."""

from __future__ import annotations

import pytest
import test_batchnorm as cases  # same folder (pytest prepends it to sys.path)

pytestmark = pytest.mark.jax


def test_compiled_passes_give_the_eager_statistics_jax():
    cases.test_compiled_passes_give_the_eager_statistics()


def test_a_thawed_layer_is_recalibrated_jax():
    cases.test_a_thawed_layer_is_recalibrated_by_the_cached_compiled_pass()


def test_statistics_and_dropout_jax():
    cases.test_statistics_are_the_row_weighted_mean_of_batch_statistics()
    cases.test_dropout_is_off_during_recalibration_and_restored_after()
    cases.test_an_interrupted_pass_puts_the_old_statistics_back()


def test_compiled_prediction_equals_eager_jax():
    import test_predict

    test_predict.test_compiled_prediction_with_a_padded_last_batch_equals_eager()
