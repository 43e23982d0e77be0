"""A finished run folder, loaded back: its config, model, classes and preprocessing.

Prediction through ``predict_images`` applies the run's *own* stage and size to new images, so
training and inference cannot drift apart (a mistake of the original studies).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import covidct.preprocess  # noqa: F401  (registers the stages)
import covidct.train.losses  # noqa: F401  (registers the losses)
from covidct.config import RunConfig, load_config
from covidct.data.io import CTImage, read_image
from covidct.errors import CovidctError
from covidct.evaluate.metrics import logits_to_probs
from covidct.models.inference import load_model_file, predict_logits
from covidct.preprocess.stages import get_stage
from covidct.runs import read_run_info
from covidct.train.trainer import run_status, train


@dataclass
class LoadedRun:
    """A run folder loaded for prediction.

    Attributes:
        config: the resolved RunConfig saved with the run.
        model: the best checkpoint (``model.keras``), uncompiled.
        class_names: the output order of the model.
        run_dir: the folder.
        info: ``run.json`` (stage, size, channels, input names, best epoch, ...).
    """

    config: RunConfig
    model: object
    class_names: list
    run_dir: Path
    info: dict = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return self.info.get("stage", self.config.data.stage)

    @property
    def size(self) -> int:
        return int(self.info.get("size", self.config.data.size))

    @property
    def input_names(self) -> tuple:
        return tuple(self.info.get("input_names", ("image",)))

    @property
    def is_volume(self) -> bool:
        """Whether the run holds a 3-D volume model (``task: volume`` in run.json, or a 5-D model input)."""
        if self.info.get("task") == "volume":
            return True
        inputs = getattr(self.model, "inputs", None) or []
        return any(len(tensor.shape) == 5 for tensor in inputs)


def require_slice_run(loaded: LoadedRun, what: str) -> None:
    """Refuse a volume run where only 2-D slice classifiers make sense (``predict_images``, Grad-CAM).

    Args:
        loaded: the LoadedRun.
        what: the caller, named in the message (e.g. ``"predict_images"``).

    Raises:
        CovidctError: naming the run and the command that does handle it.
    """
    if loaded.is_volume:
        model = loaded.info.get("model") or loaded.config.model.name
        raise CovidctError(
            f"{what}: run {loaded.run_dir} holds a 3-D volume model ({model}, task 'volume') that takes whole "
            f"volumes, not 2-D slices. Score volumes with `covidct evaluate --run {loaded.run_dir} --dataset NAME` "
            "(one prediction per volume); `covidct predict-volume` aggregates the slices of a volume with a 2-D "
            "slice run, not with this one."
        )


def load_run(run_dir: str | os.PathLike) -> LoadedRun:
    """Load ``config.yaml``, ``run.json`` and ``model.keras`` from a run folder.

    Raises:
        CovidctError: the folder, its model or its config is missing.
    """
    run_dir = Path(run_dir)
    model_file = run_dir / "model.keras"
    if not run_dir.is_dir():
        raise CovidctError(f"Run folder {run_dir} does not exist.")
    if not model_file.is_file():
        raise CovidctError(f"Run folder {run_dir} has no model.keras (the run did not finish its first epoch?).")
    config = load_config(run_dir / "config.yaml", validate=False)
    info = read_run_info(run_dir)
    if info.get("task") == "pretrain" or config.task == "pretrain":
        raise CovidctError(
            f"Run folder {run_dir} is a self-supervised pretraining run (task: pretrain): it restores images and "
            f"predicts no class or mask. Start a run from it with model.weights: {model_file} and use that run."
        )
    model = load_model_file(model_file, "Run checkpoint")
    class_names = list(info.get("class_names") or config.data.classes or [])
    if not class_names:
        raise CovidctError(f"Run folder {run_dir}: run.json has no class_names.")
    return LoadedRun(config=config, model=model, class_names=class_names, run_dir=run_dir, info=info)


def _to_ctimage(item):
    if isinstance(item, CTImage):
        return item
    if isinstance(item, (str, os.PathLike)):
        return read_image(item)
    array = np.asarray(item)
    if array.ndim != 2:
        raise CovidctError(f"predict_images: arrays must be 2-D slices (H, W), got shape {array.shape}.")
    unit = "display" if array.dtype == np.uint8 else "HU"
    return CTImage(array=array.astype(np.float32), unit=unit)


def preprocess_images(loaded: LoadedRun, items) -> tuple[np.ndarray, np.ndarray]:
    """Apply the run's stage to images (paths, CTImages or 2-D arrays).

    Returns:
        (samples uint8 (M, size, size, C), owner (M,) index of the input each sample came from); a
        stage such as ``halves`` gives two samples per input.
    """
    stage = get_stage(loaded.stage)
    samples, owner = [], []
    for i, item in enumerate(items):
        image = _to_ctimage(item)
        for output in stage(image, loaded.size):
            sample = output.image if output.image.ndim == 3 else output.image[..., None]
            samples.append(sample)
            owner.append(i)
    if not samples:
        raise CovidctError("predict_images: no images given.")
    return np.stack(samples).astype(np.uint8), np.asarray(owner)


def predict_images(loaded: LoadedRun, items, batch_size: int = 32, tta: bool = False) -> np.ndarray:
    """Class probabilities (N, C) for N images, preprocessed with the run's own stage and size.

    Args:
        loaded: a LoadedRun.
        items: paths, ``CTImage`` objects or 2-D arrays (uint8 = display, float = HU).
        batch_size: images per forward pass.
        tta: also predict the horizontal flip and average the probabilities.

    Returns:
        float64 (N, C) probabilities in the order of ``loaded.class_names`` (samples of one input, e.g.
        two halves, are averaged).

    Raises:
        CovidctError: the run holds a 3-D volume model (see ``require_slice_run``), or an input is unreadable.
    """
    require_slice_run(loaded, "predict_images")
    items = list(items)
    samples, owner = preprocess_images(loaded, items)
    index = np.arange(len(samples))
    probs = logits_to_probs(predict_logits(loaded.model, samples, index, batch_size, loaded.input_names))
    if tta:
        flipped = logits_to_probs(predict_logits(loaded.model, samples, index, batch_size, loaded.input_names, flip=True))
        probs = (probs + flipped) / 2.0
    out = np.zeros((len(items), probs.shape[1]))
    np.add.at(out, owner, probs)
    return out / np.bincount(owner, minlength=len(items))[:, None]


def train_or_reuse(cfg: RunConfig, run_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Return a finished run folder for ``cfg``: reuse it when it is finished, resume or train it otherwise.

    Notebooks and benchmarks call this so rerunning them never retrains (nor clobbers) a finished run.
    """
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.output_root) / cfg.run_name
    status = run_status(run_dir)
    if status == "finished":
        return run_dir
    return train(cfg, run_dir=run_dir, resume=status == "interrupted", overwrite=status == "failed", progress=progress)
