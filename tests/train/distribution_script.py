"""Subprocess body of tests/train/test_distribution.py: tiny fits, one device vs data-parallel, to an .npz file.

``python distribution_script.py MODE OUT``:

- ``jax``: two fits in this process, ``off`` (device 0 alone) then ``data_parallel`` over every device
  (``XLA_FLAGS=--xla_force_host_platform_device_count=2``, set by the test before JAX starts), each
  also as a tiny ``covidct.train.trainer.train`` run (``run_<setting>_*``);
- ``jax-processes``: the ``data_parallel`` fit only, as one process of the job in the COVIDCT_* variables;
- ``tf``: two fits, ``off`` then ``MirroredStrategy`` over 2 logical CPU devices;
- ``jax-resume``: a ``data_parallel`` ``covidct.train`` run with augmentation (threaded input pipeline) on 2
  devices, uninterrupted and interrupted after epoch 1 then resumed (``resume_<run>_*``).

Each fit writes its per-step losses, final weights and the replicas the engine itself ran on
(``<setting>_losses``, ``<setting>_w<i>``, ``<setting>_engine_replicas``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

STEPS, GLOBAL_BATCH, SHAPE = 6, 8, (8, 8, 1)


def _engine_replicas(model) -> int:
    """Devices the engine itself runs the step on (not the plan's count): a check that it is distributed."""
    import keras

    if keras.backend.backend() == "jax":
        return len(model.trainable_variables[0].value.sharding.device_set)
    return int(model.distribute_strategy.num_replicas_in_sync)


def fit(setting: str) -> dict:
    """Six Adam steps of a tiny conv net on fixed random data, global batch 8."""
    import keras

    from covidct.train.distribution import distributed, is_primary_process, process_rows, resolve_distribution

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(STEPS * GLOBAL_BATCH, *SHAPE)).astype("float32")
    labels = (images.mean(axis=(1, 2, 3)) > 0).astype("int32")
    plan = resolve_distribution(setting, GLOBAL_BATCH)
    with distributed(plan):
        layers = [keras.Input(SHAPE), keras.layers.Conv2D(4, 3, padding="same"), keras.layers.ReLU()]
        if keras.backend.backend() == "jax":  # BatchNorm over the global batch: the same as one device
            layers.append(keras.layers.BatchNormalization())
        layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]
        model = keras.Sequential(layers)
        model.compile(optimizer=keras.optimizers.Adam(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses = []
        for step in range(STEPS):
            rows = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
            x, y = process_rows((images[rows], labels[rows]), plan)
            losses.append(float(np.asarray(model.train_on_batch(x, y))))
        out = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
        out.update(losses=np.asarray(losses), engine_replicas=_engine_replicas(model), replicas=plan.replicas,
                   processes=plan.processes, process_id=plan.process_id, primary=is_primary_process())
    return {f"{setting}_{key}": value for key, value in out.items()}


def fit_run(setting: str, folder: str) -> dict:
    """``covidct.train.trainer.train`` of a tiny phantom run (2 epochs of 4 steps) with this distribution."""
    import keras
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import make_tiny_config, phantom_arrays

    import covidct.models.simple_cnn  # noqa: F401  (registers simple_cnn)
    from covidct.train.data import data_from_arrays
    from covidct.train.trainer import train

    images, manifest = phantom_arrays(n=300, size=32)
    cfg = make_tiny_config(batch_size=8, distribution=setting, drop_last="on", bn_recalibration=16,
                           max_steps_per_epoch=4)
    run = train(cfg, run_dir=Path(folder) / setting, data=data_from_arrays(images, manifest, source="phantom"),
                progress=False)
    model = keras.models.load_model(run / "model.keras", compile=False)
    history = pd.read_csv(run / "history.csv")
    out = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    out["losses"] = history[["loss", "val_loss"]].to_numpy()
    return {f"run_{setting}_{key}": value for key, value in out.items()}


def resume_runs(folder: str) -> dict:
    """A 3-epoch data-parallel run with augmentation, uninterrupted (``reference``) and crashed after epoch 1 then
    resumed (``resumed``): history, weights and the files each run folder holds."""
    import keras
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import make_tiny_config, phantom_arrays

    import covidct.models.simple_cnn  # noqa: F401  (registers simple_cnn)
    from covidct.errors import CovidctError
    from covidct.train import loop
    from covidct.train.data import data_from_arrays
    from covidct.train.distribution import is_primary_process
    from covidct.train.trainer import run_status, train

    images, manifest = phantom_arrays(n=300, size=32)
    data = data_from_arrays(images, manifest, source="phantom")
    cfg = make_tiny_config(epochs=3, batch_size=8, distribution="data_parallel", drop_last="on", bn_recalibration=16,
                           max_steps_per_epoch=3, augmentation="stage", input_pipeline="threaded")
    out = {"resume_primary": is_primary_process()}
    reference = train(cfg, run_dir=Path(folder) / "reference", data=data, progress=False)
    original = loop.Trainer.end_epoch

    def crash(self, epoch, logs, seconds):
        original(self, epoch, logs, seconds)
        if epoch == 0:
            raise RuntimeError("simulated crash")

    loop.Trainer.end_epoch = crash
    try:
        train(cfg, run_dir=Path(folder) / "resumed", data=data, progress=False)
    except RuntimeError as error:
        out["resume_crashed"] = str(error) == "simulated crash"
    finally:
        loop.Trainer.end_epoch = original
    out["resume_status_after_crash"] = run_status(Path(folder) / "resumed")
    try:
        train(cfg, run_dir=Path(folder) / "resumed", data=data, progress=False)
        out["resume_refused_without_flag"] = False
    except CovidctError:
        out["resume_refused_without_flag"] = True
    resumed = train(cfg, run_dir=Path(folder) / "resumed", data=data, progress=False, resume=True)
    for name, run in (("reference", reference), ("resumed", resumed)):
        model = keras.models.load_model(run / "model.keras", compile=False)
        history = pd.read_csv(run / "history.csv")
        out.update({f"resume_{name}_w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())})
        out[f"resume_{name}_history"] = history[["epoch", "loss", "val_loss", "val_auc"]].to_numpy()
        out[f"resume_{name}_files"] = np.asarray(sorted(p.name for p in run.iterdir()))
    return out


def main(mode: str, out: str) -> None:
    if mode == "jax-resume":
        np.savez(out, **resume_runs(str(Path(out).parent)))
        return
    if mode == "tf":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    settings = ["data_parallel"] if mode == "jax-processes" else ["off", "data_parallel"]
    results = {}
    for setting in settings:
        results.update(fit(setting))
        if mode == "jax":
            results.update(fit_run(setting, str(Path(out).parent)))
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
