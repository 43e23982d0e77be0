"""Data-parallel training with the frameworks' own engines: ``training.distribution``.

Settings (``training.distribution`` in a run config):

- ``off``: one device, as before.
- ``data_parallel``: every local device of the backend takes a slice of each batch. JAX:
  ``keras.distribution.DataParallel`` over ``jax.devices()`` (the accelerators, else the CPU devices,
  e.g. the virtual ones of ``XLA_FLAGS=--xla_force_host_platform_device_count=N``); TensorFlow:
  ``tf.distribute.MirroredStrategy`` over the logical GPUs, else the logical CPUs.
- ``auto`` (default): ``data_parallel`` when there are several local accelerators (GPUs/TPUs) or several
  processes, ``off`` otherwise (one GPU, or a CPU).

**Global batch.** ``training.batch_size`` is the *global* batch: the images of one optimizer step summed
over every device and process. Each device sees ``batch_size / replicas`` of them (the division must be
exact) and the gradients are averaged over the global batch, so a run with the same ``batch_size`` on 1
or N devices takes the same optimizer steps (equal within float tolerance: tests/train/test_distribution.py).

**Learning-rate rule.** covidct never rescales the learning rate by itself: the same ``batch_size`` needs the
same ``learning_rate``. To use more devices for a *larger* global batch, scale the learning rate linearly
(Goyal et al. 2017, arXiv:1706.02677): ``learning_rate = base_lr * batch_size / base_batch``
(``scaled_learning_rate``), with a warm-up at large factors; re-check the validation score, the shipped
recipes were tuned at their own batch size.

**BatchNormalization.** On JAX, ``DataParallel`` runs one program over a batch sharded across devices, so
BatchNormalization's batch mean and variance are those of the global batch (same as one device). With
``MirroredStrategy`` each replica normalises with the statistics of its own slice (Keras'
``BatchNormalization(synchronized=False)``): the same as one device only when the per-replica batch is the
batch. The recalibration pass before validation (``training.bn_recalibration``) replaces the running
statistics by the average over training samples either way, so the *evaluated* model does not depend on
the per-replica batch.

**Several processes (hosts).** JAX only: ``jax.distributed.initialize`` is called once, from either

- ``COVIDCT_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``COVIDCT_NUM_PROCESSES`` and
  ``COVIDCT_PROCESS_ID`` (a launcher, or by hand), or
- SLURM (``srun``, one task per host or per GPU): ``SLURM_NTASKS > 1`` and no ``COVIDCT_*`` address;
  ``jax.distributed.initialize()`` then reads ``SLURM_JOB_NODELIST``, ``SLURM_NTASKS`` and
  ``SLURM_PROCID`` itself.

Every process feeds its own rows of each global batch (``process_rows``: process k takes rows
``[k*b, (k+1)*b)`` of the batch, ``b = batch_size / processes``) and only process 0 writes files
(``is_primary_process``). The training loop of ``covidct train`` is single-host (its validation and
checkpointing run on one host's arrays); several processes are supported through this module's
functions in a custom ``model.fit`` loop (tested on loopback), and refused by ``covidct train`` with a
message. TensorFlow's multi-worker engine, ``tf.distribute.MultiWorkerMirroredStrategy`` (``TF_CONFIG``
per worker), is documented in docs/scaling.md, not wired.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import keras
import numpy as np

from covidct.errors import CovidctError, did_you_mean

log = logging.getLogger(__name__)

DISTRIBUTION_SETTINGS = ("auto", "off", "data_parallel")

#: Environment variables of a launcher (the SLURM ones are read by JAX itself).
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
    "COVIDCT_COORDINATOR_ADDRESS", "COVIDCT_NUM_PROCESSES", "COVIDCT_PROCESS_ID")


@dataclass(frozen=True)
class DistributionPlan:
    """How one run is spread over devices and processes.

    Attributes:
        setting: the resolved setting, ``"off"`` or ``"data_parallel"``.
        backend: the Keras backend.
        replicas: devices that each take a slice of the global batch (all processes together).
        processes: processes (hosts) in the job.
        process_id: this process's index (0: the one that writes files).
        global_batch: images per optimizer step over all devices (``training.batch_size``).
    """
    setting: str
    backend: str
    replicas: int = 1
    processes: int = 1
    process_id: int = 0
    global_batch: int = 1

    @property
    def per_replica_batch(self) -> int:
        """Images each device sees per step."""
        return self.global_batch // max(self.replicas, 1)

    @property
    def per_process_batch(self) -> int:
        """Images each process feeds per step."""
        return self.global_batch // max(self.processes, 1)

    @property
    def is_primary(self) -> bool:
        """Whether this process writes the run folder."""
        return self.process_id == 0


def scaled_learning_rate(base_learning_rate: float, base_batch: int, batch: int) -> float:
    """The linear scaling rule: ``base_learning_rate * batch / base_batch``.

    Args:
        base_learning_rate: the learning rate tuned at ``base_batch`` (a recipe's).
        base_batch: the global batch it was tuned at.
        batch: the new global batch.

    Returns:
        The learning rate for ``batch`` (use a warm-up when the factor is large).
    """
    if base_batch <= 0 or batch <= 0:
        raise CovidctError(f"scaled_learning_rate: batch sizes must be positive, got {base_batch} and {batch}.")
    return float(base_learning_rate) * batch / base_batch


def cluster_from_env(env=None) -> dict | None:
    """The multi-process job this process belongs to, from the environment (None: a single process).

    Returns:
        ``{"coordinator_address", "num_processes", "process_id"}`` from the ``COVIDCT_*`` variables,
        ``{"slurm": True, "num_processes", "process_id"}`` under ``srun`` with several tasks, or None.

    Raises:
        CovidctError: a ``COVIDCT_*`` variable is missing or not an integer.
    """
    env = os.environ if env is None else env
    if env.get(ENV_COORDINATOR):
        values = {}
        for name in (ENV_NUM_PROCESSES, ENV_PROCESS_ID):
            text = env.get(name, "")
            if not text.strip().isdigit():
                raise CovidctError(f"{ENV_COORDINATOR} is set, so {name} must be a non-negative integer, got "
                                   f"{text!r}. Set {ENV_NUM_PROCESSES} (processes in the job) and {ENV_PROCESS_ID} "
                                   "(0 .. count-1) for every process, or unset the address.")
            values[name] = int(text)
        count, index = values[ENV_NUM_PROCESSES], values[ENV_PROCESS_ID]
        if count < 1 or index >= count:
            raise CovidctError(f"{ENV_PROCESS_ID}={index} must be below {ENV_NUM_PROCESSES}={count}.")
        return {"coordinator_address": env[ENV_COORDINATOR], "num_processes": count, "process_id": index}
    tasks = env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS")
    if tasks and tasks.isdigit() and int(tasks) > 1 and env.get("SLURM_PROCID", "").isdigit():
        return {"slurm": True, "num_processes": int(tasks), "process_id": int(env["SLURM_PROCID"])}
    return None


def initialize_processes(env=None) -> tuple[int, int]:
    """Join the multi-process JAX job described by the environment (once per process).

    Returns:
        (processes, this process's id); (1, 0) without a job.

    Raises:
        CovidctError: a job is described but the backend is not JAX, or the coordinator cannot be reached.
    """
    cluster = cluster_from_env(env)
    if cluster is None:
        return 1, 0

    if keras.backend.backend() != "jax":
        raise CovidctError(
            f"Several processes ({cluster['num_processes']}) are configured in the environment, but multi-process "
            f"training is wired for the JAX backend only (KERAS_BACKEND={keras.backend.backend()}). Use "
            "KERAS_BACKEND=jax, or unset the COVIDCT_*/SLURM task variables (docs/scaling.md: "
            "MultiWorkerMirroredStrategy for TensorFlow)."
        )
    import jax

    if jax.distributed.is_initialized():
        return jax.process_count(), jax.process_index()
    try:
        if cluster.get("slurm"):
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator_address=cluster["coordinator_address"],
                                       num_processes=cluster["num_processes"], process_id=cluster["process_id"])
    except (RuntimeError, ValueError) as error:
        raise CovidctError(
            f"jax.distributed.initialize failed for process {cluster['process_id']} of {cluster['num_processes']} "
            f"({cluster.get('coordinator_address', 'SLURM')}): {error}. Check that process 0 runs and that the "
            "coordinator address is reachable from every host."
        ) from error
    return jax.process_count(), jax.process_index()


def _local_devices(backend: str) -> tuple[list, bool]:
    """(devices to replicate over, whether they are accelerators) for the backend."""
    if backend == "jax":
        import jax

        devices = jax.devices()
        return devices, devices[0].platform != "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return [d.name for d in gpus], True
        return [d.name for d in tf.config.list_logical_devices("CPU")], False
    return [None], False


def resolve_distribution(setting: str, batch_size: int, backend: str | None = None, env=None) -> DistributionPlan:
    """Turn ``training.distribution`` into a plan for this machine (joining a multi-process job if any).

    Args:
        setting: ``auto``, ``off`` or ``data_parallel``.
        batch_size: the global batch (``training.batch_size``).
        backend: the Keras backend (default: the active one).
        env: the environment (default ``os.environ``).

    Returns:
        The ``DistributionPlan``.

    Raises:
        CovidctError: an unknown setting, a backend without a data-parallel engine, or a batch that does not
            divide over the replicas.
    """
    if setting not in DISTRIBUTION_SETTINGS:
        raise CovidctError(f"training.distribution: unknown setting {setting!r}.{did_you_mean(setting, DISTRIBUTION_SETTINGS)}"
                           f" Choose one of {', '.join(DISTRIBUTION_SETTINGS)}.")
    backend = backend or keras.backend.backend()
    if setting == "off":
        return DistributionPlan("off", backend, global_batch=int(batch_size))
    if backend not in ("jax", "tensorflow"):
        if setting == "data_parallel":
            raise CovidctError(f"training.distribution: data_parallel needs the jax or tensorflow backend, not {backend}.")
        return DistributionPlan("off", backend, global_batch=int(batch_size))
    if backend == "jax" or setting == "data_parallel":
        processes, process_id = initialize_processes(env)  # TensorFlow: raises when a job is configured
    else:
        processes, process_id = 1, 0
    devices, accelerators = _local_devices(backend)
    replicas = len(devices)  # JAX: jax.devices() lists the devices of every process
    wanted = setting == "data_parallel" or (accelerators and replicas > 1) or processes > 1
    if not wanted or replicas <= 1:
        return DistributionPlan("off", backend, global_batch=int(batch_size))
    if batch_size % replicas:
        raise CovidctError(
            f"training.batch_size {batch_size} does not divide over {replicas} devices: the global batch is split "
            f"evenly. Use a multiple of {replicas} (e.g. {replicas * max(batch_size // replicas, 1)}), or "
            "training.distribution: off."
        )
    return DistributionPlan("data_parallel", backend, replicas=replicas, processes=processes,
                            process_id=process_id, global_batch=int(batch_size))


@contextlib.contextmanager
def distributed(plan: DistributionPlan):
    """Build, compile and fit inside this block to run data-parallel by ``plan`` (nothing for ``off``).

    JAX: ``keras.distribution.set_distribution(DataParallel(...))``, the previous distribution restored on
    exit. TensorFlow: the ``MirroredStrategy`` scope (models and optimizers created inside are mirrored).

    Yields:
        The plan.
    """
    if plan.setting == "off":
        yield plan
        return

    if plan.backend == "jax":
        import jax

        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        log.info("Data-parallel (keras DataParallel) over %d device(s), %d process(es), global batch %d.",
                 plan.replicas, plan.processes, plan.global_batch)
        try:
            yield plan
        finally:
            keras.distribution.set_distribution(previous)
        return
    import tensorflow as tf

    devices, _ = _local_devices("tensorflow")
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    log.info("Data-parallel (tf.distribute.MirroredStrategy) over %s, global batch %d.", devices, plan.global_batch)
    with strategy.scope():
        yield plan


@contextlib.contextmanager
def training_distribution(training, backend: str | None = None):
    """``distributed(resolve_distribution(training.distribution, training.batch_size))`` for the trainer.

    ``covidct train`` fits on one host; a multi-process job is refused here with the way out.

    Args:
        training: the run's ``TrainingConfig``.
        backend: the Keras backend (default: the active one).

    Yields:
        The plan.
    """
    plan = resolve_distribution(getattr(training, "distribution", "off"), training.batch_size, backend)
    if plan.processes > 1:
        raise CovidctError(
            f"covidct train fits on one host; {plan.processes} processes are configured (COVIDCT_*/SLURM task "
            "variables). Run one process per host with all its devices (training.distribution: data_parallel), or "
            "drive model.fit yourself with covidct.train.distribution (docs/scaling.md)."
        )
    with distributed(plan) as active:
        yield active


def process_rows(batch, plan: DistributionPlan):
    """This process's rows of a global batch: ``[k*b, (k+1)*b)`` of every array (``b`` the per-process batch).

    Args:
        batch: an array, a dict of arrays, or a tuple/list of those (``(x, y[, sample_weight])``).
        plan: the plan (one process: the batch unchanged).

    Returns:
        The same structure holding only this process's rows.
    """
    if plan.processes <= 1:
        return batch
    size = plan.per_process_batch
    lo, hi = plan.process_id * size, (plan.process_id + 1) * size
    if isinstance(batch, dict):
        return {key: process_rows(value, plan) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(process_rows(value, plan) for value in batch)
    if batch is None:
        return None
    if len(batch) != plan.global_batch:
        raise CovidctError(f"A batch of {len(batch)} rows in a {plan.processes}-process run: every batch must hold the "
                           f"global batch ({plan.global_batch}); drop the last incomplete batch (training.drop_last: on).")
    return batch[lo:hi]


def variable_to_numpy(variable) -> np.ndarray:
    """A Keras variable's value as a NumPy array, also a scalar ``tf.distribute`` MirroredVariable.

    (``keras.ops.convert_to_numpy`` refuses the optimizer's scalar mirrored variables, e.g. its iteration.)
    """
    value = variable.value if hasattr(variable, "value") else variable
    try:
        return np.asarray(keras.ops.convert_to_numpy(value))
    except ValueError:
        if not hasattr(value, "numpy"):
            raise
        return np.asarray(value.numpy())


def is_primary_process() -> bool:
    """Whether this process writes files: True without a multi-process JAX job, else process 0 only."""
    try:
        import jax
    except ImportError:
        return True
    return not jax.distributed.is_initialized() or jax.process_index() == 0


__all__ = [
    "DISTRIBUTION_SETTINGS",
    "DistributionPlan",
    "cluster_from_env",
    "distributed",
    "initialize_processes",
    "is_primary_process",
    "process_rows",
    "resolve_distribution",
    "scaled_learning_rate",
    "training_distribution",
    "variable_to_numpy",
]
