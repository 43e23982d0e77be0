"""Apply a trained infection segmenter inside the classical lung mask and tabulate lesion features per slice.

For each slice (display grey levels; HU volumes go through the lung window first):

1. classical lung labels (``covidct.preprocess.lungs.lung_mask``);
2. the display window, estimated from air and soft-tissue peaks (``covidct.preprocess.harmonize``), gives HU;
3. the infection segmenter(s) of a run (every ``fold_*/model.keras`` of a cross-validation run, their
   probabilities averaged; or the run's ``model.keras``) on the slice prepared as at training time (lung crop
   and lung-masked input when the run was trained so), probabilities pasted back and cut at 0.5;
4. ``covidct.evidence.features.slice_features`` of the lesion mask inside the lungs.

The window estimate is kept in the table (``window_level``, ``window_width``, ``window_anchor``) for
inspection; it is never a model feature.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from covidct.data.io import CTImage, read_image
from covidct.data.windows import to_display
from covidct.errors import CovidctError
from covidct.evidence.features import slice_features
from covidct.preprocess.harmonize import estimate_window
from covidct.preprocess.lungs import load_segmenter, lung_mask
from covidct.segment.data import lung_crop, paste_crops, resize_square
from covidct.segment.predict import crop_of, lung_input_of, predict_probabilities
from covidct.train.segmentation import lung_masked

log = logging.getLogger(__name__)

#: Slices segmented per forward pass batch group (bounds memory).
CHUNK = 64
LESION_THRESHOLD = 0.5
#: Dilation of the lung mask that the segmenters' lung crops and masked inputs use (as at training time).
LUNG_DILATION_FRACTION = 0.03


@dataclass
class Segmenter:
    """One saved segmenter and how it was trained: lung-crop input, lung-masked input, input side."""
    model: object
    path: Path
    crop: str
    masked: bool
    size: int


def load_segmenters(run: str | Path) -> list[Segmenter]:
    """The segmenters of a run folder: each fold's model of a cross-validation run, else ``model.keras``.

    Args:
        run: a segmentation run folder (``covidct segment train`` / ``covidct train`` with ``task: segmentation``)
            or a ``.keras`` file.

    Raises:
        CovidctError: no model found.
    """
    run = Path(run)
    if run.is_file():
        paths = [run]
    else:
        paths = sorted(run.glob("fold_*/model.keras")) or ([run / "model.keras"] if (run / "model.keras").is_file() else [])
    if not paths:
        raise CovidctError(
            f"No segmenter in {run}: pass a segmentation run folder (with model.keras or fold_*/model.keras), e.g. "
            "one from `covidct train --config medseg/unet-infection-lungcrop`."
        )
    out = []
    for path in paths:
        model = load_segmenter(path)
        out.append(Segmenter(model, path, crop_of(path), lung_input_of(path) == "masked", int(model.input_shape[1])))
    log.info("Segmenter %s: %d model(s), crop %s, masked input %s.", run, len(out), out[0].crop, out[0].masked)
    return out


def _dilated(labels: np.ndarray) -> np.ndarray:
    radius = max(1, int(round(LUNG_DILATION_FRACTION * max(labels.shape))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate((labels > 0).astype(np.uint8), kernel)


def lesion_probabilities(segmenters: list[Segmenter], images: list[np.ndarray], lung_labels: list[np.ndarray]) -> list:
    """Mean lesion probability maps (float32, each image's shape) of display images under the segmenters."""
    total = [np.zeros(image.shape, np.float32) for image in images]
    for segmenter in segmenters:
        inputs, boxes, lung_crops = [], [], []
        for image, labels in zip(images, lung_labels):
            dilated = _dilated(labels)
            u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)
            if segmenter.crop == "lungs":
                crop, _, lungs, box, _ = lung_crop(u8, None, segmenter.size, lungs=dilated)
            else:
                crop, lungs, box = resize_square(u8, segmenter.size), resize_square(dilated, segmenter.size, nearest=True), None
            inputs.append(crop)
            lung_crops.append(lungs)
            boxes.append(box)
        batch = np.stack(inputs)[..., None]
        if segmenter.masked:
            batch = lung_masked(batch, np.stack(lung_crops))
        probabilities = predict_probabilities(segmenter.model, batch)
        for index, (image, box) in enumerate(zip(images, boxes)):
            height, width = image.shape
            if box is not None:
                frame = max(height, width)
                pasted = paste_crops(probabilities[index][None], np.asarray(box)[None], frame)[0]
                if (height, width) != (frame, frame):
                    pasted = cv2.resize(pasted, (width, height), interpolation=cv2.INTER_LINEAR)
            else:
                pasted = cv2.resize(probabilities[index], (width, height), interpolation=cv2.INTER_LINEAR)
            total[index] += pasted
    return [t / len(segmenters) for t in total]


def analyse_slices(segmenters: list[Segmenter], images: list[np.ndarray]) -> list[dict]:
    """Feature rows (features + window estimate) of display slices; see the module docstring."""
    rows = []
    for start in range(0, len(images), CHUNK):
        chunk = images[start : start + CHUNK]
        labels = [lung_mask(image, unit="display", warn=False) for image in chunk]
        maps = lesion_probabilities(segmenters, chunk, labels)
        for image, lung_labels, probability in zip(chunk, labels, maps):
            estimate = estimate_window(image, lungs=lung_labels > 0)
            hu = estimate.grey_to_hu(image) if estimate.ok else None
            row = slice_features(hu, lung_labels, probability >= LESION_THRESHOLD)
            row.update(window_level=estimate.level if estimate.ok else np.nan,
                       window_width=estimate.width if estimate.ok else np.nan,
                       window_anchor=estimate.dark_anchor if estimate.ok else "none")
            rows.append(row)
    return rows


def display_slices(manifest: pd.DataFrame):
    """Yield (row index, display (H, W) float32 slice) for every manifest row (volumes read once each)."""
    volumes: dict = {}
    for index, row in manifest.iterrows():
        path = row["path"]
        slice_index = int(row.get("slice_index", -1)) if "slice_index" in row and pd.notna(row.get("slice_index")) else -1
        if slice_index >= 0:
            if path not in volumes:
                volumes.clear()
                volumes[path] = read_image(path)
            volume = volumes[path]

            image = CTImage(volume.array[slice_index], volume.unit, path)
        else:
            image = read_image(path)
        if image.array.ndim != 2:
            raise CovidctError(f"{path}: expected a 2-D slice, got shape {image.array.shape}.")
        yield index, to_display(image).astype(np.float32)


def dataset_features(segmenters: list[Segmenter], manifest: pd.DataFrame) -> pd.DataFrame:
    """Per-slice lesion features of a manifest (keeps ``path``, ``label``, ``group``, ``split``, ``slice_index``)."""
    keep = [c for c in ("path", "label", "group", "split", "slice_index") if c in manifest.columns]
    rows, indices, images = [], [], []

    def flush():
        rows.extend(analyse_slices(segmenters, images))
        images.clear()

    for index, image in display_slices(manifest):
        indices.append(index)
        images.append(image)
        if len(images) == CHUNK:
            flush()
            log.info("%d / %d slices", len(rows), len(manifest))
    if images:
        flush()
    features = pd.DataFrame(rows, index=indices)
    return pd.concat([manifest.loc[indices, keep], features], axis=1).reset_index(drop=True)


__all__ = ["Segmenter", "analyse_slices", "dataset_features", "lesion_probabilities", "load_segmenters"]
