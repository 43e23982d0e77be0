"""Predicting masks with a trained segmenter and drawing overlays (``covidct segment predict``).

Reads a run folder written by ``train(cfg)`` with ``task: segmentation`` (``covidct segment train``):
its ``model.keras`` (fold 0's for a cross-validation run) and the lung input it was trained on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

from covidct.data.io import read_image
from covidct.errors import CovidctError
from covidct.models.inference import predict_mask_probabilities
from covidct.preprocess.body import to_display_u8
from covidct.preprocess.lungs import load_segmenter, predict_foreground
from covidct.runs import read_run_info
from covidct.segment.data import dilated_lung_mask, lung_crop, paste_crops
from covidct.train.segmentation import lung_masked

logger = logging.getLogger(__name__)

TRUE_COLOUR_RGB = (0, 200, 0)
PRED_COLOUR_RGB = (230, 40, 40)


def resolve_model_path(run) -> Path:
    """``model.keras`` of a run folder (fold_0 for a cross-validation run) or a ``.keras`` file."""
    path = Path(run)
    if path.is_file():
        return path
    for candidate in (path / "model.keras", path / "fold_0" / "model.keras"):
        if candidate.is_file():
            if candidate.parent.name == "fold_0":
                logger.info("%s is a cross-validation run; using the model of fold 0.", path)
            return candidate
    raise CovidctError(
        f"No model.keras in {path}: pass a run folder from `covidct segment train` or a .keras file."
    )


def crop_of(model_path: Path) -> str:
    """The crop a saved segmenter was trained on: ``"lungs"`` (lung crops) or ``"none"`` (from its ``run.json``)."""
    return str(read_run_info(Path(model_path).parent).get("crop", "none"))


def predict_lung_crop(
    model, image: np.ndarray, masked_input: bool, threshold: float = 0.5, tta: bool = False
) -> np.ndarray:
    """Mask of a whole display slice from a segmenter trained on lung crops (``segmentation.crop: lungs``).

    The slice is cropped (at its own resolution) to the square around its dilated classical lung mask and
    resampled to the model's input size, then lung-masked if so trained — exactly as ``load_pairs(...,
    crop="lungs")`` and ``model_inputs`` prepare training data; the probabilities are pasted back into the slice.

    Returns:
        bool (H, W).
    """
    height, width = image.shape[:2]
    crop, _, lungs, box, _ = lung_crop(image, None, int(model.input_shape[1]))
    inputs = lung_masked(crop[None, ..., None], lungs[None]) if masked_input else crop[None]
    probabilities = predict_probabilities(model, inputs, tta=tta)
    frame = max(height, width)
    pasted = paste_crops(probabilities, box[None], frame)[0]
    if (height, width) != (frame, frame):
        pasted = cv2.resize(pasted, (width, height), interpolation=cv2.INTER_LINEAR)
    return pasted >= threshold


def lung_input_of(model_path: Path) -> str:
    """The input a saved segmenter was trained on: ``"masked"`` (lung-masked images) or ``"none"``.

    Read from ``run.json`` next to ``model.keras`` (written by ``train(cfg)`` for ``task: segmentation``;
    a fold's own ``run.json`` in cross-validation runs), else from ``metrics_test.json`` (runs written
    before segmentation moved into ``train(cfg)``), so that prediction feeds the model what it was
    trained on.
    """

    folder = Path(model_path).parent
    lung_input = read_run_info(folder).get("lung_input")
    if lung_input is None and (folder / "metrics_test.json").is_file():
        lung_input = json.loads((folder / "metrics_test.json").read_text()).get("lung_input")
    return "none" if lung_input is None else str(lung_input)


def predict_probabilities(model, images, batch_size: int = 16, tta: bool = False) -> np.ndarray:
    """sigmoid(model(images)) as float32 (N, H, W) for display images (N, H, W) or (N, H, W, 1).

    Args:
        model: a loaded segmenter, a run folder or a ``.keras`` file.
        images: display images (uint8 or float in [0, 255]) at the model's input size.
        batch_size: images per forward pass.
        tta: average with the left-right mirror's map, mirrored back (as ``evaluation.tta``).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return predict_mask_probabilities(load_segmenter(model), images, batch_size=batch_size, tta=tta)


def read_display(path) -> np.ndarray:
    """Read one 2D image as display uint8 (H, W) (HU files through the lung window)."""
    image = read_image(path)
    if np.asarray(image.array).ndim == 3:
        raise CovidctError(f"{path} is a volume; segment predict takes 2D slices.")
    return to_display_u8(image)


def overlay_masks(image_u8: np.ndarray, pred=None, true=None, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 overlay: the prediction filled in red, the true mask outlined in green.

    Args:
        image_u8: (H, W) uint8 grey image.
        pred: optional (H, W) binary prediction.
        true: optional (H, W) binary ground truth.
        alpha: opacity of the filled prediction.

    Returns:
        uint8 (H, W, 3).
    """
    rgb = np.repeat(np.asarray(image_u8, dtype=np.uint8)[..., None], 3, axis=-1).astype(np.float32)
    if pred is not None:
        inside = np.asarray(pred) > 0
        rgb[inside] = (1 - alpha) * rgb[inside] + alpha * np.array(PRED_COLOUR_RGB, np.float32)
    rgb = rgb.astype(np.uint8)
    if true is not None:
        contours, _ = cv2.findContours(
            (np.asarray(true) > 0).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(rgb, contours, -1, TRUE_COLOUR_RGB, 1)
    return rgb


def plot_overlays(images, preds, trues=None, titles=None, columns: int = 4):
    """Figure of overlays (prediction red, truth green outline), one panel per image.

    Args:
        images: (N, H, W) or (N, H, W, 1) uint8.
        preds: (N, H, W) binary predictions.
        trues: optional (N, H, W) binary ground truth.
        titles: optional N panel titles (e.g. "Dice 0.97").
        columns: panels per row.

    Returns:
        matplotlib Figure.
    """
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    count = len(images)
    rows = max(1, int(np.ceil(count / columns)))
    figure = Figure(figsize=(3 * columns, 3 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        axis.axis("off")
        if index >= count:
            continue
        true = None if trues is None else trues[index]
        axis.imshow(overlay_masks(images[index], preds[index], true))
        if titles is not None:
            axis.set_title(str(titles[index]), fontsize=9)
    figure.tight_layout()
    return figure


def predict_files(run, paths, out_dir, threshold: float = 0.5, tta: bool = False) -> list[dict]:
    """Predict masks for image files and write ``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png``.

    Args:
        run: run folder or ``.keras`` file of a trained segmenter.
        paths: image files (PNG/JPG/DICOM/NIfTI slices/.npy) or folders of images.
        out_dir: output folder (created).
        threshold: probability threshold.
        tta: average each probability map with its left-right mirror's (as ``evaluation.tta``).

    Returns:
        One dict per image: path, mask, overlay, foreground_fraction (unreadable files: path, error).
    """
    model_path = resolve_model_path(run)
    model = load_segmenter(model_path)
    masked_input = lung_input_of(model_path) == "masked"
    cropped = crop_of(model_path) == "lungs"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".dcm", ".npy", ".tif", ".tiff", ".bmp"}
                )
            )
        else:
            files.append(path)
    if not files:
        raise CovidctError(f"No images found in {', '.join(map(str, paths))}.")
    results = []
    for path in files:
        try:
            image = read_display(path)
        except (CovidctError, OSError) as error:
            logger.warning("skipping %s: %s", path, error)
            results.append({"path": str(path), "error": str(error)})
            continue
        if cropped:
            mask = predict_lung_crop(model, image, masked_input, threshold, tta)
        elif masked_input:
            mask = predict_foreground(model, (image * dilated_lung_mask(image))[None], threshold=threshold, tta=tta)[0]
        else:
            mask = predict_foreground(model, image[None], threshold=threshold, tta=tta)[0]
        mask_path = out_dir / f"{path.stem}_mask.png"
        overlay_path = out_dir / f"{path.stem}_overlay.png"
        cv2.imwrite(str(mask_path), mask.astype(np.uint8) * 255)
        cv2.imwrite(str(overlay_path), cv2.cvtColor(overlay_masks(image, mask), cv2.COLOR_RGB2BGR))
        results.append(
            {
                "path": str(path),
                "mask": str(mask_path),
                "overlay": str(overlay_path),
                "foreground_fraction": float(mask.mean()),
            }
        )
    return results
