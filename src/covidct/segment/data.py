"""Image/mask pairs for segmentation, read through the data layer and its slice cache.

``load_pairs(dataset, root, size)`` returns every pair of a mask dataset (``kaggle-lungs``: lungs,
``medseg``: infection) at ``size`` px with its split and group. The pairs are manifest rows of
``covidct.data.datasets.load_dataset`` (``path`` + ``mask_path``; MedSeg rows carry ``mask_rot90``, the
quarter turns that align each mask with its image, and blocks of consecutive slices as groups); they are
cached by ``covidct.data.cache.build_cache`` with the ``SegmentationStage`` below, the mask with its image,
so a dataset is read and resampled once per size. Splits and folds come from ``covidct.data.splits``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from covidct.data.cache import build_cache
from covidct.data.cache_integrity import default_cache_root
from covidct.data.datasets import dataset_candidates, load_dataset, medseg_mask_rot90
from covidct.data.phantom import make_dataset
from covidct.data.stage import StageOutput
from covidct.errors import CovidctError, unknown_name_error
from covidct.preprocess.body import resize_mask, to_display_u8
from covidct.preprocess.lungs import lung_mask

logger = logging.getLogger(__name__)

#: The registered datasets with a mask per image (``covidct.data.datasets``).
SEGMENTATION_DATASETS = ("kaggle-lungs", "medseg")


@dataclass
class SegmentationPairs:
    """Images and masks of one dataset at one size.

    Attributes:
        images: uint8 (N, size, size, 1) display images.
        masks: uint8 (N, size, size) {0, 1}.
        names: N source image paths.
        splits: N official splits ("train"/"test", "" when none).
        groups: N group ids (patients or their proxy).
        lungs: uint8 (N, size, size) {0, 1} dilated classical lung masks (``load_pairs(..., with_lungs=True)``),
            or None.
        group_proxy: how ``groups`` was obtained ("" when unknown).
        boxes: float (N, 4) square lung crops (``load_pairs(..., crop="lungs")``) as fractions of each source
            image: top, left, side / height, side / width (top/left may be < 0 and top + side > 1 where the
            square reaches past the image, which is zero-padded); None for whole slices.
        frame_masks: uint8 (N, size, size) {0, 1} the true masks of the whole slices (crops only): what a
            crop's prediction is scored against once pasted back (``paste_crops``), so infection outside
            the crop counts as missed.
    """
    images: np.ndarray
    masks: np.ndarray
    names: list
    splits: np.ndarray
    groups: np.ndarray
    lungs: np.ndarray | None = None
    group_proxy: str = ""
    boxes: np.ndarray | None = None
    frame_masks: np.ndarray | None = None

    def subset(self, index) -> SegmentationPairs:
        index = np.asarray(index)
        return SegmentationPairs(
            self.images[index],
            self.masks[index],
            [self.names[i] for i in index],
            self.splits[index],
            self.groups[index],
            None if self.lungs is None else self.lungs[index],
            self.group_proxy,
            None if self.boxes is None else self.boxes[index],
            None if self.frame_masks is None else self.frame_masks[index],
        )

    def __len__(self) -> int:
        return len(self.names)


def read_gray(path: Path) -> np.ndarray:
    """An image file as 8-bit grayscale (H, W); a missing or corrupt file raises naming it."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise CovidctError(f"Cannot read image {path} (missing or corrupt).")
    return image


def resize_square(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resample to ``size`` x ``size``: images area (down) / linear (up); binary masks (``nearest``) the same
    way on {0, 1} and cut at 0.5, so a mask stays centred on its image. (OpenCV's ``INTER_NEAREST`` takes the
    first source pixel of each block: a mask shifted by 1.5 source pixels up-left at 512 -> 128, mirrored
    by the flip augmentation into a 0.75 px disagreement between samples.)"""
    if image.shape == (size, size):
        return image
    if nearest:
        return resize_mask(image, (size, size)).astype(image.dtype)
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def align_mask_orientation(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Turn a MedSeg infection mask to match its image; returns (mask, quarter turns applied).

    In the staged MedSeg PNGs most masks (91 of the 99 with infection) are a quarter turn
    (``np.rot90(mask, -1)``) away from their image, a few are aligned as they are. The decision is the
    data layer's ``covidct.data.datasets.medseg_mask_rot90`` (the orientation whose infection lies more
    inside the classical lung mask; the quarter turn when both are within 0.05). Manifests from
    ``load_dataset("medseg")`` already carry it in ``mask_rot90``; this is for masks read otherwise.

    Args:
        image: (H, W) uint8 display image.
        mask: (H, W) binary mask of the same square size.

    Returns:
        (aligned mask, k) with ``aligned = np.rot90(mask, k)``, k in {0, -1}.
    """
    turns = medseg_mask_rot90(image, mask)
    return (np.ascontiguousarray(np.rot90(mask, turns)) if turns else mask), turns


def dilated_lung_mask(image: np.ndarray, dilation_fraction: float = 0.03) -> np.ndarray:
    """Classical lung mask of a display image, dilated so pleural lesions and effusions stay in.

    Args:
        image: (H, W) uint8 display image.
        dilation_fraction: radius of the (elliptical) dilation as a fraction of the side (0.03: 15 px at 512).

    Returns:
        uint8 (H, W) {0, 1}.
    """
    lungs = (lung_mask(image, warn=False) > 0).astype(np.uint8)
    radius = max(1, int(round(dilation_fraction * max(image.shape))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(lungs, kernel)


LUNG_CROP_MARGIN = 0.05  # of the lung box's longer side, on every side (as the classification ``lungs`` stage)
CROPS = ("none", "lungs")


def lung_crop_box(lungs: np.ndarray, margin: float = LUNG_CROP_MARGIN) -> tuple[int, int, int]:
    """The square around a lung mask's bounding box: (top, left, side) in pixels of the mask's image.

    The square is centred on the box, its side the box's longer side plus ``margin`` of it on both sides;
    it may reach past the image (the crop is zero-padded there). An empty mask gives the whole image
    (padded to a square).
    """
    height, width = lungs.shape[:2]
    rows = np.flatnonzero(np.asarray(lungs).any(axis=1))
    cols = np.flatnonzero(np.asarray(lungs).any(axis=0))
    if rows.size == 0:
        top, bottom, left, right = 0, height, 0, width
    else:
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = int(round(max(bottom - top, right - left) * (1 + 2 * margin)))
    side = max(side, 1)
    return int((top + bottom - side) // 2), int((left + right - side) // 2), side


def crop_square(image: np.ndarray, top: int, left: int, side: int, size: int, nearest: bool = False) -> np.ndarray:
    """The ``side`` x ``side`` square at (top, left) of a 2-D image, zero outside the image, resized to ``size``."""
    height, width = image.shape[:2]
    out = np.zeros((side, side), dtype=image.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, height), min(left + side, width)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return resize_square(out, size, nearest=nearest)


def paste_crops(crops: np.ndarray, boxes: np.ndarray, frame_size: int) -> np.ndarray:
    """Put per-crop maps (e.g. probabilities) back into whole-slice frames of ``frame_size`` px (0 outside).

    Args:
        crops: float (N, S, S) maps in crop coordinates.
        boxes: (N, 4) the crops' ``SegmentationPairs.boxes`` (fractions of the source image).
        frame_size: side of the output frames (the whole source image resampled to a square).

    Returns:
        float32 (N, frame_size, frame_size), bilinear resampling.
    """
    crops = np.asarray(crops, dtype=np.float32)
    frames = np.zeros((len(crops), frame_size, frame_size), dtype=np.float32)
    for index, (crop, (top, left, side_h, side_w)) in enumerate(zip(crops, np.asarray(boxes, dtype=float))):
        scale_x, scale_y = side_w * frame_size / crop.shape[1], side_h * frame_size / crop.shape[0]
        # Pixel centres: crop pixel u maps to frame x = left * F + (u + 0.5) * scale_x - 0.5.
        matrix = np.array(
            [[scale_x, 0.0, left * frame_size + 0.5 * scale_x - 0.5], [0.0, scale_y, top * frame_size + 0.5 * scale_y - 0.5]]
        )
        frames[index] = cv2.warpAffine(
            crop, matrix, (frame_size, frame_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return frames


def lung_crop(image: np.ndarray, mask: np.ndarray | None, size: int, lungs: np.ndarray | None = None):
    """One slice cropped to the square around its (dilated classical) lungs and resized to ``size``.

    Args:
        image: (H, W) uint8 display image at its own resolution.
        mask: (H, W) {0, 1} true mask, or None (prediction: the mask crops come back None).
        size: side of the crop after resampling.
        lungs: (H, W) {0, 1} lung mask to crop around (default ``dilated_lung_mask(image)``).

    Returns:
        (image crop, mask crop, lung-mask crop, box as fractions (top, left, side/H, side/W), whole-slice
        mask at ``size``).
    """
    lungs = dilated_lung_mask(image) if lungs is None else lungs
    height, width = image.shape[:2]
    top, left, side = lung_crop_box(lungs)
    box = np.array([top / height, left / width, side / height, side / width], dtype=np.float64)
    return (
        crop_square(image, top, left, side, size),
        None if mask is None else crop_square(mask, top, left, side, size, nearest=True),
        crop_square(lungs, top, left, side, size, nearest=True),
        box,
        None if mask is None else resize_square(mask, size, nearest=True),
    )


def prepare_slice(image: np.ndarray, mask: np.ndarray | None, size: int, crop: str = "none", with_lungs: bool = False):
    """One slice (and its mask, or None) made into a segmenter's input at ``size`` px.

    ``crop="lungs"``: ``lung_crop`` (the square around the dilated classical lungs, at the source resolution);
    otherwise the whole slice resampled, with its resampled dilated lung mask when ``with_lungs``.

    Returns:
        (image, mask or None, lung mask or None, box or None, whole-slice mask or None), as ``lung_crop``.
    """
    if crop == "lungs":
        return lung_crop(image, mask, size)
    lungs = resize_square(dilated_lung_mask(image), size, nearest=True) if with_lungs else None
    resized_mask = None if mask is None else resize_square(mask, size, nearest=True)
    return resize_square(image, size), resized_mask, lungs, None, None


def crop_pairs_to_lungs(pairs: SegmentationPairs, size: int) -> SegmentationPairs:
    """``pairs`` (whole slices) as lung crops of ``size`` px, with ``boxes`` and ``frame_masks`` (see ``lung_crop``).

    ``load_pairs(..., crop="lungs")`` crops the source images at their own resolution instead; this is for
    pairs already in memory (phantoms, tests).
    """
    crops = [lung_crop(image[..., 0], mask, size) for image, mask in zip(pairs.images, pairs.masks)]
    return SegmentationPairs(
        images=np.stack([c[0] for c in crops])[..., None],
        masks=np.stack([c[1] for c in crops]),
        names=list(pairs.names),
        splits=pairs.splits,
        groups=pairs.groups,
        lungs=np.stack([c[2] for c in crops]),
        group_proxy=pairs.group_proxy,
        boxes=np.stack([c[3] for c in crops]),
        frame_masks=np.stack([c[4] for c in crops]),
    )


@dataclass(frozen=True)
class SegmentationStage:
    """The cache stage of segmentation pairs: ``prepare_slice`` on the 8-bit image, the mask placed alike.

    Attributes:
        crop: ``"none"`` (the whole slice resampled) or ``"lungs"`` (the square around the dilated lungs).
        with_lungs: store the dilated lung mask as the cache's ``masks`` (always with ``crop="lungs"``).
    """
    crop: str = "none"
    with_lungs: bool = False

    @property
    def stage_name(self) -> str:
        """The cache folder's prefix: ``segment-<crop>`` (``-lungs`` when lung masks are kept)."""
        return f"segment-{self.crop}" + ("-lungs" if self.with_lungs and self.crop == "none" else "")

    def __call__(self, image, size: int) -> list[StageOutput]:
        pixels = _display_u8(image)
        if self.crop != "lungs":
            image_in, _, lungs, _, _ = prepare_slice(pixels, None, size, self.crop, self.with_lungs)
            mask = lungs if lungs is not None else np.zeros((size, size), np.uint8)
            return [StageOutput(image_in, mask.astype(np.uint8))]
        source_lungs = dilated_lung_mask(pixels)
        top, left, side = lung_crop_box(source_lungs)
        image_in, _, lungs, _, _ = lung_crop(pixels, None, size, lungs=source_lungs)
        values = {"box_top": top, "box_left": left, "box_side": side,
                  "source_height": pixels.shape[0], "source_width": pixels.shape[1]}
        return [StageOutput(image_in, lungs.astype(np.uint8), "", values)]

    def target(self, mask: np.ndarray, output: StageOutput, size: int) -> np.ndarray:
        """The bool source-resolution mask in the output's geometry: uint8 {0, 1} (size, size)."""
        mask = np.asarray(mask).astype(np.uint8)
        if self.crop == "lungs":
            v = output.values
            return crop_square(mask, v["box_top"], v["box_left"], v["box_side"], size, nearest=True)
        return resize_square(mask, size, nearest=True)


def _display_u8(image) -> np.ndarray:
    """A decoded ``CTImage`` as the 8-bit grayscale a segmenter sees (HU through ``to_display_u8``)."""
    if image.array.ndim != 2:
        raise CovidctError(f"{image.path}: segmentation pairs are 2-D images, got shape {image.array.shape}.")
    if image.unit == "display":
        return np.clip(np.rint(image.array), 0, 255).astype(np.uint8)
    return to_display_u8(image.array)


def _dataset_folder(dataset: str, root) -> Path | None:
    """The dataset folder under a data root (its registered folder names), or ``root`` itself."""
    if root is None:
        return None  # load_dataset looks in $COVIDCT_DATA_ROOT (covidct.data.datasets.data_root), then data/raw
    root = Path(root)
    for candidate in dataset_candidates(dataset, root)[:-1]:
        if candidate.is_dir():
            return candidate
    if not root.is_dir():
        raise CovidctError(f"Dataset {dataset!r} not found: {root} does not exist. Set COVIDCT_DATA_ROOT or pass --root.")
    return root  # the dataset folder itself was given


def pairs_manifest(dataset: str, root=None):
    """The Manifest of a mask dataset (``load_dataset``), checked to have a mask file on every row."""
    if dataset not in SEGMENTATION_DATASETS:
        raise unknown_name_error("segmentation dataset", dataset, SEGMENTATION_DATASETS)
    manifest = load_dataset(dataset, _dataset_folder(dataset, root))
    missing = manifest["mask_path"].astype(str) == ""
    if missing.any():
        raise CovidctError(f"{manifest['path'].iloc[int(np.argmax(missing))]}: no mask file for this image.")
    return manifest


def _cached(manifest, stage: SegmentationStage, size: int, cache_root, workers):
    cache = build_cache(manifest, stage, size, cache_root=cache_root, workers=workers, progress=False)
    if len(cache.failed):
        first = cache.failed.iloc[0]
        raise CovidctError(f"{len(cache.failed)} image/mask pair(s) could not be read, e.g. {first['error']}")
    return cache


def load_pairs(
    dataset: str, root=None, size: int = 64, with_lungs: bool = False, crop: str = "none",
    cache_root=None, workers: int | None = None,
) -> SegmentationPairs:
    """All image/mask pairs of a segmentation dataset at ``size`` x ``size``, through the slice cache.

    Args:
        dataset: ``"kaggle-lungs"`` or ``"medseg"``.
        root: a data root holding the dataset folder, or the dataset folder itself (default
            ``$COVIDCT_DATA_ROOT``, else ./data: ``covidct.data.datasets.data_root``).
        size: output side in pixels (images: area/linear resampling; masks: area-averaged and cut at 0.5).
        with_lungs: also keep the ``dilated_lung_mask`` of each image (for lung-masked inputs).
        crop: ``"none"`` (whole slices) or ``"lungs"``: each pair cropped at its source resolution to the
            square around its dilated lung mask (``lung_crop``), so the lungs fill ``size`` px; the pairs then
            carry ``boxes``, ``frame_masks`` and ``lungs``.
        cache_root: folder of the slice caches (default ``$COVIDCT_CACHE``, else ``.cache/covidct``).
        workers: cache-building processes (default: all cores).

    Returns:
        ``SegmentationPairs``; masks are binary (``mask > 0``), MedSeg masks turned to match their images.
    """
    if crop not in CROPS:
        raise unknown_name_error("segmentation crop", crop, CROPS)
    manifest = pairs_manifest(dataset, root)
    cache_root = default_cache_root() if cache_root is None else cache_root
    cropped = crop == "lungs"
    cache = _cached(manifest, SegmentationStage(crop, with_lungs or cropped), size, cache_root, workers)
    rows = cache.manifest
    boxes = frame_masks = None
    if cropped:
        side, height, width = (rows[c].to_numpy(dtype=np.float64) for c in ("box_side", "source_height", "source_width"))
        boxes = np.stack([rows["box_top"] / height, rows["box_left"] / width, side / height, side / width], axis=1)
        frame_masks = np.array(_cached(manifest, SegmentationStage(), size, cache_root, workers).targets)
    proxy = manifest["group_proxy"].iloc[0] if "group_proxy" in manifest else ""
    return SegmentationPairs(
        images=np.array(cache.images),
        masks=np.array(cache.targets),
        names=rows["path"].astype(str).tolist(),
        splits=rows["split"].astype(str).to_numpy(),
        groups=rows["group"].astype(str).to_numpy(),
        lungs=np.array(cache.masks) if (with_lungs or cropped) else None,
        group_proxy=str(proxy),
        boxes=boxes,
        frame_masks=frame_masks,
    )


def phantom_pairs(n: int = 60, size: int = 64, target: str = "lungs", seed: int = 0) -> SegmentationPairs:
    """Synthetic image/mask pairs from ``covidct.data.phantom`` (for demos and smoke runs without data).

    Args:
        n: number of slices (5 per synthetic patient, who is the group).
        size: side in pixels.
        target: ``"lungs"`` (both lungs) or ``"lesion"`` (ground glass / consolidation).
        seed: random seed.

    Returns:
        ``SegmentationPairs`` with images shown through the lung window; the last ~20% of the patients
        form the "test" split.
    """
    if target not in ("lungs", "lesion"):
        raise unknown_name_error("phantom target", target, ("lungs", "lesion"))
    phantoms = make_dataset(n=n, size=size, seed=seed)
    images = np.stack([to_display_u8(image) for image in phantoms.images_hu])[..., None]
    masks = (phantoms.lung_labels > 0) if target == "lungs" else phantoms.lesion_masks
    groups = np.array(phantoms.groups)
    unique = list(dict.fromkeys(groups))
    test_groups = set(unique[int(round(0.8 * len(unique))) :])
    splits = np.array(["test" if g in test_groups else "train" for g in groups])
    names = [f"phantom_{i:04d}_{label}" for i, label in enumerate(phantoms.labels)]
    return SegmentationPairs(images, masks.astype(np.uint8), names, splits, groups)
