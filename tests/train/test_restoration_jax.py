"""Restoration pretraining and its hand-over on the JAX backend (run with KERAS_BACKEND=jax pytest -m jax)."""

from __future__ import annotations

import pytest
import test_restoration as cases  # same folder (pytest prepends it to sys.path)

pytestmark = pytest.mark.jax


def test_pretraining_learns_and_hands_over_jax(tmp_path):
    cases.test_pretrain_run_learns_and_hands_its_weights_to_a_segmentation_run(tmp_path)


def test_restoration_loss_jax():
    cases.test_restoration_loss_numpy_equals_keras()
