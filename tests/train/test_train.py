"""train(cfg): determinism, resume after a crash, NaN loss, refusing to clobber, full disk, bad splits."""

from __future__ import annotations

import dataclasses
import errno
import json

import numpy as np
import pandas as pd
import pytest

from covidct.errors import CovidctError
from covidct.train import build as build_module
from covidct.train import loop as loop_module
from covidct.train import state as state_module
from covidct.train import train
from covidct.train import trainer as trainer_module
from covidct.train.data import data_from_arrays


def _history(run_dir):
    return pd.read_csv(run_dir / "history.csv").drop(columns=["seconds"])


def test_same_seed_same_numbers(phantom_data, tmp_path, tiny_config):
    cfg = tiny_config(max_steps_per_epoch=3)
    a = train(cfg, run_dir=tmp_path / "a", data=phantom_data, progress=False)
    b = train(cfg, run_dir=tmp_path / "b", data=phantom_data, progress=False)
    pd.testing.assert_frame_equal(_history(a), _history(b), rtol=1e-6)
    info = json.loads((a / "run.json").read_text())
    assert info["status"] == "finished" and info["class_names"] == ["COV", "Normal", "OtherPneumonia"]
    assert info["selection_split"] == "val" and info["stage"] == "original" and info["size"] == 48
    for name in ("config.yaml", "model.keras", "history.csv", "run_report.md"):
        assert (a / name).is_file(), name
    assert not (a / "train_state.npz").exists()
    assert "selected on the **validation** split" in (a / "run_report.md").read_text()


def test_resume_after_crash_gives_the_uninterrupted_result(phantom_data, tmp_path, tiny_config, crash_after_epoch):
    # small_cnn has BatchNorm and Dropout; augmentation and class weights exercise every random draw.
    cfg = dataclasses.replace(
        tiny_config(epochs=3, max_steps_per_epoch=2, augmentation="stage", class_weight="balanced"),
        model=dataclasses.replace(tiny_config().model, name="small_cnn"),
    )
    reference = train(cfg, run_dir=tmp_path / "reference", data=phantom_data, progress=False)

    with crash_after_epoch(1):
        train(cfg, run_dir=tmp_path / "resumed", data=phantom_data, progress=False)
    assert trainer_module.run_status(tmp_path / "resumed") == "interrupted"
    with pytest.raises(CovidctError, match="--resume"):
        train(cfg, run_dir=tmp_path / "resumed", data=phantom_data, progress=False)
    resumed = train(cfg, run_dir=tmp_path / "resumed", data=phantom_data, progress=False, resume=True)
    pd.testing.assert_frame_equal(_history(reference), _history(resumed), rtol=1e-5)
    import keras

    w_ref = keras.saving.load_model(reference / "model.keras", compile=False).get_weights()
    w_res = keras.saving.load_model(resumed / "model.keras", compile=False).get_weights()
    for x, y in zip(w_ref, w_res):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_finished_run_is_not_overwritten(phantom_data, tmp_path, tiny_config):
    cfg = tiny_config(epochs=1, max_steps_per_epoch=1)
    run = train(cfg, run_dir=tmp_path / "run", data=phantom_data, progress=False)
    with pytest.raises(CovidctError, match="finished run"):
        train(cfg, run_dir=run, data=phantom_data, progress=False)
    (run / "marker").write_text("old")
    train(cfg, run_dir=run, data=phantom_data, progress=False, overwrite=True)
    assert not (run / "marker").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(phantom_data, tmp_path, monkeypatch, tiny_config):
    original = loop_module.Trainer.end_epoch

    def poison_after_first_epoch(self, epoch, logs, seconds):
        original(self, epoch, logs, seconds)
        if epoch == 0:
            # A NaN weight makes every following loss NaN through the real loss computation.
            kernel = self.model.get_layer("logits").kernel
            kernel.assign(np.full(tuple(kernel.shape), np.nan, dtype="float32"))

    monkeypatch.setattr(loop_module.Trainer, "end_epoch", poison_after_first_epoch)
    run_dir = tmp_path / "nan"
    with pytest.raises(CovidctError, match="NaN in epoch 2.*keeps the best epoch \\(1\\)"):
        train(tiny_config(epochs=3, max_steps_per_epoch=2), run_dir=run_dir, data=phantom_data, progress=False)
    import keras

    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "nan"
    assert len(pd.read_csv(run_dir / "history.csv")) == 1


def test_disk_full_leaves_no_half_written_model(phantom_data, tmp_path, monkeypatch, tiny_config):
    def full_disk(model, path):
        with open(path, "wb") as stream:
            stream.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    # An existing model survives a failed save byte for byte.
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    target = tmp_path / "keep" / "model.keras"
    state_module.save_model_atomic(model, target)
    before = target.read_bytes()
    monkeypatch.setattr(state_module, "save_model_file", full_disk)
    with pytest.raises(CovidctError, match="model.keras: disk full"):
        state_module.save_model_atomic(model, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.keras"]
    # In a training run: a clear error that promises no --resume (nothing was saved), and no folder left behind.
    run_dir = tmp_path / "full"
    with pytest.raises(CovidctError, match="disk full.*Nothing resumable was saved") as caught:
        train(tiny_config(epochs=1, max_steps_per_epoch=1), run_dir=run_dir, data=phantom_data, progress=False)
    assert "--resume" not in str(caught.value)
    assert not run_dir.exists()


def test_bad_splits_stop_with_a_message(phantom_data, tmp_path, tiny_config):
    manifest = phantom_data.manifest.copy()
    one_class = data_from_arrays(phantom_data.images, manifest.assign(label="COV"))
    with pytest.raises(CovidctError, match="only one class"):
        train(tiny_config(), run_dir=tmp_path / "one", data=one_class, progress=False)
    no_val_other = manifest.copy()
    no_val_other.loc[(no_val_other["split"] == "val") & (no_val_other["label"] == "OtherPneumonia"), "split"] = "test"
    with pytest.raises(CovidctError, match=r"\['OtherPneumonia'\] have no images in the 'val' split"):
        train(tiny_config(), run_dir=tmp_path / "noval", data=data_from_arrays(phantom_data.images, no_val_other), progress=False)


def test_frozen_backbone_trains_only_the_head(phantom_data, tmp_path, tiny_config):
    import keras

    cfg = tiny_config(epochs=1, max_steps_per_epoch=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, freeze="frozen"))
    run = train(cfg, run_dir=tmp_path / "frozen", data=phantom_data, progress=False)
    keras.utils.set_random_seed(cfg.training.seed)
    initial = build_module.build_configured_model(cfg, phantom_data.images, 3)
    trained = keras.saving.load_model(run / "model.keras", compile=False)
    np.testing.assert_array_equal(initial.get_layer("conv1").get_weights()[0], trained.get_layer("conv1").get_weights()[0])
    assert not np.allclose(initial.get_layer("logits").get_weights()[0], trained.get_layer("logits").get_weights()[0])


def test_checkpoint_holds_batch_norm_statistics_of_clean_training_rows(phantom_data, tmp_path, tiny_config):
    import keras

    from covidct.train.batchnorm import recalibration_rows

    cfg = tiny_config(epochs=1, max_steps_per_epoch=2, bn_recalibration=40, augmentation={"flip": True})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="small_cnn"))  # BN and dropout
    run = train(cfg, run_dir=tmp_path / "r", data=phantom_data, progress=False)
    model = keras.saving.load_model(run / "model.keras", compile=False)
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    rows = recalibration_rows(phantom_data.indices("train"), 40, seed=cfg.training.seed)
    assert len(rows) == 40
    # Independent computation: the layer's inputs in inference mode (no dropout before it), per batch of
    # batch_size rows, biased mean/variance per channel, averaged with the batch sizes as weights.
    features = keras.Model(model.inputs, bn.input)
    means, variances, sizes = [], [], []
    step = 128  # recalibration batches: max(training batch, min(128, 2**21 // values per image)) = 128 at 48x48
    for start in range(0, len(rows), step):
        batch = phantom_data.images[rows[start : start + step]].astype("float32")
        out = keras.ops.convert_to_numpy(features(batch, training=False)).astype("float64")
        axes = tuple(range(out.ndim - 1))
        means.append(out.mean(axis=axes))
        variances.append(out.var(axis=axes))
        sizes.append(len(batch))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), np.average(means, axis=0, weights=sizes), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), np.average(variances, axis=0, weights=sizes), rtol=1e-4, atol=1e-6)


def test_monitor_last_keeps_the_final_epoch_and_never_stops_early(phantom_data, tmp_path, monkeypatch, tiny_config):
    saved_at = []
    real_save = loop_module.save_model_atomic

    def counting_save(model, path):
        saved_at.append(path)
        real_save(model, path)

    # patience 1 would stop a run on a flat validation score after epoch 2; with monitor last it is ignored.
    cfg = tiny_config(epochs=3, max_steps_per_epoch=2, monitor="last", early_stopping_patience=1, learning_rate=1e-9)
    monkeypatch.setattr(loop_module, "save_model_atomic", counting_save)
    run = train(cfg, run_dir=tmp_path / "last", data=phantom_data, progress=False)
    info = json.loads((run / "run.json").read_text())
    assert (info["monitor"], info["best_epoch"], info["epochs_run"], info["stopped_early"]) == ("last", 3, 3, False)
    assert len(saved_at) == 3  # every epoch replaced the checkpoint
    history = _history(run)
    assert len(history) == 3 and "val_auc" in history.columns  # validation still scored, for reading
    # the premise: epoch 2 did not improve on epoch 1, so val_macro_f1 with patience 1 would have stopped here
    assert history["val_macro_f1"][1] <= history["val_macro_f1"][0]
    assert info["best_score"] is None  # nothing selected: no selection score
    assert "nothing was selected on validation" in (run / "run_report.md").read_text()
    assert info["selection_split"] == "none"
    from covidct.evaluate import evaluate_run

    result = evaluate_run(run, split="test", n_bootstrap=0, figures=False, data=phantom_data)
    assert result["selection"]["split"] == "none" and result["selection"]["monitor"] == "last"


def test_validation_freq_skips_validation_but_not_the_final_model(phantom_data, tmp_path, monkeypatch, tiny_config):
    """``training.validation_freq``: with ``monitor: last`` the same final model (weights and recalibrated
    BatchNorm statistics) with fewer validation passes; with a selection monitor only validated epochs compete."""
    import keras

    passes = []
    real_recalibrate = loop_module.recalibrate_batch_norm

    def counting_recalibrate(model, batches):
        passes.append(1)
        return real_recalibrate(model, batches)

    monkeypatch.setattr(loop_module, "recalibrate_batch_norm", counting_recalibrate)
    base = tiny_config(epochs=5, max_steps_per_epoch=2, monitor="last", augmentation="stage", bn_recalibration=40)
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, name="small_cnn"))  # BN and dropout
    every = train(base, run_dir=tmp_path / "every", data=phantom_data, progress=False)
    assert len(passes) == 5
    passes.clear()
    cfg = dataclasses.replace(base, training=dataclasses.replace(base.training, validation_freq=3))
    sparse = train(cfg, run_dir=tmp_path / "sparse", data=phantom_data, progress=False)
    assert len(passes) == 2  # epochs 3 and 5 (the last epoch is always validated)
    a, b = _history(every), _history(sparse)
    assert list(b.columns) == list(a.columns) and list(b["epoch"]) == [1, 2, 3, 4, 5]
    assert b["val_auc"].notna().tolist() == [False, False, True, False, True]
    pd.testing.assert_series_equal(a["loss"], b["loss"], rtol=1e-6)  # validation never changes training
    pd.testing.assert_frame_equal(a.iloc[[2, 4]], b.iloc[[2, 4]], rtol=1e-6)
    for x, y in zip(keras.saving.load_model(every / "model.keras", compile=False).get_weights(),
                    keras.saving.load_model(sparse / "model.keras", compile=False).get_weights(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)  # BatchNorm statistics included
    assert json.loads((sparse / "run.json").read_text())["best_epoch"] == 5

    selecting = tiny_config(epochs=4, max_steps_per_epoch=2, validation_freq=2, early_stopping_patience=0)
    run = train(selecting, run_dir=tmp_path / "selecting", data=phantom_data, progress=False)
    assert json.loads((run / "run.json").read_text())["best_epoch"] in (2, 4)
    from covidct.evaluate.plots import plot_training_curves

    figure = plot_training_curves(pd.read_csv(run / "history.csv"))
    lines = {line.get_label(): line for axis in figure.axes for line in axis.get_lines()}
    assert list(lines["val_auc"].get_xdata()) == [2, 4] and list(lines["loss"].get_xdata()) == [1, 2, 3, 4]
    with pytest.raises(CovidctError, match="validation_freq must be an integer >= 1"):
        from covidct.config import validate_config

        validate_config(dataclasses.replace(selecting, training=dataclasses.replace(selecting.training, validation_freq=0)))


def test_resuming_with_another_config_is_refused(phantom_data, tmp_path, tiny_config):
    from covidct.config import dump_config
    from covidct.runs import mark_run_dir

    run_dir = mark_run_dir(tmp_path / "interrupted")  # a run folder covidct made (its marker)
    dump_config(tiny_config(epochs=2), run_dir / "config.yaml")
    (run_dir / "run.json").write_text(json.dumps({"status": "running"}))  # stopped between units: interrupted
    with pytest.raises(CovidctError, match=r"another config \(training.epochs: 2 -> 3\)"):
        train(tiny_config(epochs=3), run_dir=run_dir, resume=True, data=phantom_data, progress=False)
    assert (run_dir / "config.yaml").is_file()  # nothing deleted
    # A config saved before a key existed resumes when the key has its default, and not when it is changed.
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["training"]["validation_freq"]  # written by a covidct without training.validation_freq
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(CovidctError, match=r"another config \(training.validation_freq: 1 -> 2\)"):
        train(tiny_config(epochs=2, validation_freq=2), run_dir=run_dir, resume=True, data=phantom_data, progress=False)
    # Same settings: the check passes; no resume state (it stopped inside epoch 1), so it trains from epoch 1.
    resumed = train(tiny_config(epochs=2), run_dir=run_dir, resume=True, data=phantom_data, progress=False)
    assert json.loads((resumed / "run.json").read_text())["epochs_run"] == 2


def test_slow_state_writes_are_skipped_and_resume_replays_the_epochs(
    phantom_data, tmp_path, monkeypatch, tiny_config, crash_after_epoch
):
    import time

    cfg = tiny_config(epochs=4, max_steps_per_epoch=1)
    reference = train(cfg, run_dir=tmp_path / "reference", data=phantom_data, progress=False)
    real_save, written = loop_module.save_train_state, []

    def slow_save(path, model, optimizer, state):  # a write far slower than an epoch (large model, fast GPU)
        time.sleep(0.05)
        written.append(state["epochs_done"])
        return real_save(path, model, optimizer, state)

    monkeypatch.setattr(loop_module, "save_train_state", slow_save)
    monkeypatch.setattr(loop_module.Trainer, "STATE_SAVE_SHARE", 10_000.0)  # next write after 500 s
    with crash_after_epoch(2):
        train(cfg, run_dir=tmp_path / "resumed", data=phantom_data, progress=False)
    assert written == [1]  # epoch 1 is always written; epochs 2-3 were skipped
    resumed = train(cfg, run_dir=tmp_path / "resumed", data=phantom_data, progress=False, resume=True)
    assert written == [1, 2]  # resumed after epoch 1: the first epoch of the resumed run is written again
    pd.testing.assert_frame_equal(_history(reference), _history(resumed), rtol=1e-5)
