"""Patient-level prediction from a CT volume with a 2D slice classifier.

A 2D model scores every axial slice that shows lung; the slice probabilities are then aggregated into
one patient score (``covidct.evaluate.aggregate``): ``mean`` (default), ``max``, ``topk`` (mean of
the k highest) and ``fraction`` (share of slices at or above a threshold). Slices without lung (neck,
abdomen) are left out, because a slice classifier has never seen them and its output there is noise.

Which slices show lung:

- ``"lung-mask"`` (default): ``covidct.preprocess.lungs.lung_mask`` (classical per-lung segmentation)
  on each slice; a slice counts when its lungs cover at least ``min_lung_fraction`` of the image.
- ``"air-fraction"`` (fast, HU volumes only): inside the body (the filled region above -500 HU), the
  share of the image that is between -1000 and -400 HU (aerated lung; the airway is small). Quicker
  but cruder: bowel gas counts as lung.

Example::

    from covidct.evaluate.volume_predict import predict_volume, plot_slice_probabilities
    result = predict_volume("runs/demo", "scan.nii.gz")
    print(result.predicted_class, result.summary())
    plot_slice_probabilities(result).savefig("scan_slices.png")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import ndimage

from covidct.data.io import CTImage
from covidct.data.volumes import load_volume
from covidct.errors import CovidctError, unknown_name_error
from covidct.evaluate.aggregate import aggregate_scores
from covidct.preprocess.lungs import lung_mask
from covidct.train.run import LoadedRun, load_run, predict_images, require_slice_run

SLICE_CRITERIA = ("lung-mask", "air-fraction")
AGGREGATIONS = ("mean", "max", "topk", "fraction")


def _as_volume(volume):
    """A ``CTImage`` (D, H, W) from a CTImage, a path (file or DICOM folder) or an HU array."""
    if isinstance(volume, (str, os.PathLike)):
        # .npy files are memory-mapped and NIfTI read slab by slab: one copy of the volume at most.
        volume = load_volume(volume)
    elif not isinstance(volume, CTImage):
        volume = CTImage(np.asarray(volume, dtype=np.float32), "HU")
    if volume.array.ndim != 3:
        raise CovidctError(
            f"{volume.path or 'volume'}: expected a 3-D volume (D, H, W), got shape {volume.array.shape}; "
            "for single slices use covidct.train.run.predict_images."
        )
    return volume


def lung_fractions(volume, criterion: str = "lung-mask") -> np.ndarray:
    """Fraction of each axial slice covered by lung.

    Args:
        volume: a ``CTImage`` volume, a path, or a (D, H, W) HU array.
        criterion: ``"lung-mask"`` or ``"air-fraction"`` (see the module docstring).

    Returns:
        float64 (D,) fractions in [0, 1].
    """

    if criterion not in SLICE_CRITERIA:
        raise unknown_name_error("slice criterion", criterion, SLICE_CRITERIA)
    volume = _as_volume(volume)
    fractions = np.zeros(volume.array.shape[0])
    if criterion == "air-fraction":
        if volume.unit != "HU":
            raise CovidctError(
                f"{volume.path}: the air-fraction criterion needs HU values; this volume is in {volume.unit} "
                "units. Use criterion='lung-mask'."
            )
        for k, slice_hu in enumerate(volume.array):
            body = ndimage.binary_fill_holes(slice_hu > -500)
            fractions[k] = np.mean(body & (slice_hu < -400) & (slice_hu >= -1000 - 100))
        return fractions

    spacing = tuple(volume.spacing[1:]) if volume.spacing else None
    for k, slice_array in enumerate(volume.array):
        slice_image = CTImage(np.asarray(slice_array, dtype=np.float32), volume.unit, volume.path, spacing)
        labels = lung_mask(slice_image, warn=False)
        fractions[k] = np.mean(labels > 0)
    return fractions


@dataclass
class VolumePrediction:
    """Slice and patient scores of one volume.

    Attributes:
        path: the volume's file or folder ("" for arrays).
        class_names: the model's class order.
        slice_indices: (M,) indices (inferior to superior) of the slices that were scored.
        slice_probs: (M, C) class probabilities of those slices.
        lung_fraction: (D,) lung fraction of every slice (the selection criterion).
        scores: aggregation name -> (C,) patient scores (``mean``, ``max``, ``topk``, ``fraction``).
        method: the aggregation that decides ``patient_probs`` and ``predicted_class``.
        settings: k, threshold, min_lung_fraction and criterion used.
    """

    path: str
    class_names: list
    slice_indices: np.ndarray
    slice_probs: np.ndarray
    lung_fraction: np.ndarray
    scores: dict
    method: str = "mean"
    settings: dict = field(default_factory=dict)

    @property
    def patient_probs(self) -> np.ndarray:
        """(C,) patient scores of ``method`` (a distribution for ``mean`` only)."""
        return self.scores[self.method]

    @property
    def predicted_class(self) -> str:
        """The class with the highest patient score."""
        return str(self.class_names[int(np.argmax(self.patient_probs))])

    def summary(self) -> pd.DataFrame:
        """One row per class, one column per aggregation."""
        frame = pd.DataFrame({name: values for name, values in self.scores.items()}, index=self.class_names)
        frame.index.name = "class"
        return frame

    def to_frame(self) -> pd.DataFrame:
        """Per-slice table: slice_index, lung_fraction and one ``prob_<class>`` column per class."""
        frame = pd.DataFrame(
            {"slice_index": self.slice_indices, "lung_fraction": self.lung_fraction[self.slice_indices]}
        )
        for c, name in enumerate(self.class_names):
            frame[f"prob_{name}"] = self.slice_probs[:, c]
        return frame


def aggregate_slices(slice_probs: np.ndarray, k: int = 5, threshold: float = 0.5) -> dict:
    """All four patient-level aggregations of (M, C) slice probabilities.

    Returns:
        Dict ``{"mean", "max", "topk", "fraction"} -> (C,)`` computed by
        ``covidct.evaluate.aggregate.aggregate_scores`` class by class.
    """
    slice_probs = np.asarray(slice_probs, dtype=np.float64)
    if slice_probs.ndim != 2 or len(slice_probs) == 0:
        raise CovidctError(
            f"aggregate_slices: need (M, C) probabilities with M >= 1, got shape {slice_probs.shape}."
        )
    return {
        method: np.array(
            [
                aggregate_scores(slice_probs[:, c], method=method, k=k, threshold=threshold)
                for c in range(slice_probs.shape[1])
            ]
        )
        for method in AGGREGATIONS
    }


def _predictor(model_or_run, class_names, batch_size: int) -> tuple[Callable, list | None]:
    """A function list[CTImage] -> (N, C) probabilities, and the class names it knows."""
    if callable(model_or_run) and not hasattr(model_or_run, "predict"):
        return model_or_run, class_names

    run = model_or_run
    if isinstance(run, (str, os.PathLike)):
        run = load_run(run)
    if not isinstance(run, LoadedRun):
        raise CovidctError(
            f"predict_volume: expected a run folder, a LoadedRun or a function(images) -> probabilities, got "
            f"{type(model_or_run).__name__}. A bare keras model does not know its preprocessing: save it as a run."
        )
    require_slice_run(run, "predict_volume (slice aggregation)")
    return (lambda items: predict_images(run, items, batch_size=batch_size)), list(
        class_names or run.class_names
    )


def predict_volume(
    model_or_run,
    volume,
    class_names=None,
    method: str = "mean",
    k: int = 5,
    threshold: float = 0.5,
    min_lung_fraction: float = 0.02,
    criterion: str = "lung-mask",
    batch_size: int = 32,
) -> VolumePrediction:
    """Score the lung-containing slices of a volume with a 2D classifier and aggregate per patient.

    Args:
        model_or_run: a run folder, a ``covidct.train.run.LoadedRun`` (its own stage and size are applied
            to each slice, so prediction matches training), or a function ``f(list[CTImage]) -> (N, C)``
            probabilities.
        volume: a volume file (NIfTI, ``.npy``), a DICOM series folder, a ``CTImage`` or an HU array
            (D, H, W), slices inferior to superior.
        class_names: class order of a plain function (default ``class_0``, ...); a run brings its own.
        method: the aggregation behind ``predicted_class``: ``mean``, ``max``, ``topk`` or ``fraction``.
        k: slices averaged by ``topk``.
        threshold: slice probability cut-off for ``fraction``.
        min_lung_fraction: a slice is scored when lung covers at least this fraction of it.
        criterion: how lung is found: ``"lung-mask"`` or ``"air-fraction"``.
        batch_size: slices given to the classifier at a time (and per forward pass of a run).

    Returns:
        A ``VolumePrediction``.

    Raises:
        CovidctError: no slice shows lung (wrong file, or not a chest CT), or bad arguments.
    """
    if method not in AGGREGATIONS:
        raise unknown_name_error("aggregation method", method, AGGREGATIONS)
    if not 0 <= min_lung_fraction < 1:
        raise CovidctError(f"predict_volume: min_lung_fraction must be in [0, 1), got {min_lung_fraction}.")
    volume = _as_volume(volume)
    fractions = lung_fractions(volume, criterion)
    indices = (
        np.flatnonzero(fractions >= min_lung_fraction) if min_lung_fraction > 0 else np.arange(len(fractions))
    )
    if indices.size == 0:
        raise CovidctError(
            f"{volume.path or 'volume'}: no slice shows lung (largest lung fraction {fractions.max():.3f} < "
            f"{min_lung_fraction}); is this a chest CT in (D, H, W) layout? Lower min_lung_fraction to force it."
        )
    predict_fn, names = _predictor(model_or_run, class_names, batch_size)
    spacing = tuple(volume.spacing[1:]) if volume.spacing else None
    step = max(int(batch_size), 1)
    chunks = []
    # Slices go to the classifier a batch at a time, so at most one batch of float slices is copied.
    for start in range(0, len(indices), step):
        items = [
            CTImage(
                np.asarray(volume.array[k], dtype=np.float32),
                volume.unit,
                volume.path,
                spacing,
                {"slice_index": int(k)},
            )
            for k in indices[start : start + step]
        ]
        probs = np.asarray(predict_fn(items), dtype=np.float64)
        if probs.ndim != 2 or len(probs) != len(items):
            raise CovidctError(
                f"predict_volume: the classifier returned shape {probs.shape} for {len(items)} slices."
            )
        chunks.append(probs)
    probs = np.concatenate(chunks)
    names = list(names) if names else [f"class_{c}" for c in range(probs.shape[1])]
    if len(names) != probs.shape[1]:
        raise CovidctError(
            f"predict_volume: {len(names)} class names for {probs.shape[1]} probability columns."
        )
    return VolumePrediction(
        path=str(volume.path),
        class_names=names,
        slice_indices=indices,
        slice_probs=probs,
        lung_fraction=fractions,
        scores=aggregate_slices(probs, k=k, threshold=threshold),
        method=method,
        settings={
            "k": int(k),
            "threshold": float(threshold),
            "min_lung_fraction": float(min_lung_fraction),
            "criterion": criterion,
        },
    )


def plot_slice_probabilities(prediction: VolumePrediction, classes=None, title: str | None = None):
    """Per-slice class probabilities along the volume, with the lung fraction and the patient scores.

    Args:
        prediction: a ``VolumePrediction``.
        classes: class names to draw (default all).
        title: figure title (default: file name, predicted class and aggregation).

    Returns:
        A matplotlib Figure: x = slice index (inferior to superior), y = probability; dots on scored
        slices, a dashed line per class at its patient score, grey bars = lung fraction (right axis).
    """
    classes = list(classes or prediction.class_names)
    unknown = [c for c in classes if c not in prediction.class_names]
    if unknown:
        raise unknown_name_error("class", unknown[0], prediction.class_names)
    figure = Figure(figsize=(8, 4), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    lung_axes = axes.twinx()
    depth = len(prediction.lung_fraction)
    lung_axes.bar(np.arange(depth), prediction.lung_fraction, width=1.0, color="0.85", label="lung fraction")
    lung_axes.axhline(
        prediction.settings.get("min_lung_fraction", 0.0), color="0.6", linestyle=":", linewidth=1
    )
    lung_axes.set_ylabel("lung fraction of slice")
    lung_axes.set_ylim(0, max(0.5, float(prediction.lung_fraction.max()) * 1.1))
    axes.set_zorder(lung_axes.get_zorder() + 1)
    axes.patch.set_visible(False)
    for name in classes:
        c = prediction.class_names.index(name)
        line = axes.plot(
            prediction.slice_indices,
            prediction.slice_probs[:, c],
            marker="o",
            markersize=3,
            linewidth=1,
            label=f"P({name})",
        )[0]
        axes.axhline(prediction.patient_probs[c], color=line.get_color(), linestyle="--", linewidth=1)
    axes.set_xlim(-0.5, depth - 0.5)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("slice index (inferior → superior)")
    axes.set_ylabel("slice probability")
    axes.legend(loc="upper left", fontsize="small")
    if title is None:
        name = Path(prediction.path).name or "volume"
        title = (
            f"{name}: {prediction.predicted_class} ({prediction.method} over "
            f"{len(prediction.slice_indices)}/{depth} lung slices)"
        )
    axes.set_title(title)
    return figure


def _stem(path: str) -> str:
    name = Path(path).name or "volume"
    for suffix in (".nii.gz", ".nii", ".npy", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def write_volume_prediction(prediction: VolumePrediction, out_dir=".", overwrite: bool = False) -> dict:
    """Save the per-slice plot (PNG) and table (CSV) of a prediction.

    Files: ``<out_dir>/<volume name>_slice_probabilities.png`` and ``..._slices.csv``.

    Args:
        prediction: a ``VolumePrediction``.
        out_dir: output folder (created when missing).
        overwrite: replace existing files (otherwise an existing file is an error, never overwritten).

    Returns:
        ``{"plot": Path, "table": Path}``.
    """
    out_dir = Path(out_dir)
    stem = _stem(prediction.path)
    paths = {"plot": out_dir / f"{stem}_slice_probabilities.png", "table": out_dir / f"{stem}_slices.csv"}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise CovidctError(
            f"{', '.join(existing)} already exist(s); pass overwrite=True (--overwrite) or another --out."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    prediction.to_frame().to_csv(paths["table"], index=False)
    plot_slice_probabilities(prediction).savefig(paths["plot"], dpi=120)
    return paths


def format_prediction(prediction: VolumePrediction) -> str:
    """A short text report: the patient result and every aggregation per class."""
    depth = len(prediction.lung_fraction)
    lines = [
        f"volume: {prediction.path or '(array)'}",
        f"slices scored: {len(prediction.slice_indices)} of {depth} (lung fraction >= "
        f"{prediction.settings.get('min_lung_fraction')}, {prediction.settings.get('criterion')})",
        f"patient prediction ({prediction.method}): {prediction.predicted_class}",
        "",
        prediction.summary().to_string(float_format=lambda value: f"{value:.3f}"),
        "",
        "Research software, not a medical device: do not use for diagnosis.",
    ]
    return "\n".join(lines)
