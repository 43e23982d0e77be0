"""Atomic writes for run folders: a file is either the old version or the complete new one.

Everything is written to a temporary file in the same folder and moved into place with ``os.replace``
(atomic on POSIX and Windows), so a crash or a full disk never leaves a half-written model, history or
training state behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from covidct.errors import CovidctError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    Args:
        path: the final file.
        suffix: suffix of the temporary name (``.keras`` for Keras, which checks extensions).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=suffix)
    os.close(handle)
    os.remove(tmp)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        if error.errno == errno.ENOSPC:
            raise CovidctError(
                f"No space left on the device while writing {path}; the previous version (if any) is kept. "
                "Free some space and rerun with --resume."
            ) from error
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(tmp):
            import shutil

            shutil.rmtree(tmp)
        else:
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented JSON atomically (NaN written as null)."""
    return write_text_atomic(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def save_model_file(model, path: str | os.PathLike) -> None:
    """Save a Keras model to ``path`` (a ``.keras`` file). Kept separate so tests can simulate a full disk."""
    model.save(str(path))


def save_model_atomic(model, path: str | os.PathLike) -> Path:
    """Save ``model`` to ``path`` atomically: the old file survives any failure."""
    with atomic_path(path, suffix=".keras") as tmp:
        save_model_file(model, tmp)
    return Path(path)


def variables_to_numpy(variables) -> list[np.ndarray]:
    """Values of Keras variables as NumPy arrays (any backend)."""
    import keras

    return [np.asarray(keras.ops.convert_to_numpy(v.value if hasattr(v, "value") else v)) for v in variables]


def save_train_state(path: str | os.PathLike, model, optimizer, state: dict) -> Path:
    """Save the resumable training state (every model and optimizer variable + a JSON dict) atomically.

    Args:
        path: ``.npz`` file.
        model: the model being trained (all ``model.variables``, incl. BatchNorm statistics and seeds).
        optimizer: its optimizer (moments, iteration counter).
        state: JSON-ready dict (epoch, best score, history, ...).
    """
    arrays = {f"model_{i}": a for i, a in enumerate(variables_to_numpy(model.variables))}
    arrays.update({f"optimizer_{i}": a for i, a in enumerate(variables_to_numpy(optimizer.variables))})
    arrays["state_json"] = np.frombuffer(json.dumps(_jsonable(state)).encode(), dtype=np.uint8)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as stream:
            np.savez(stream, **arrays)
    return Path(path)


def load_train_state(path: str | os.PathLike) -> tuple[list, list, dict]:
    """Read a state saved by ``save_train_state``: (model arrays, optimizer arrays, state dict)."""
    with np.load(path) as data:
        state = json.loads(bytes(data["state_json"]).decode())
        model_keys = sorted((k for k in data.files if k.startswith("model_")), key=lambda k: int(k.split("_")[1]))
        opt_keys = sorted((k for k in data.files if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
        return [data[k] for k in model_keys], [data[k] for k in opt_keys], state


def assign_variables(variables, arrays, what: str) -> None:
    """Assign saved arrays to variables, checking count and shapes."""
    variables = list(variables)
    if len(variables) != len(arrays):
        raise CovidctError(
            f"Cannot resume: the saved {what} state has {len(arrays)} variables, the rebuilt one {len(variables)}. "
            "Was the config changed since the interrupted run? Rerun with --overwrite."
        )
    for variable, array in zip(variables, arrays):
        if tuple(variable.shape) != tuple(array.shape):
            raise CovidctError(
                f"Cannot resume: {what} variable {variable.path if hasattr(variable, 'path') else variable.name} "
                f"has shape {tuple(variable.shape)}, saved {array.shape}. Rerun with --overwrite."
            )
        variable.assign(array)
