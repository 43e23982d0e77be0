"""Grad-CAM for a finished run folder: the run's own model, classes and preprocessing stage.

``gradcam_run`` is what ``covidct gradcam --run R --images PATH...`` calls. Each input file goes through
the run's stage at the run's size (so Grad-CAM sees exactly what the classifier saw), then through the
saved model; the stage's lung mask gives each heatmap its lung-focus score. Written to ``out_dir``:

- ``overlays/<file>[_<suffix>]_<class>.png``: the overlay of each sample (RGB PNG);
- ``contact_sheet.png``: original | heatmap | overlay rows, grouped per class;
- ``heatmaps.npz``: ``heatmaps`` (N, H, W) float32, ``samples`` (N, H, W, C) uint8, ``masks``;
- ``gradcam.csv``: one row per sample: file, suffix, true label (from the parent folder when it is a
  class name), predicted class and probability, explained class, lung-focus score, lung area fraction;
- ``lung_focus.json``: ``lung_focus_summary`` grouped by true label (predicted class when unknown).

An output folder holding results is refused unless ``overwrite``; then exactly what the earlier call wrote
(the files above, its overlays as listed in its ``gradcam.csv``) is removed before the new files are
written, so no overlay of an earlier call is left beside the new table. The folder is checked writable
before anything is computed; the table, heatmaps and summary are written atomically.

``run_lung_focus`` (``covidct evaluate --run R --lung-focus N``) scores N images of the run's own test
split against the cache's lung masks and writes ``R/lung_focus.json``, the column ``covidct report``
reads.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import covidct.preprocess  # noqa: F401  (registers the stages)
from covidct.data.cache import Cache
from covidct.data.io import read_image
from covidct.errors import CovidctError, unknown_name_error
from covidct.evaluate.metrics import logits_to_probs
from covidct.explain.focus import lung_area_fractions, lung_focus_scores, lung_focus_summary
from covidct.explain.gradcam import compute_cams
from covidct.explain.overlay import contact_sheet, overlay
from covidct.models.inference import split_inputs
from covidct.preprocess.stages import get_stage
from covidct.runs import atomic_path, check_writable, write_json_atomic, write_text_atomic
from covidct.train.data import prepare_data
from covidct.train.run import load_run, require_slice_run

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".dcm")


@dataclass
class GradcamOutput:
    """What ``gradcam_run`` wrote and computed.

    Attributes:
        out_dir: the output folder.
        table: pandas DataFrame, one row per sample (see the module docstring).
        summary: the lung-focus summary dict.
        overlays: paths of the overlay PNGs.
        contact_sheet: path of the contact sheet PNG.
        failed: ``(path, error)`` pairs of inputs that could not be read or preprocessed.
    """

    out_dir: Path
    table: object
    summary: dict
    overlays: list = field(default_factory=list)
    contact_sheet: Path | None = None
    failed: list = field(default_factory=list)


def expand_image_paths(paths) -> list[Path]:
    """Files as given, folders replaced by their image files (sorted, not recursive).

    Args:
        paths: files and/or folders.

    Returns:
        The list of files.

    Raises:
        CovidctError: a path does not exist, or nothing is left.
    """
    files: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or p.name.endswith(".nii.gz"))
            )
            if not found:
                raise CovidctError(f"Folder {path} has no image files ({', '.join(IMAGE_SUFFIXES)}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise CovidctError(f"Image path {path} does not exist.")
    if not files:
        raise CovidctError("No images given; pass files or folders with --images.")
    return files


def _safe_stem(path: Path) -> str:
    name = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _preprocess(loaded, files: list[Path]):
    """Run the run's stage on each file; keep the stage's masks (for the lung-focus score)."""
    stage = get_stage(loaded.stage)
    samples, masks, rows, failed = [], [], [], []
    for path in files:
        try:
            image = read_image(path)
            if image.array.ndim != 2:
                raise CovidctError(
                    f"{path} is a volume of shape {image.array.shape}; Grad-CAM explains 2-D slice classifiers. "
                    "Export the slices you want to explain."
                )
            outputs = stage(image, loaded.size)
        except CovidctError as error:
            LOGGER.warning("skipping %s: %s", path, error)
            failed.append((str(path), str(error)))
            continue
        for output in outputs:
            samples.append(output.image if output.image.ndim == 3 else output.image[..., None])
            masks.append(np.asarray(output.mask, dtype=np.uint8))
            rows.append({"path": str(path), "suffix": output.suffix})
    if not samples:
        raise CovidctError(f"None of the {len(files)} image(s) could be read: {failed[0][1] if failed else ''}")
    return np.stack(samples).astype(np.uint8), np.stack(masks), rows, failed


@dataclass
class LungFocusResult:
    """Grad-CAM of a set of samples with their lung-focus scores.

    Attributes:
        cams: the ``CamResult`` (heatmaps, explained classes, logits, layer).
        scores: float (N,) lung-focus scores (NaN for all-zero heatmaps).
        area_fractions: float (N,) lung area fractions (the score of a uniform heatmap).
        summary: ``lung_focus_summary`` of the scores grouped by ``labels``.
    """

    cams: object
    scores: np.ndarray
    area_fractions: np.ndarray
    summary: dict


def lung_focus_of_samples(
    model,
    samples,
    masks,
    labels,
    input_names: tuple = ("image",),
    class_index=None,
    method: str = "gradcam",
    layer_name: str | None = None,
    model_name: str | None = None,
    batch_size: int = 16,
    warn: bool = True,
) -> LungFocusResult:
    """Grad-CAM and lung-focus scores of preprocessed samples (e.g. a cache's test rows and masks).

    This is the one call an evaluation needs: ``cache.images[test]``, ``cache.masks[test]`` and the
    labels give the per-class lung-focus distribution and the shortcut warning.

    Args:
        model: the trained classifier.
        samples: uint8/float (N, H, W, C) stage outputs in [0, 255]; for image+mask models the
            ``masked-pair`` channels, split by ``input_names``.
        masks: (N, H, W) lung masks of the samples (the stage's masks).
        labels: N labels to group the summary by (true classes, or names of the explained classes).
        input_names: the model's input names (two names split the channels, as in training).
        class_index: None (predicted class), an int or N ints.
        method: ``"gradcam"``, ``"guided"`` or ``"gradcam++"``.
        layer_name: layer to explain (default: the spec's ``gradcam_layer`` / last 4-D layer).
        model_name: registry name for the default layer (default ``model.name``).
        batch_size: images per pass.
        warn: emit the ``LungFocusWarning`` when a class's median is below its threshold.

    Returns:
        A ``LungFocusResult``.
    """
    samples = np.asarray(samples)
    if samples.ndim == 3:
        samples = samples[..., None]
    cams = compute_cams(
        model,
        split_inputs(samples.astype(np.float32), tuple(input_names)),
        class_index=class_index,
        layer_name=layer_name,
        method=method,
        batch_size=batch_size,
        model_name=model_name,
    )
    masks = np.asarray(masks)
    scores = lung_focus_scores(cams.heatmaps, masks)
    areas = lung_area_fractions(masks)
    summary = lung_focus_summary(scores, labels, area_fractions=areas, warn=warn)
    summary.update({"method": method, "layer": cams.layer})
    return LungFocusResult(cams, scores, areas, summary)


LUNG_FOCUS_FILE = "lung_focus.json"


def run_lung_focus(
    run_dir,
    n: int = 64,
    split: str = "test",
    data=None,
    masks=None,
    method: str = "gradcam",
    batch_size: int = 16,
    seed: int = 0,
    warn: bool = True,
) -> dict:
    """Lung focus of a run on up to ``n`` images of one of its splits, written to ``<run_dir>/lung_focus.json``.

    Grad-CAM explains each image's predicted class with the run's saved model; the score of an image is
    the share of heatmap mass inside the lung mask its preprocessing stage produced (the cache's
    ``masks``), summarised per true class with the shortcut threshold of ``covidct.explain.focus``. This
    is what ``covidct evaluate --lung-focus N`` runs, and the file ``covidct report`` reads (it never
    recomputes it).

    Args:
        run_dir: a finished run folder of a 2-D slice classifier.
        n: images scored: a seeded random sample of the split when it has more (all of them otherwise).
        split: ``"test"`` (default), ``"val"`` or ``"train"`` of the run's own dataset.
        data: TrainingData to use instead of the run's cache (tests, notebooks); needs ``masks``
            unless it came from a cache.
        masks: (N, H, W) lung masks aligned with ``data.images`` (default: the cache's ``masks``).
        method: ``"gradcam"``, ``"guided"`` or ``"gradcam++"``.
        batch_size: images per pass.
        seed: seed of the sample.
        warn: emit ``LungFocusWarning`` when a class's median is below its threshold.

    Returns:
        The summary written to the file: ``lung_focus_summary`` (``per_class``, ``overall``, ``warning``,
        ``low_focus_classes``, ``rule``) plus ``split``, ``n_images``, ``n_available``, ``sample``,
        ``explained``, ``method``, ``layer`` and ``command``.

    Raises:
        CovidctError: a volume run, an empty split, ``n`` < 1, or no lung masks for the data.
    """
    if split not in ("train", "val", "test"):
        raise unknown_name_error("split", split, ("train", "val", "test"))
    if int(n) < 1:
        raise CovidctError(f"--lung-focus needs a number of images >= 1, got {n}.")
    run_dir = Path(run_dir)
    loaded = load_run(run_dir)
    require_slice_run(loaded, "lung focus (covidct evaluate --lung-focus)")
    data = data if data is not None else prepare_data(loaded.config, progress=False)
    if list(data.class_names) != list(loaded.class_names):
        raise CovidctError(f"Run {run_dir}: the data's classes {data.class_names} differ from the run's {loaded.class_names}.")
    if masks is None:
        if not data.cache_path:
            raise CovidctError(
                f"Run {run_dir}: the data has no cache, so no lung masks to score Grad-CAM against; pass masks."
            )
        masks = Cache.open(data.cache_path).masks
    if len(masks) != len(data.images):
        raise CovidctError(f"Run {run_dir}: {len(masks)} lung masks for {len(data.images)} images.")
    rows = data.indices(split)
    if len(rows) == 0:
        raise CovidctError(f"Run {run_dir}: the {split!r} split has no images to explain.")
    if len(rows) > int(n):
        rows = np.sort(np.random.default_rng(seed).choice(rows, int(n), replace=False))
    labels = [loaded.class_names[int(y)] for y in data.labels[rows]]
    focus = lung_focus_of_samples(
        loaded.model,
        np.asarray(data.images[rows]),
        np.asarray(masks[rows]),
        labels,
        input_names=loaded.input_names,
        method=method,
        model_name=loaded.config.model.name,
        batch_size=batch_size,
        warn=warn,
    )
    summary = {
        **focus.summary,
        "run": str(run_dir),
        "split": split,
        "n_images": int(len(rows)),
        "n_available": int(len(data.indices(split))),
        "sample": f"random, seed {seed}" if len(rows) < len(data.indices(split)) else "all",
        "grouped_by": "true",
        "explained": "predicted class",
        "command": f"covidct evaluate --run {run_dir} --split {split} --lung-focus {int(n)}",
    }
    write_json_atomic(run_dir / LUNG_FOCUS_FILE, summary)
    return summary


def format_lung_focus(summary: dict) -> str:
    """Lines for the command line: the overall and per-class medians against their thresholds."""
    overall = summary["overall"]
    lines = [
        f"lung focus ({summary.get('method')} at {summary.get('layer')}, {summary['n_images']} {summary['split']} "
        f"image(s), predicted class explained): median {overall['median']:.2f}, threshold {overall['threshold']:.2f}"
        + ("  <- LOW: possible shortcut" if summary["warning"] else ""),
    ]
    for label, stats in summary["per_class"].items():
        flag = "  <- LOW" if stats["low_focus"] else ""
        lines.append(f"  {label:<20} n={stats['n']:<4} median {stats['median']:.2f}  threshold {stats['threshold']:.2f}{flag}")
    lines.append(f"  ({summary['rule']})")
    return "\n".join(lines)


OUTPUT_FILES = ("gradcam.csv", "heatmaps.npz", "lung_focus.json", "contact_sheet.png")


def previous_outputs(out_dir: Path) -> list[Path]:
    """The files an earlier ``gradcam_run`` wrote in ``out_dir``: its fixed outputs and its listed overlays."""
    found = [out_dir / name for name in OUTPUT_FILES if (out_dir / name).is_file()]
    table = out_dir / "gradcam.csv"
    if table.is_file():
        try:
            listed = pd.read_csv(table, usecols=["overlay"])["overlay"].dropna().astype(str)
        except (ValueError, KeyError, OSError):
            listed = []
        overlays = (out_dir / "overlays").resolve()
        for name in listed:
            path = out_dir / "overlays" / Path(name).name  # only files in this folder's overlays/
            if path.resolve().parent == overlays and path.is_file() and path.suffix == ".png":
                found.append(path)
    return found


def gradcam_run(
    run_dir,
    images,
    class_name: str | None = None,
    method: str = "gradcam",
    out_dir=None,
    layer_name: str | None = None,
    batch_size: int = 16,
    alpha: float = 0.5,
    max_per_class: int = 6,
    overwrite: bool = False,
) -> GradcamOutput:
    """Grad-CAM overlays, a contact sheet and lung-focus scores for images, from a run folder.

    Args:
        run_dir: a finished run folder (``model.keras``, ``config.yaml``, ``run.json``).
        images: image files and/or folders of them.
        class_name: class to explain for every image (one of the run's classes); None: the predicted one.
        method: ``"gradcam"``, ``"guided"`` or ``"gradcam++"``.
        out_dir: output folder; default ``<run_dir>/gradcam/<method>``.
        layer_name: layer to explain; default the model spec's ``gradcam_layer`` / last 4-D layer.
        batch_size: images per pass.
        alpha: overlay weight of the heatmap.
        max_per_class: rows per class in the contact sheet.
        overwrite: replace the results an earlier call wrote in ``out_dir`` (only those files are removed).

    Returns:
        A ``GradcamOutput``.

    Raises:
        CovidctError: unknown class, missing run or images, a 3-D volume run, or an output folder that
            already holds results (without ``overwrite``).
    """

    loaded = load_run(run_dir)
    require_slice_run(loaded, "Grad-CAM (covidct gradcam)")
    class_names = list(loaded.class_names)
    class_index = None
    if class_name is not None:
        if class_name not in class_names:
            raise unknown_name_error("class", class_name, class_names)
        class_index = class_names.index(class_name)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "gradcam" / method
    previous = previous_outputs(out_dir)
    if previous and not overwrite:
        raise CovidctError(f"{out_dir} already holds Grad-CAM results; pass --out elsewhere or --overwrite.")
    check_writable(out_dir / "overlays")  # before anything is computed
    files = expand_image_paths(images)
    samples, masks, rows, failed = _preprocess(loaded, files)

    # Summarised below, once the true labels (or predictions) to group by are known.
    focus = lung_focus_of_samples(
        loaded.model,
        samples,
        masks,
        labels=[""] * len(samples),
        input_names=loaded.input_names,
        class_index=class_index,
        method=method,
        layer_name=layer_name,
        model_name=loaded.config.model.name,
        batch_size=batch_size,
        warn=False,
    )
    result, scores, areas = focus.cams, focus.scores, focus.area_fractions
    probabilities = logits_to_probs(result.logits)
    predicted = probabilities.argmax(axis=1)

    for path in previous:  # the earlier call's results go only now, when the new ones are ready to be written
        path.unlink(missing_ok=True)
    overlay_paths = []
    table_rows = []
    for i, row in enumerate(rows):
        path = Path(row["path"])
        true_label = path.parent.name if path.parent.name in class_names else ""
        explained = class_names[int(result.class_index[i])]
        name = "_".join(part for part in (_safe_stem(path), row["suffix"], explained) if part) + ".png"
        target = out_dir / "overlays" / name
        if not cv2.imwrite(str(target), overlay(samples[i], result.heatmaps[i], alpha=alpha)[..., ::-1]):
            raise CovidctError(f"Cannot write {target} (a full disk or a read-only folder?); choose another --out.")
        overlay_paths.append(target)
        table_rows.append(
            {
                **row,
                "true_label": true_label,
                "predicted": class_names[int(predicted[i])],
                "probability": float(probabilities[i, predicted[i]]),
                "explained_class": explained,
                "lung_focus": float(scores[i]),
                "lung_area_fraction": float(areas[i]),
                "overlay": str(target),
            }
        )
    table = pd.DataFrame(table_rows)
    write_text_atomic(out_dir / "gradcam.csv", table.to_csv(index=False))
    with atomic_path(out_dir / "heatmaps.npz", suffix=".npz") as tmp:
        np.savez_compressed(tmp, heatmaps=result.heatmaps, samples=samples, masks=masks)

    known = table["true_label"].astype(bool).all()
    groups = table["true_label"] if known else table["predicted"]
    summary = lung_focus_summary(scores, groups.to_numpy(), area_fractions=areas)
    summary.update(
        {"method": method, "layer": result.layer, "run": str(run_dir), "grouped_by": "true" if known else "predicted"}
    )
    write_text_atomic(out_dir / "lung_focus.json", json.dumps(summary, indent=2, default=float) + os.linesep)

    figure = contact_sheet(
        samples,
        result.heatmaps,
        labels=table["true_label"].tolist() if known else None,
        predictions=table["predicted"].tolist(),
        class_names=class_names,
        scores=scores,
        max_per_class=max_per_class,
        alpha=alpha,
        title=f"{Path(run_dir).name}: {method} at {result.layer}",
    )
    sheet = out_dir / "contact_sheet.png"
    figure.savefig(sheet, dpi=110)
    plt.close(figure)
    return GradcamOutput(out_dir, table, summary, overlay_paths, sheet, failed)


def format_gradcam_output(output: GradcamOutput) -> str:
    """A short text report of ``gradcam_run``'s results for the command line.

    Args:
        output: a ``GradcamOutput``.

    Returns:
        Lines: counts, per-class lung-focus medians against their thresholds, and the files written.
    """
    summary = output.summary
    lines = [
        f"{len(output.table)} sample(s) explained with {summary.get('method')} at layer {summary.get('layer')}"
        + (f"; {len(output.failed)} file(s) skipped" if output.failed else "")
        + ".",
        f"lung focus by {summary.get('grouped_by')} class ({summary['rule']}):",
    ]
    for label, stats in summary["per_class"].items():
        flag = "  <- LOW: possible shortcut" if stats["low_focus"] else ""
        lines.append(f"  {label:<20} n={stats['n']:<4} median {stats['median']:.2f}  threshold {stats['threshold']:.2f}{flag}")
    for path, error in output.failed:
        lines.append(f"skipped {path}: {error}")
    lines.append(f"contact sheet: {output.contact_sheet}")
    lines.append(f"overlays, heatmaps.npz, gradcam.csv, lung_focus.json: {output.out_dir}")
    return "\n".join(lines)
