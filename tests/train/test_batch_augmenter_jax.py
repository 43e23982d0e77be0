"""``BatchAugmenter`` on the JAX backend: eager by default, ``jax.jit`` of ``stateless_call`` when asked
(run with KERAS_BACKEND=jax pytest -m jax)."""

from __future__ import annotations

import pytest
import test_batch_augmenter as cases  # same folder (pytest prepends it to sys.path)

pytestmark = pytest.mark.jax


def test_batch_augmenter_jax():
    from covidct.train.augment import compile_augmentation

    assert not compile_augmentation()  # measured no faster on a CPU (BENCHMARKS.md)
    for compiled in (False, True):
        cases.test_reseed_gives_the_draws_of_a_fresh_augmenter(compiled)
    cases.test_compiled_robust_chain_is_within_a_thousandth_of_a_grey_level()
    cases.test_nothing_to_draw_passes_batches_through()
    cases.test_sequence_epochs_draw_what_fresh_augmenters_would()


def test_environment_override_jax(monkeypatch):
    cases.test_the_environment_overrides_the_default(monkeypatch)
