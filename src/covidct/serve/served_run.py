"""The run a server explains: its model, preprocessing, classes, decision rule, scores and reference statistics.

Loaded once at start from the run folder's own files: ``run.json`` (classes, stage, size, input names),
``config.yaml`` (the model name, the evaluation's threshold and aggregation), ``model.keras`` and every
``metrics_*.json``. Each metrics file is labelled by what it was computed on (``evaluated_on``: internal or
external section, split, whether it was the set that selected the checkpoint), so a validation score is never
shown as a test score.

The out-of-distribution check compares an upload's preprocessed image with the training split of the run's
preprocessed cache (``run.json``'s ``cache``), when that cache is on this machine: per image, the mean and the
standard deviation of the grey levels and the share of black pixels; the reference is their median and their
scaled median absolute deviation over up to ``REFERENCE_IMAGES`` training images. An upload whose robust
z-score exceeds ``OOD_Z`` on any of them is flagged. Without the cache the check says it is unavailable.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from covidct.data.cache import Cache
from covidct.errors import CovidctError
from covidct.evaluate.metrics import resolve_positive_index
from covidct.models.inference import load_model_file
from covidct.runs import read_run_info

LOGGER = logging.getLogger(__name__)

REFERENCE_IMAGES = 512
OOD_Z = 6.0
FEATURES = ("mean", "std", "black_fraction")
#: Smallest spread per feature (grey levels, grey levels, fraction) so that a constant training set still tolerates noise.
SPREAD_FLOOR = (2.0, 2.0, 0.02)


def image_features(samples: np.ndarray) -> np.ndarray:
    """(N, 3) mean, standard deviation and black-pixel share of uint8 samples (N, H, W[, C]) (channel 0)."""
    samples = np.asarray(samples)
    if samples.ndim == 4:
        samples = samples[..., 0]
    flat = samples.reshape(len(samples), -1).astype(np.float64)
    return np.stack([flat.mean(axis=1), flat.std(axis=1), (flat < 1.0).mean(axis=1)], axis=1)


@dataclass
class Reference:
    """Training-set intensity statistics: per-feature median and robust spread, or why there are none."""
    median: np.ndarray | None = None
    spread: np.ndarray | None = None
    n_images: int = 0
    source: str = ""
    unavailable: str = ""

    def check(self, samples: np.ndarray) -> dict:
        """The OOD verdict of preprocessed samples: features, robust z-scores and whether any exceeds ``OOD_Z``."""
        if self.median is None:
            return {"available": False, "reason": self.unavailable, "warning": False}
        values = image_features(samples).mean(axis=0)
        z = (values - self.median) / self.spread
        worst = int(np.argmax(np.abs(z)))
        flagged = bool(abs(z[worst]) > OOD_Z)
        return {
            "available": True,
            "warning": flagged,
            "max_abs_z": float(abs(z[worst])),
            "feature": FEATURES[worst],
            "limit": OOD_Z,
            "features": {name: {"value": float(v), "training_median": float(m), "z": float(s)}
                         for name, v, m, s in zip(FEATURES, values, self.median, z)},
            "reference_images": self.n_images,
        }


def reference_from_samples(samples: np.ndarray, source: str) -> Reference:
    """A ``Reference`` from uint8 training samples (N, H, W[, C])."""
    features = image_features(samples)
    median = np.median(features, axis=0)
    mad = 1.4826 * np.median(np.abs(features - median), axis=0)
    return Reference(median, np.maximum(mad, SPREAD_FLOOR), len(features), source)


def _find_cache(run_dir: Path, cache: str) -> Path | None:
    """The run's cache folder: as recorded (absolute, or relative to the working folder or to an ancestor of the run)."""
    if not cache:
        return None
    recorded = Path(cache)
    candidates = [recorded] if recorded.is_absolute() else [Path.cwd() / recorded] + [
        parent / recorded for parent in list(run_dir.resolve().parents)[:5]
    ]
    return next((c for c in candidates if (c / "meta.json").is_file()), None)


def load_reference(run_dir: Path, info: dict, seed: int = 0) -> Reference:
    """Reference statistics from the training split of the run's cache (``Reference.unavailable`` says why not)."""
    folder = _find_cache(run_dir, str(info.get("cache") or ""))
    if folder is None:
        why = (f"the run's preprocessed cache {info.get('cache')} is not on this machine"
               if info.get("cache") else "the run records no preprocessed cache")
        return Reference(unavailable=f"{why}, so the training set's intensity statistics are unknown")

    try:
        cache = Cache.open(folder)
        rows = cache.indices("train")
    except CovidctError as error:
        return Reference(unavailable=f"the run's cache {folder} cannot be read ({error})")
    if len(rows) > REFERENCE_IMAGES:
        rows = np.sort(np.random.default_rng(seed).choice(rows, REFERENCE_IMAGES, replace=False))
    return reference_from_samples(np.asarray(cache.images[rows]), f"{len(rows)} training images (cache {folder.name})")


def _score_entry(path: Path, record: dict, positive: str | None) -> dict:
    where = record.get("evaluated_on") or {}
    section, split = where.get("section", "internal"), str(where.get("split", path.stem.removeprefix("metrics_")))
    if where.get("is_selection_set") or split == "val":
        kind = "validation (used to select the checkpoint)" if where.get("is_selection_set") else "validation"
    elif section == "external":
        kind = "external test"
    else:
        kind = "internal test"
    slice_metrics = record.get("slice") or {}
    entry = {
        "file": path.name,
        "kind": kind,
        "split": split,
        "dataset": where.get("dataset", ""),
        "n_images": where.get("n_images", slice_metrics.get("n")),
        "n_groups": where.get("n_groups"),
        "slice": {k: slice_metrics.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro_ovr",
                                                    "sensitivity", "specificity") if slice_metrics.get(k) is not None},
    }
    ci = (slice_metrics.get("ci") or {}).get("macro_f1")
    if ci:
        entry["slice"]["macro_f1_ci"] = [ci.get("low"), ci.get("high")]
    patient = record.get("patient") or {}
    if patient:
        method, values = next(iter(patient.items()))
        entry["patient"] = {"aggregation": method, **{k: values.get(k) for k in ("accuracy", "macro_f1", "auc_macro_ovr")
                                                      if values.get(k) is not None}}
    if positive:
        entry["positive_class"] = positive
    return entry


def read_scores(run_dir: Path) -> list[dict]:
    """Every ``metrics_*.json`` of the run, labelled (internal test / external test / validation), tests first."""
    entries = []
    for name in sorted(glob.glob(str(run_dir / "metrics_*.json"))):
        path = Path(name)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            LOGGER.warning("skipping unreadable %s: %s", path, error)
            continue
        if isinstance(record, dict):
            entries.append(_score_entry(path, record, (record.get("slice") or {}).get("positive_class")))
    order = {"internal test": 0, "external test": 1}
    return sorted(entries, key=lambda e: (order.get(e["kind"], 2), e["file"]))


def _threshold(run_dir: Path, evaluation: dict) -> tuple[float | None, str]:
    """The run's decision threshold on the positive class and where it comes from (None: argmax)."""
    test = run_dir / "metrics_test.json"
    if test.is_file():
        try:
            record = json.loads(test.read_text())
        except (OSError, ValueError):
            record = {}
        chosen = record.get("threshold")
        if isinstance(chosen, dict) and chosen.get("value") is not None:
            return float(chosen["value"]), "chosen on the validation split (metrics_test.json)"
        value = (record.get("options") or {}).get("threshold")
        if isinstance(value, (int, float)):
            return float(value), "the evaluation's threshold (metrics_test.json)"
    value = evaluation.get("threshold")
    if isinstance(value, (int, float)):
        return float(value), "config.yaml evaluation.threshold"
    return None, "argmax (the run sets no threshold)"


@dataclass
class ServedRun:
    """A run folder loaded for serving.

    Attributes:
        run_dir: the folder.
        model: the Keras model (``model.keras``, uncompiled).
        info: ``run.json``.
        config: ``config.yaml`` as a plain dict.
        class_names: output order of the model.
        stage: preprocessing stage name; size: its output side in pixels.
        input_names: the model's input names (two for image+mask models).
        threshold: decision threshold on ``positive_class``'s probability (binary runs), or None (argmax).
        threshold_source: where the threshold comes from.
        positive_class: the class the threshold applies to.
        aggregation: slice -> patient method (``evaluation.aggregation``'s first entry); topk: its k.
        scores: labelled metrics entries (``read_scores``).
        reference: the OOD reference statistics.
    """
    run_dir: Path
    model: object
    info: dict
    config: dict
    class_names: list
    stage: str
    size: int
    input_names: tuple
    threshold: float | None
    threshold_source: str
    positive_class: str
    aggregation: str
    topk: int
    scores: list = field(default_factory=list)
    reference: Reference = field(default_factory=Reference)

    @property
    def model_name(self) -> str:
        return str(self.info.get("model") or (self.config.get("model") or {}).get("name") or self.model.name)

    def describe(self) -> dict:
        """What ``GET /api/model`` answers: run, training data, preprocessing, decision rule, labelled scores."""
        counts = self.info.get("split_counts") or {}
        return {
            "run": self.run_dir.name,
            "model": self.model_name,
            "classes": list(self.class_names),
            "dataset": self.info.get("dataset") or (self.config.get("data") or {}).get("dataset", ""),
            "training_images": (counts.get("train") or {}).get("images"),
            "training_groups": (counts.get("train") or {}).get("groups"),
            "stage": self.stage,
            "size": self.size,
            "epochs_run": self.info.get("epochs_run"),
            "selection": {"split": self.info.get("selection_split"), "monitor": self.info.get("monitor")},
            "decision": {"threshold": self.threshold, "positive_class": self.positive_class,
                         "source": self.threshold_source},
            "aggregation": {"method": self.aggregation, "k": self.topk},
            "scores": self.scores,
            "ood_reference": {"available": self.reference.median is not None, "source": self.reference.source,
                              "reason": self.reference.unavailable},
        }


def load_served_run(run_dir: str | os.PathLike) -> ServedRun:
    """Load a finished 2-D slice-classifier run folder for serving.

    Raises:
        CovidctError: the folder, its model or its record is missing, or it is not a slice classifier run.
    """


    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CovidctError(f"Run folder {run_dir} does not exist; pass a finished run (covidct train ... writes one).")
    info = read_run_info(run_dir)
    if not info:
        raise CovidctError(f"Run folder {run_dir} has no run.json: the run did not finish. Finish it (--resume) first.")
    task = info.get("task") or ""
    if task in ("segmentation", "pretrain", "volume"):
        raise CovidctError(
            f"Run folder {run_dir} is a {task} run; covidct serve explains 2-D slice classifiers. Pass a classification run."
        )
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    model = load_model_file(run_dir / "model.keras", "Run checkpoint")
    if any(len(tensor.shape) == 5 for tensor in getattr(model, "inputs", []) or []):
        raise CovidctError(f"Run folder {run_dir} holds a 3-D volume model; covidct serve explains 2-D slice classifiers.")
    class_names = list(info.get("class_names") or [])
    if not class_names:
        raise CovidctError(f"Run folder {run_dir}: run.json has no class_names.")
    data = config.get("data") or {}
    evaluation = config.get("evaluation") or {}
    threshold, source = _threshold(run_dir, evaluation) if len(class_names) == 2 else (None, "argmax (more than two classes)")

    positive = class_names[resolve_positive_index(class_names, evaluation.get("positive_class"))] if len(
        class_names) == 2 else ""
    aggregation = evaluation.get("aggregation") or ["mean"]
    aggregation = aggregation[0] if isinstance(aggregation, list) else str(aggregation)
    return ServedRun(
        run_dir=run_dir,
        model=model,
        info=info,
        config=config,
        class_names=class_names,
        stage=str(info.get("stage") or data.get("stage") or "original"),
        size=int(info.get("size") or data.get("size") or 224),
        input_names=tuple(info.get("input_names") or ("image",)),
        threshold=threshold,
        threshold_source=source,
        positive_class=positive,
        aggregation=aggregation if aggregation in ("mean", "max", "topk", "fraction") else "mean",
        topk=int(evaluation.get("topk") or 5),
        scores=read_scores(run_dir),
        reference=load_reference(run_dir, info),
    )
