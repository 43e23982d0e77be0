"""A tiny finished run for the evaluation tests (phantom fixtures live in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_run(phantom_data, tiny_config, tmp_path_factory):

    """A finished 2-epoch small_cnn run on phantoms (the model is weak; the tests check bookkeeping)."""
    import dataclasses

    from covidct.train import train

    cfg = tiny_config(epochs=2, max_steps_per_epoch=3)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="small_cnn"))
    return train(cfg, run_dir=tmp_path_factory.mktemp("runs") / "tiny", data=phantom_data, progress=False)
