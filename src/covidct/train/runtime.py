"""Runtime setup of a training run: GPUs, seeds and determinism, mixed precision, the XLA compilation cache.

Everything here depends on the active Keras backend only, never on the task: ``seed_everything`` (Python,
NumPy and the backend; TensorFlow CPU made deterministic), ``dtype_policy`` (``training.mixed_precision``),
``drop_last_batch`` (``training.drop_last``), ``enable_compilation_cache`` (JAX) and ``backend_info``
(what ``run.json`` records of them).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import keras

from covidct.config import RunConfig

log = logging.getLogger(__name__)


def gpu_names() -> list[str]:
    """The GPUs the active Keras backend sees, by name (empty: none, or a broken accelerator stack)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_physical_devices("GPU")]
        if backend == "jax":
            import jax

            return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        if backend == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # A broken accelerator stack means "no GPU", not a crash.
        return []
    return []


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU."""
    return bool(gpu_names())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the backend; on TensorFlow CPU also make ops deterministic."""
    keras.utils.set_random_seed(int(seed))
    if keras.backend.backend() == "tensorflow" and not gpu_available():
        import tensorflow as tf

        # Same config + seed on CPU must give the same numbers (a tested promise).
        tf.config.experimental.enable_op_determinism()


#: Environment variable: folder of the persistent XLA compilation cache on JAX ("off" disables it).
COMPILATION_CACHE_ENV = "COVIDCT_COMPILATION_CACHE"


def enable_compilation_cache() -> str | None:
    """On JAX, keep compiled XLA programs on disk so that a later fold, seed or run of the same model and shapes
    loads them instead of compiling again; returns the folder (None: not JAX, or switched off).

    A 256 px U-Net fold on an H200 spent 110-224 s in its first epoch, mostly compiling, and ~25 s in up to 79
    more (BENCHMARKS.md, infection segmentation); within one process every fold builds a new model and compiles again. The folder is
    ``$COVIDCT_COMPILATION_CACHE`` (``off`` disables), else the one JAX was given (``JAX_COMPILATION_CACHE_DIR``),
    else ``$COVIDCT_CACHE/xla`` (default ``.cache/covidct/xla``). JAX caches programs that took at least
    ``jax_persistent_cache_min_compile_time_secs`` (1 s) to compile, and a cached program computes the same
    numbers as a fresh one. The cache runs code: keep it in a folder only you can write to.
    """
    if keras.backend.backend() != "jax":
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    setting = os.environ.get(COMPILATION_CACHE_ENV, "").strip()
    if setting.lower() in {"off", "0", "false", "no", "none"}:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and not setting:
        return str(current)
    folder = Path(setting) if setting else Path(os.environ.get("COVIDCT_CACHE", ".cache/covidct")) / "xla"
    if current == str(folder):
        return current
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("XLA compilation cache off: cannot create %s (%s); set %s to a writable folder or 'off'.",
                    folder, error, COMPILATION_CACHE_ENV)
        return None
    compilation_cache.set_cache_dir(str(folder))
    compilation_cache.reset_cache()  # a process that compiled before this call re-reads the setting
    return str(folder)


def drop_last_batch(setting: str) -> bool:
    """``training.drop_last`` resolved: ``auto`` is on where the fit is XLA-compiled (JAX, or a GPU)."""
    if setting == "auto":
        return keras.backend.backend() == "jax" or gpu_available()
    return setting == "on"


def mixed_precision_policy(setting: str) -> str:
    """The dtype policy for ``auto``/``on``/``off``: bfloat16 on JAX, float16 elsewhere, only on GPU for auto."""
    if setting == "off" or (setting == "auto" and not gpu_available()):
        return "float32"
    return "mixed_bfloat16" if keras.backend.backend() == "jax" else "mixed_float16"


@contextlib.contextmanager
def dtype_policy(cfg: RunConfig):
    """Set the run's mixed-precision policy (yields its name); the previous policy is restored afterwards."""
    policy = mixed_precision_policy(cfg.training.mixed_precision)
    previous = keras.mixed_precision.dtype_policy().name
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def backend_info(policy: str, cfg: RunConfig) -> dict:
    """Backend, Keras version, dtype policy, the last incomplete batch's fate and (JAX) compilation cache of a
    run, for ``run.json``."""
    info = {
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "dtype_policy": policy,
        "drop_last_batch": drop_last_batch(cfg.training.drop_last),
    }
    if info["backend"] == "jax":
        import jax

        info["compilation_cache"] = jax.config.jax_compilation_cache_dir
    return info
