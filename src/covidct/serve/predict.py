"""Predictions for the server: one slice (probabilities, decision, Grad-CAM, lung mask, focus, OOD) or a volume.

Everything the page shows is computed here and returned as plain JSON: images are PNG ``data:`` URIs built in
memory, never files. A slice goes through the run's own stage at the run's size (the stage also gives the lung
mask); Grad-CAM explains the decided class; its lung-focus score is compared with the threshold of
``covidct.explain.focus`` for that mask's area. A volume goes through ``predict_volume`` (lung-bearing slices,
the run's aggregation), then the slices with the highest positive-class probability get their Grad-CAM.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np

import covidct.preprocess  # noqa: F401  (registers the stages)
from covidct import DISCLAIMER
from covidct.data.io import CTImage
from covidct.errors import CovidctError
from covidct.evaluate.metrics import logits_to_probs
from covidct.evaluate.volume_predict import predict_volume
from covidct.explain.focus import lung_area_fractions, lung_focus_score, lung_focus_threshold
from covidct.explain.gradcam import compute_cams
from covidct.explain.overlay import display_rgb, overlay
from covidct.models.inference import predict_logits, split_inputs
from covidct.preprocess.stages import get_stage

TOP_SLICES = 3


def png_data_uri(rgb: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of a uint8 (H, W) or (H, W, 3) RGB image."""
    array = np.asarray(rgb)
    if array.ndim == 3:
        array = array[..., ::-1]  # OpenCV writes BGR
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise CovidctError("Cannot encode a result image as PNG.")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def mask_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The image in grey with the lung mask tinted green and its outline drawn."""


    base = display_rgb(image).astype(np.float32)
    inside = np.asarray(mask) > 0
    tint = np.array([40.0, 220.0, 90.0], np.float32)
    base[inside] = (1 - alpha) * base[inside] + alpha * tint
    out = np.clip(np.rint(base), 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (40, 220, 90), 1)
    return out


def preprocess(run, image) -> tuple[np.ndarray, np.ndarray]:
    """The run's stage on one slice: uint8 samples (M, size, size, C) and their masks (M, size, size)."""
    outputs = get_stage(run.stage)(image, run.size)
    if not outputs:
        raise CovidctError("The preprocessing stage produced no sample for this image.")
    samples = np.stack([o.image if o.image.ndim == 3 else o.image[..., None] for o in outputs]).astype(np.uint8)
    masks = np.stack([np.asarray(o.mask, np.uint8) for o in outputs])
    return samples, masks


def decide(run, probs: np.ndarray) -> str:
    """The class decided for (C,) probabilities: the run's threshold on the positive class, else the argmax."""
    if run.threshold is not None and len(run.class_names) == 2:
        positive = run.class_names.index(run.positive_class)
        return run.class_names[positive if probs[positive] >= run.threshold else 1 - positive]
    return run.class_names[int(np.argmax(probs))]


def _cams(run, samples: np.ndarray, class_index: int):

    return compute_cams(run.model, split_inputs(samples.astype(np.float32), run.input_names),
                        class_index=class_index, model_name=run.model_name)


def _explained(run, samples, masks, class_index: int | None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Grad-CAM of ``class_index`` (None: each sample's argmax) on the samples: images, focus score and warning;
    the mean probabilities; and the explained class of each sample."""
    cams = _cams(run, samples, class_index)
    probs = logits_to_probs(cams.logits).mean(axis=0)
    heatmap, mask = cams.heatmaps[0], masks[0]
    area = float(lung_area_fractions(mask)[0])
    score = lung_focus_score(heatmap, mask)
    limit = lung_focus_threshold(area)
    low = bool(np.isfinite(score) and score < limit)
    focus = {
        "score": None if not np.isfinite(score) else float(score),
        "threshold": float(limit),
        "lung_area_fraction": area,
        "warning": low or not np.isfinite(score),
        "message": ("The Grad-CAM attention lies mostly outside the lungs: the decision may rest on something other "
                    "than lung tissue." if low else ("The Grad-CAM map is empty: no attention to score."
                                                     if not np.isfinite(score) else "")),
    }
    images = {
        "input": png_data_uri(display_rgb(samples[0])),
        "gradcam": png_data_uri(overlay(samples[0], heatmap, alpha=0.45)),
        "lung_mask": png_data_uri(mask_overlay(samples[0], mask)),
    }
    return {"images": images, "lung_focus": focus, "layer": cams.layer}, probs, np.asarray(cams.class_index)


def predict_slice(run, image) -> dict:
    """The JSON result of one slice (see ``POST /api/predict``)."""
    samples, masks = preprocess(run, image)
    # One pass explains each sample's argmax; a threshold that decides otherwise needs a second one.
    explained, probs, chosen = _explained(run, samples, masks, None)
    decided = decide(run, probs)
    if np.any(chosen != run.class_names.index(decided)):
        explained, probs, _ = _explained(run, samples, masks, run.class_names.index(decided))
    return {
        "kind": "slice",
        "unit": image.unit,
        "shape": list(image.array.shape),
        "probabilities": {name: float(p) for name, p in zip(run.class_names, probs)},
        "predicted_class": decided,
        "decision": _decision(run),
        "gradcam": {"class": decided, "layer": explained["layer"]},
        "images": explained["images"],
        "lung_focus": explained["lung_focus"],
        "ood": run.reference.check(samples),
        "disclaimer": DISCLAIMER,
    }


def _decision(run) -> dict:
    return {"threshold": run.threshold, "positive_class": run.positive_class or None, "source": run.threshold_source}


def predict_volume_result(run, image) -> dict:
    """The JSON result of a volume: per-slice curve, patient score with the run's aggregation, top slices."""
    def predictor(items):
        rows = [preprocess(run, item) for item in items]
        samples = np.concatenate([s for s, _ in rows])
        owner = np.concatenate([np.full(len(s), i) for i, (s, _) in enumerate(rows)])
        probs = logits_to_probs(predict_logits(run.model, samples, np.arange(len(samples)), 16, run.input_names))
        out = np.zeros((len(items), probs.shape[1]))
        np.add.at(out, owner, probs)
        return out / np.bincount(owner, minlength=len(items))[:, None]

    result = predict_volume(predictor, image, class_names=run.class_names, method=run.aggregation, k=run.topk,
                            threshold=run.threshold if run.threshold is not None else 0.5)
    patient = result.patient_probs
    decided = decide(run, patient) if run.aggregation == "mean" else result.predicted_class
    focus_class = run.positive_class or decided
    column = run.class_names.index(focus_class)
    order = np.argsort(-result.slice_probs[:, column], kind="stable")[:TOP_SLICES]
    spacing = tuple(image.spacing[1:]) if image.spacing else None
    top = []
    for rank in order:
        index = int(result.slice_indices[rank])
        slice_image = CTImage(np.asarray(image.array[index], np.float32), image.unit, image.path, spacing)
        samples, masks = preprocess(run, slice_image)
        explained, _, _ = _explained(run, samples, masks, column)
        top.append({
            "slice_index": index,
            "probabilities": {n: float(p) for n, p in zip(run.class_names, result.slice_probs[rank])},
            "gradcam_class": focus_class,
            "images": {"input": explained["images"]["input"], "gradcam": explained["images"]["gradcam"]},
            "lung_focus": explained["lung_focus"],
        })
    middle = CTImage(np.asarray(image.array[int(result.slice_indices[len(result.slice_indices) // 2])], np.float32),
                     image.unit, image.path, spacing)
    return {
        "kind": "volume",
        "unit": image.unit,
        "shape": list(image.array.shape),
        "slices_scored": int(len(result.slice_indices)),
        "slice_curve": {"slice_index": [int(i) for i in result.slice_indices],
                        "probabilities": {n: [float(v) for v in result.slice_probs[:, c]]
                                          for c, n in enumerate(run.class_names)}},
        "patient": {"aggregation": run.aggregation, "k": run.topk,
                    "scores": {n: float(v) for n, v in zip(run.class_names, patient)},
                    "predicted_class": decided},
        "predicted_class": decided,
        "probabilities": {n: float(v) for n, v in zip(run.class_names, patient)},
        "decision": _decision(run),
        "top_slices": top,
        "ood": run.reference.check(preprocess(run, middle)[0]),
        "disclaimer": DISCLAIMER,
    }


def predict_image(run, image) -> dict:
    """Dispatch on the image's dimensions: a slice (H, W) or a volume (D, H, W)."""
    if image.array.ndim == 2:
        return predict_slice(run, image)
    return predict_volume_result(run, image)
