"""Datasets with a mask per image: MedSeg (infection) and the Kaggle lung set (lungs).

Their rows carry ``mask_path``; MedSeg's also ``mask_rot90``, the quarter turns that align each staged mask
with its image (decided with the classical lung mask, which ``covidct.preprocess.lungs`` registers here
with ``register_lung_mask``: the data layer does not import the preprocessing layer above it).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.data.registry import (
    _finish,
    image_files,
    nonempty_images,
    register_dataset,
    split_of,
    subfolders,
)
from covidct.errors import CovidctError


def _paired(images_folder: Path, masks_folder: Path) -> list[tuple[Path, Path]]:
    """Pair images with masks by file name, or by the last number in the name (tr_im_z001 / tr_mask_z001)."""
    images = nonempty_images(images_folder, recursive=False)
    masks = image_files(masks_folder, recursive=False) if masks_folder.is_dir() else []
    by_name = {m.name: m for m in masks}
    by_number = {}
    for mask in masks:
        numbers = re.findall(r"\d+", mask.stem)
        if numbers:
            by_number[int(numbers[-1])] = mask
    pairs = []
    for image in images:
        mask = by_name.get(image.name)
        if mask is None:
            numbers = re.findall(r"\d+", image.stem)
            mask = by_number.get(int(numbers[-1])) if numbers else None
        if mask is None:
            raise CovidctError(f"{image}: no mask with the same name or number in {masks_folder}.")
        pairs.append((image, mask))
    return pairs


MEDSEG_BLOCK = 5
MEDSEG_PROXY = f"blocks of {MEDSEG_BLOCK} consecutive slice numbers (no patient ids; a patient's slices are consecutive)"
# Bump when the orientation criterion below changes: cached decisions are then recomputed.
MEDSEG_ORIENTATION_VERSION = "1"


def medseg_group(path: str | Path, fallback: int = 0) -> str:
    """Group of a MedSeg slice: its block of ``MEDSEG_BLOCK`` consecutive slice numbers (z001-z005 -> block00)."""
    numbers = re.findall(r"\d+", Path(path).stem)
    index = int(numbers[-1]) if numbers else fallback
    return f"medseg_block{(index - 1) // MEDSEG_BLOCK:02d}"


_LUNG_MASK: list = []


def register_lung_mask(lung_mask: Callable) -> None:
    """Register the classical lung mask ``lung_mask(image_u8, warn=False)`` the MedSeg orientation check uses.

    ``covidct.preprocess.lungs`` registers its ``lung_mask`` when it is imported (``import covidct.preprocess``):
    the data layer does not import the preprocessing layer above it.
    """
    _LUNG_MASK[:] = [lung_mask]


def _lung_mask() -> Callable:
    if not _LUNG_MASK:
        raise CovidctError(
            "MedSeg's mask orientation needs the classical lung mask: `import covidct.preprocess` first "
            "(it registers covidct.preprocess.lungs.lung_mask with covidct.data.datasets.register_lung_mask)."
        )
    return _LUNG_MASK[0]


def medseg_mask_rot90(image, mask) -> int:
    """Quarter turns ``k`` (0 or -1) that align a MedSeg mask with its image: ``np.rot90(mask, k)``.

    In the staged MedSeg PNGs most infection masks (91 of the 99 with infection) are a quarter turn
    (``np.rot90(mask, -1)``) away from their image; a few (e.g. z010, z090) are aligned as they are. The
    PROVENANCE note ("images and masks are consistent") is wrong for them. The orientation whose
    infection lies more inside the classical lung mask of the image wins; when both are within 0.05
    (small central lesions) the majority orientation (a quarter turn) is used.

    Args:
        image: (H, W) uint8 display image.
        mask: (H, W) mask (> 0 is infection), same square size.

    Returns:
        -1 (turn the mask a quarter turn clockwise) or 0 (keep it). Empty or non-square masks give 0.
    """
    mask = np.asarray(mask) > 0
    if not mask.any() or mask.shape[0] != mask.shape[1] or np.shape(image) != mask.shape:
        return 0
    lungs = _lung_mask()(np.asarray(image), warn=False) > 0
    as_is, quarter = lungs[mask].mean(), lungs[np.rot90(mask, -1)].mean()
    return 0 if as_is > quarter + 0.05 else -1


def _medseg_turns(pairs: list[tuple[Path, Path]], cache_root: str | Path | None | bool) -> list[int]:
    """``medseg_mask_rot90`` of every pair, cached in ``<cache_root>/medseg_mask_rot90.json`` by content hash."""
    import cv2

    # The decision depends on the lung-mask code too: a change there recomputes it.
    lung_code = inspect.getsource(inspect.getmodule(_lung_mask()))
    version = MEDSEG_ORIENTATION_VERSION + hashlib.sha256(lung_code.encode()).hexdigest()
    keys = []
    for image, mask in pairs:
        digest = hashlib.sha256(version.encode())
        digest.update(image.read_bytes())
        digest.update(mask.read_bytes())
        keys.append(digest.hexdigest())
    cache_file = None
    known: dict = {}
    if cache_root is not False:
        root = Path(cache_root) if cache_root else Path(os.environ.get("COVIDCT_CACHE", ".cache/covidct"))
        cache_file = root / "medseg_mask_rot90.json"
        if cache_file.is_file():
            try:
                known = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                known = {}
    missing = [i for i, key in enumerate(keys) if key not in known]
    for i in missing:
        image, mask = pairs[i]
        pixels = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
        labels = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        if pixels is None or labels is None:
            raise CovidctError(f"{image if pixels is None else mask}: cannot read the MedSeg image/mask (corrupt?).")
        known[keys[i]] = medseg_mask_rot90(pixels, labels)
    if missing and cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, cache_file)
    return [int(known[key]) for key in keys]


@register_dataset("medseg", "MedSeg COVID-19 CT segmentation (images/ + infection masks/)", ("medseg-covid19-100", "medseg"))
def load_medseg(root: Path, cache_root: str | Path | None | bool = None) -> pd.DataFrame:
    """MedSeg: ``images/tr_im_zNNN.png`` + ``masks/tr_mask_zNNN.png`` (infection = mask > 0), all COV.

    No patient ids are published (100 slices of >40 patients). A patient's slices are consecutive, so
    blocks of ``MEDSEG_BLOCK`` consecutive slice numbers are the group proxy (20 groups).

    Most staged masks are a quarter turn away from their image: the column ``mask_rot90`` holds, per
    row, the quarter turns ``k`` that align the mask (``np.rot90(mask, k)``, k in {0, -1}; see
    ``medseg_mask_rot90``). Every reader of MedSeg masks applies it (``covidct.data.cache`` targets,
    ``covidct.segment.data``). The decision needs a lung mask per slice (~0.1 s), so it is computed
    once and cached by the files' content hashes.

    Args:
        root: the dataset folder.
        cache_root: where the orientation decisions are cached (default ``$COVIDCT_CACHE`` or
            ``.cache/covidct``; ``False``: no cache).

    Returns:
        Manifest with ``mask_rot90`` and ``group_proxy`` columns.
    """
    root = Path(root)
    pairs = _paired(root / "images", root / "masks")
    turns = _medseg_turns(pairs, cache_root)
    rows = [{"path": str(i.resolve()), "mask_path": str(m.resolve()), "label": "COV", "group": medseg_group(i, n + 1),
             "split": "", "mask_rot90": k} for n, ((i, m), k) in enumerate(zip(pairs, turns))]
    return _finish(rows, "medseg", MEDSEG_PROXY)


@register_dataset("kaggle-lungs", "Kaggle 'Finding lungs in CT data' (images + lung masks)", ("kaggle-lungs-ct-64px",))
def load_kaggle_lungs(root: Path) -> pd.DataFrame:
    """Kaggle lungs: ``train|test/images`` + ``train|test/masks`` (or the original ``2d_images``/``2d_masks``).

    The label is ``unlabelled`` (a segmentation set); the train/test split of the source is kept.
    """
    root = Path(root)
    rows = []
    if (root / "2d_images").is_dir():
        layouts = [("", root / "2d_images", root / "2d_masks")]
    else:
        layouts = [(split_of(s.name) or "", s / "images", s / "masks") for s in subfolders(root) if (s / "images").is_dir()]
    if not layouts:
        raise CovidctError(f"{root}: expected train/images + train/masks (or 2d_images + 2d_masks) for 'kaggle-lungs'.")
    for split, images, masks in layouts:
        for image, mask in _paired(images, masks):
            rows.append({"path": str(image.resolve()), "mask_path": str(mask.resolve()), "label": "unlabelled",
                         "group": f"{split}/{image.stem}", "split": split})
    return _finish(rows, "kaggle-lungs", "image (no patient ids)")
