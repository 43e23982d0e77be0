"""Training state of a run folder: the model checkpoint and the resumable state, written atomically.

Everything is written to a temporary file in the same folder and moved into place with ``os.replace``
(``covidct.runs.atomic_path``, atomic on POSIX and Windows), so a crash or a full disk never leaves a
half-written model, history or training state behind; a state that cannot be read back is refused by name.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from covidct.errors import CovidctError
from covidct.runs import atomic_path, jsonable, write_json_atomic, write_text_atomic
from covidct.train.distribution import variable_to_numpy

__all__ = [
    "assign_variables",
    "atomic_path",
    "load_train_state",
    "save_model_atomic",
    "save_model_file",
    "save_train_state",
    "variables_to_numpy",
    "write_json_atomic",
    "write_text_atomic",
]


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
    return [variable_to_numpy(v) for v in variables]


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
    arrays["state_json"] = np.frombuffer(json.dumps(jsonable(state)).encode(), dtype=np.uint8)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as stream:
            np.savez(stream, **arrays)
    return Path(path)


def load_train_state(path: str | os.PathLike) -> tuple[list, list, dict]:
    """Read a state saved by ``save_train_state``: (model arrays, optimizer arrays, state dict).

    Raises:
        CovidctError: the file is truncated, corrupt or not a state written by covidct (named, with the fix).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            state = json.loads(bytes(data["state_json"]).decode())
            model_keys = sorted((k for k in data.files if k.startswith("model_")), key=lambda k: int(k.split("_")[1]))
            opt_keys = sorted((k for k in data.files if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
            arrays = [data[k] for k in model_keys], [data[k] for k in opt_keys]
        if not isinstance(state, dict) or "epochs_done" not in state or "history" not in state:
            raise ValueError("its state record lacks epochs_done/history")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise CovidctError(
            f"{path}: the saved training state cannot be read ({type(error).__name__}: {error}); it is truncated "
            "or was not written by covidct. Rerun with --overwrite to start the run again (its epochs are lost)."
        ) from None
    return arrays[0], arrays[1], state


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
