"""Data-parallel training (covidct.train.distribution): the same optimizer steps on 1 and on 2 devices.

Each engine runs in a fresh subprocess (``distribution_script.py``): JAX reads ``XLA_FLAGS`` and the
process-job variables when it starts, TensorFlow fixes its logical devices before first use.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.train.distribution import (
    DistributionPlan,
    cluster_from_env,
    process_rows,
    resolve_distribution,
    scaled_learning_rate,
)

SCRIPT = Path(__file__).with_name("distribution_script.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def _env(backend: str, **extra) -> dict:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("COVIDCT_COORDINATOR", "COVIDCT_NUM_PROC", "COVIDCT_PROCESS", "SLURM_", "XLA_FLAGS"))}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}",
               **extra)
    if backend == "jax":
        env.update(JAX_PLATFORMS="cpu")
    return env


def _start(mode: str, out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), mode, str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 240) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]


def _weights(result, setting: str) -> list:
    keys = sorted((k for k in result.files if k.startswith(f"{setting}_w")), key=lambda k: int(k.rsplit("w", 1)[1]))
    return [result[k] for k in keys]


def _assert_same_fit(result, other, setting: str, other_setting: str, atol: float) -> None:
    np.testing.assert_allclose(result[f"{setting}_losses"], other[f"{other_setting}_losses"], rtol=1e-5, atol=atol)
    mine, theirs = _weights(result, setting), _weights(other, other_setting)
    assert len(mine) == len(theirs) > 0
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)


@pytest.fixture(scope="module")
def jax_two_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax") / "two_devices.npz"
    env = _env("jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    _finish(_start("jax", out, env))
    return np.load(out)


def test_jax_data_parallel_on_two_devices_takes_the_steps_of_one(jax_two_devices):
    result = jax_two_devices
    assert int(result["off_engine_replicas"]) == 1 and int(result["data_parallel_engine_replicas"]) == 2
    assert int(result["data_parallel_replicas"]) == 2
    _assert_same_fit(result, result, "data_parallel", "off", atol=1e-5)
    assert result["off_losses"][0] != result["off_losses"][-1]  # it did train


@pytest.mark.slow
def test_the_trainer_fits_the_same_run_data_parallel(jax_two_devices):
    """``training.distribution: data_parallel`` through covidct's trainer (fit, BN recalibration, validation,
    checkpoint): the same history and checkpoint as ``off``."""
    _assert_same_fit(jax_two_devices, jax_two_devices, "run_data_parallel", "run_off", atol=1e-5)
    assert jax_two_devices["run_off_losses"].shape == (2, 2)


@pytest.mark.slow
def test_two_jax_processes_on_loopback_agree_with_each_other_and_with_one(jax_two_devices, tmp_path):
    with socket.socket() as probe:  # a free loopback port for the coordinator
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outs = [tmp_path / f"process_{k}.npz" for k in range(2)]
    processes = [
        _start("jax-processes", outs[k], _env("jax", COVIDCT_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                              COVIDCT_NUM_PROCESSES="2", COVIDCT_PROCESS_ID=str(k)))
        for k in range(2)
    ]
    try:
        for process in processes:
            _finish(process)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    first, second = (np.load(out) for out in outs)
    assert [int(r["data_parallel_process_id"]) for r in (first, second)] == [0, 1]
    assert [bool(r["data_parallel_primary"]) for r in (first, second)] == [True, False]  # only process 0 writes
    assert int(first["data_parallel_processes"]) == 2 and int(first["data_parallel_engine_replicas"]) == 2
    for a, b in zip(_weights(first, "data_parallel"), _weights(second, "data_parallel")):
        np.testing.assert_array_equal(a, b)  # one program over both processes: bit-identical replicas
    np.testing.assert_array_equal(first["data_parallel_losses"], second["data_parallel_losses"])
    _assert_same_fit(first, jax_two_devices, "data_parallel", "off", atol=1e-5)


@pytest.mark.slow
def test_an_interrupted_data_parallel_run_resumes_to_the_uninterrupted_result(tmp_path):
    """2 JAX devices, augmentation on the threaded input pipeline: crashed after epoch 1 and resumed, the run ends
    with the history and weights of the uninterrupted run, and the same files."""
    out = tmp_path / "resume.npz"
    _finish(_start("jax-resume", out, _env("jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")))
    result = np.load(out)
    assert bool(result["resume_primary"]) and bool(result["resume_crashed"])
    assert str(result["resume_status_after_crash"]) == "interrupted" and bool(result["resume_refused_without_flag"])
    reference, resumed = result["resume_reference_history"], result["resume_resumed_history"]
    assert reference.shape == resumed.shape == (3, 4) and reference[0, 1] != reference[-1, 1]
    np.testing.assert_allclose(resumed, reference, rtol=1e-5, atol=1e-6)
    _assert_same_fit_weights(result, "resume_reference", "resume_resumed")
    assert result["resume_reference_files"].tolist() == result["resume_resumed_files"].tolist()


def _assert_same_fit_weights(result, setting: str, other: str) -> None:
    mine, theirs = _weights(result, setting), _weights(result, other)
    assert len(mine) == len(theirs) > 0
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tensorflow_mirrored_strategy_on_two_logical_cpus_takes_the_steps_of_one(tmp_path):
    out = tmp_path / "tf.npz"
    _finish(_start("tf", out, _env("tensorflow")))
    result = np.load(out)
    assert int(result["off_engine_replicas"]) == 1 and int(result["data_parallel_engine_replicas"]) == 2
    _assert_same_fit(result, result, "data_parallel", "off", atol=1e-5)


def test_plans_and_settings():
    plan = resolve_distribution("off", 32, backend="tensorflow")
    assert (plan.setting, plan.replicas, plan.per_replica_batch) == ("off", 1, 32)
    with pytest.raises(CovidctError, match="unknown setting .data-parallel.. Did you mean: data_parallel"):
        resolve_distribution("data-parallel", 32)
    assert scaled_learning_rate(1e-3, 32, 256) == pytest.approx(8e-3)


def test_process_rows_gives_each_process_its_slice_of_the_global_batch():
    x, y = np.arange(8)[:, None] * np.ones((1, 3)), np.arange(8)
    second = DistributionPlan("data_parallel", "jax", replicas=4, processes=2, process_id=1, global_batch=8)
    bx, by = process_rows((x, y), second)
    np.testing.assert_array_equal(by, [4, 5, 6, 7])
    assert bx.shape == (4, 3) and not second.is_primary and second.per_replica_batch == 2
    assert process_rows({"image": x}, second)["image"].shape == (4, 3)
    with pytest.raises(CovidctError, match="every batch must hold the global batch"):
        process_rows(np.arange(6), second)


def test_cluster_from_env_reads_covidct_then_slurm_variables():
    assert cluster_from_env({}) is None
    assert cluster_from_env({"COVIDCT_COORDINATOR_ADDRESS": "h:1234", "COVIDCT_NUM_PROCESSES": "4",
                             "COVIDCT_PROCESS_ID": "3"}) == {"coordinator_address": "h:1234", "num_processes": 4,
                                                             "process_id": 3}
    assert cluster_from_env({"SLURM_NTASKS": "8", "SLURM_PROCID": "5"}) == {"slurm": True, "num_processes": 8,
                                                                            "process_id": 5}
    assert cluster_from_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    with pytest.raises(CovidctError, match="COVIDCT_PROCESS_ID must be a non-negative integer"):
        cluster_from_env({"COVIDCT_COORDINATOR_ADDRESS": "h:1", "COVIDCT_NUM_PROCESSES": "2"})
    with pytest.raises(CovidctError, match="COVIDCT_PROCESS_ID=2 must be below COVIDCT_NUM_PROCESSES=2"):
        cluster_from_env({"COVIDCT_COORDINATOR_ADDRESS": "h:1", "COVIDCT_NUM_PROCESSES": "2", "COVIDCT_PROCESS_ID": "2"})
