"""Image/mask pairs for segmentation: ``kaggle-lungs`` (lungs) and ``medseg`` (infection).

``load_pairs(dataset, root, size)`` returns every pair of a dataset resized to ``size`` with its split
and group. It uses the data layer's ``covidct.data.datasets.load_dataset`` when that knows the dataset
(manifest rows with ``mask_path``), else reads the staged folder layouts directly:

- ``kaggle-lungs``: ``<root>/kaggle-lungs-ct-64px/{train,test}/{images,masks}/*.png``; the official
  train/test split; every slice is its own group (no patient ids are recoverable).
- ``medseg``: ``<root>/medseg-covid19-100/{images,masks}/tr_{im,mask}_zNNN.png``; the binary infection
  mask is ``mask > 0`` (labels were rescaled per slice). Most masks are a quarter turn away from their
  image in the staged PNGs: each mask is turned by the data layer's ``mask_rot90`` column (one source
  of truth: ``covidct.data.datasets.medseg_mask_rot90``). No patient ids are given: the slices of one
  patient are consecutive, so blocks of ``MEDSEG_BLOCK`` consecutive slice numbers are the group proxy
  (the data layer's ``group``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from covidct.data.datasets import data_root
from covidct.errors import CovidctError, unknown_name_error
from covidct.preprocess.body import resize_mask

logger = logging.getLogger(__name__)

SEGMENTATION_DATASETS = {"kaggle-lungs": "kaggle-lungs-ct-64px", "medseg": "medseg-covid19-100"}
MEDSEG_BLOCK = 5  # same as covidct.data.datasets.MEDSEG_BLOCK


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


def default_root() -> Path:
    """The data root: ``$COVIDCT_DATA_ROOT``, else ``./data`` (:func:`covidct.data.datasets.data_root`)."""
    return data_root()


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


def _rows_from_folders(dataset: str, root: Path) -> list[dict]:
    folder = root / SEGMENTATION_DATASETS[dataset]
    if not folder.is_dir() and ((root / "images").is_dir() or (root / "train").is_dir()):
        folder = root  # the dataset folder itself was given
    if not folder.is_dir():
        raise CovidctError(
            f"Dataset {dataset!r} not found under {root}: expected {folder}. Set COVIDCT_DATA_ROOT or pass --root."
        )
    rows = []
    if dataset == "kaggle-lungs":
        for split in ("train", "test"):
            for image_path in sorted((folder / split / "images").glob("*.png")):
                mask_path = folder / split / "masks" / image_path.name
                rows.append(
                    {"path": image_path, "mask_path": mask_path, "split": split, "group": image_path.stem}
                )
    else:
        for image_path in sorted((folder / "images").glob("*.png")):
            mask_path = folder / "masks" / image_path.name.replace("_im_", "_mask_")
            group = _medseg_group(image_path, len(rows) + 1)
            rows.append(
                {
                    "path": image_path,
                    "mask_path": mask_path,
                    "split": "",
                    "group": group,
                    "group_proxy": f"blocks of {MEDSEG_BLOCK} consecutive slice numbers",
                }
            )
    if not rows:
        raise CovidctError(f"No image/mask pairs found in {folder} for dataset {dataset!r}.")
    return rows


def _rows_from_data_layer(dataset: str, root: Path) -> list[dict] | None:
    try:
        from covidct.data.datasets import load_dataset
    except ImportError:
        return None
    folder = root / SEGMENTATION_DATASETS[dataset]
    if not folder.is_dir():
        folder = root  # the dataset folder itself was given
    try:
        manifest = load_dataset(dataset, folder)
    except Exception as error:  # noqa: BLE001  (fall back to the folder reader, say why)
        logger.info("covidct.data.datasets could not load %s (%s); reading folders directly.", dataset, error)
        return None
    if "mask_path" not in manifest or (manifest["mask_path"].astype(str) == "").any():
        return None
    rows = []
    for record in manifest.to_dict("records"):
        row = {
            "path": Path(record["path"]),
            "mask_path": Path(record["mask_path"]),
            "split": str(record["split"]),
            "group": str(record["group"]),
            "group_proxy": str(record.get("group_proxy", "")),
        }
        if "mask_rot90" in record:
            row["mask_rot90"] = int(record["mask_rot90"])
        rows.append(row)
    return rows


def _medseg_group(path: Path, fallback: int) -> str:
    """Blocks of ``MEDSEG_BLOCK`` consecutive slice numbers: the patient proxy for MedSeg (data layer's rule)."""
    from covidct.data.datasets import medseg_group

    return medseg_group(path, fallback)


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
    from covidct.data.datasets import medseg_mask_rot90

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
    from covidct.preprocess.lungs import lung_mask

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


def load_pairs(
    dataset: str, root=None, size: int = 64, with_lungs: bool = False, crop: str = "none"
) -> SegmentationPairs:
    """Read all image/mask pairs of a segmentation dataset at ``size`` x ``size``.

    Args:
        dataset: ``"kaggle-lungs"`` or ``"medseg"``.
        root: data root holding the staged folders (default ``COVIDCT_DATA_ROOT``, else ./data).
        size: output side in pixels (images: area/linear resampling, masks: nearest).
        with_lungs: also compute ``dilated_lung_mask`` of each image (for lung-masked inputs).
        crop: ``"none"`` (whole slices) or ``"lungs"``: each pair cropped at its source resolution to the
            square around its dilated lung mask (``lung_crop``), so the lungs fill ``size`` px; the pairs then
            carry ``boxes``, ``frame_masks`` and ``lungs``.

    Returns:
        ``SegmentationPairs``; masks are binary (``mask > 0``), MedSeg masks turned to match their images.
    """
    if dataset not in SEGMENTATION_DATASETS:
        raise unknown_name_error("segmentation dataset", dataset, SEGMENTATION_DATASETS)
    if crop not in CROPS:
        raise unknown_name_error("segmentation crop", crop, CROPS)
    root = Path(root) if root is not None else default_root()
    rows = _rows_from_data_layer(dataset, root) or _rows_from_folders(dataset, root)
    images, masks, lungs, boxes, frame_masks = [], [], [], [], []
    for row in rows:
        if not Path(row["mask_path"]).is_file():
            raise CovidctError(f"Mask {row['mask_path']} for image {row['path']} is missing.")
        image = read_gray(row["path"])
        mask = (read_gray(row["mask_path"]) > 0).astype(np.uint8)
        if dataset == "medseg":
            turns = row.get("mask_rot90")
            if turns is None:  # folders read directly: decide here, by the data layer's criterion
                mask, _ = align_mask_orientation(image, mask)
            else:
                mask = np.ascontiguousarray(np.rot90(mask, int(turns)))
        image_in, mask_in, lungs_in, box, frame_mask = prepare_slice(image, mask, size, crop, with_lungs)
        images.append(image_in)
        masks.append(mask_in)
        if lungs_in is not None:
            lungs.append(lungs_in)
        if crop == "lungs":
            boxes.append(box)
            frame_masks.append(frame_mask)
    cropped = crop == "lungs"
    return SegmentationPairs(
        images=np.stack(images)[..., None],
        masks=np.stack(masks),
        names=[str(r["path"]) for r in rows],
        splits=np.array([r["split"] for r in rows]),
        groups=np.array([r["group"] for r in rows]),
        lungs=np.stack(lungs) if (with_lungs or cropped) else None,
        group_proxy=str(rows[0].get("group_proxy", "")),
        boxes=np.stack(boxes) if cropped else None,
        frame_masks=np.stack(frame_masks) if cropped else None,
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
    from covidct.data.phantom import make_dataset
    from covidct.preprocess.body import to_display_u8

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
