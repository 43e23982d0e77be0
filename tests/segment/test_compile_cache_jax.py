"""The persistent XLA compilation cache on JAX (run with KERAS_BACKEND=jax pytest -m jax)."""

from __future__ import annotations

import json

import pytest
from test_segment_train import assert_same_folds  # same folder (pytest prepends it to sys.path)

from covidct.segment.train import train_segmenter
from covidct.train import runtime as trainer_module

pytestmark = pytest.mark.jax


@pytest.fixture
def jax_cache_settings():
    """Restore JAX's cache folder and threshold after the test (they are process-wide)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
    compilation_cache.reset_cache()


def test_a_second_identical_run_loads_every_program_from_the_cache(discs, tmp_path, tiny_segmenter, monkeypatch,
                                                                    jax_cache_settings):
    import jax

    folder = tmp_path / "xla"
    monkeypatch.setenv(trainer_module.COMPILATION_CACHE_ENV, str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # the tiny model compiles in < 1 s
    settings = dict(dataset="medseg", size=32, epochs=2, batch_size=4, learning_rate=1e-2, folds=2, rotation_deg=10)
    first = train_segmenter(tiny_segmenter, run_dir=tmp_path / "first", pairs=discs, fold=0, **settings)
    entries = sorted(p.name for p in folder.iterdir())
    names = " ".join(entries)
    assert "train_step" in names and "predict_step" in names  # the training and validation programs were kept
    second = train_segmenter(tiny_segmenter, run_dir=tmp_path / "second", pairs=discs, fold=0, **settings)
    assert sorted(p.name for p in folder.iterdir()) == entries  # nothing compiled that was not in the cache
    assert_same_folds(first, second, 1)  # a cached program computes the same numbers
    # run.json of a finished run names the cache
    train_segmenter(tiny_segmenter, run_dir=first, pairs=discs, resume=True, **settings)
    assert json.loads((first / "run.json").read_text())["compilation_cache"] == str(folder)


def test_the_cache_can_be_switched_off_and_respects_jax_own_setting(tmp_path, monkeypatch, jax_cache_settings):
    import jax

    monkeypatch.setenv(trainer_module.COMPILATION_CACHE_ENV, "off")
    jax.config.update("jax_compilation_cache_dir", None)
    assert trainer_module.enable_compilation_cache() is None and jax.config.jax_compilation_cache_dir is None
    monkeypatch.delenv(trainer_module.COMPILATION_CACHE_ENV)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))  # e.g. JAX_COMPILATION_CACHE_DIR
    assert trainer_module.enable_compilation_cache() == str(tmp_path / "mine")
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path / "covidct"))
    assert trainer_module.enable_compilation_cache() == str(tmp_path / "covidct" / "xla")
    assert (tmp_path / "covidct" / "xla").is_dir()
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(trainer_module.COMPILATION_CACHE_ENV, str(blocked / "xla"))
    assert trainer_module.enable_compilation_cache() is None  # a warning, never a failed run


def test_drop_last_auto_compiles_the_training_step_once(discs, tmp_path, tiny_segmenter, monkeypatch, caplog):
    """On JAX a last batch of another size compiles the step again; ``training.drop_last: auto`` leaves it out."""
    import logging

    import jax

    monkeypatch.setenv(trainer_module.COMPILATION_CACHE_ENV, "off")  # count compilations, not cache loads
    settings = dict(dataset="medseg", size=32, epochs=2, batch_size=4, learning_rate=1e-2, folds=2)
    saved = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    compiles = {}
    try:
        for setting in ("auto", "off"):
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                train_segmenter(tiny_segmenter, run_dir=tmp_path / setting, pairs=discs, fold=0, drop_last=setting,
                                **settings)
            compiles[setting] = sum("Compiling jit(train_step)" in r.getMessage() for r in caplog.records)
    finally:
        jax.config.update("jax_log_compiles", saved)
    train_rows = (tmp_path / "off" / "fold_0" / "split.csv").read_text().count(",train\n")
    assert train_rows % 4  # the fold's training part leaves an incomplete last batch
    assert compiles == {"auto": 1, "off": 2}
