"""Phantom datasets written to disk (slices with mask PNGs, volumes) and a figure of the classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from covidct.data.manifest import make_manifest
from covidct.data.phantom.containers import CLASSES
from covidct.data.phantom.generate import make_dataset, make_slice, make_volume
from covidct.errors import CovidctError


def write_dataset(
    root, n: int = 600, size: int = 128, seed: int = 0, slices_per_patient: int = 5
) -> pd.DataFrame:
    """Write a phantom dataset to disk and return its Manifest.

    Layout (the manifest, also saved as ``root/manifest.csv``, is the source of truth)::

        root/<label>/<patient>_<k>.npy           int16 HU slice (H, W)
        root/masks/<label>/<patient>_<k>_lungs.png    uint8 lung labels: 0 background, 1 right, 2 left
        root/masks/<label>/<patient>_<k>_lesion.png   uint8 lesion mask: 0 / 1

    Masks live under ``root/masks/`` so that a folder-per-class reader of ``root/<label>/`` only sees
    images. The mask PNGs hold label values (not 0/255): read them with ``> 0`` for a binary lung mask.

    Args:
        root: output folder (created when missing; existing phantom files are overwritten, as they are
            a pure function of the arguments).
        n: number of slices.
        size: slice height and width in pixels.
        seed: dataset seed.
        slices_per_patient: slices per synthetic patient.

    Returns:
        A Manifest (``covidct.data.manifest.make_manifest``) with columns path, label, group (patient),
        split (""), source ("phantom"), mask_path (lung labels PNG), slice_index (-1), lesion_mask_path.
    """
    import cv2

    root = Path(root)
    data = make_dataset(n=n, size=size, seed=seed, slices_per_patient=slices_per_patient)
    counters: dict[str, int] = {}
    rows = []
    for i, (label, group) in enumerate(zip(data.labels, data.groups)):
        k = counters.get(group, 0)
        counters[group] = k + 1
        image_dir = root / label
        mask_dir = root / "masks" / label
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{group}_{k}"
        image_path = image_dir / f"{stem}.npy"
        lung_path = mask_dir / f"{stem}_lungs.png"
        lesion_path = mask_dir / f"{stem}_lesion.png"
        hu = np.clip(np.rint(data.images_hu[i]), -32768, 32767).astype(np.int16)
        np.save(image_path, hu)
        if not cv2.imwrite(str(lung_path), data.lung_labels[i]):
            raise CovidctError(
                f"write_dataset: could not write {lung_path}; check that the folder is writable."
            )
        cv2.imwrite(str(lesion_path), data.lesion_masks[i].astype(np.uint8))
        rows.append(
            {
                "path": str(image_path.resolve()),
                "label": label,
                "group": group,
                "split": "",
                "source": "phantom",
                "mask_path": str(lung_path.resolve()),
                "slice_index": -1,
                "lesion_mask_path": str(lesion_path.resolve()),
            }
        )
    manifest = make_manifest(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    return manifest


def write_phantom_volumes(root, n: int = 12, shape=(32, 64, 64), seed: int = 0) -> pd.DataFrame:
    """Write phantom volumes (balanced classes) as int16 HU ``.npy`` files and return their Manifest.

    Layout: ``root/<label>/phantomvol_<i>.npy`` (D, H, W), inferior to superior; each volume is its own
    patient (``group``). Volume ``i`` has class ``CLASSES[i % 3]`` and seed ``seed * 100003 + i``.

    Args:
        root: output folder.
        n: number of volumes.
        shape: (D, H, W) of each volume (>= 4, 32, 32).
        seed: dataset seed.

    Returns:
        A Manifest (path, label, group, split "", source "phantom-volume", slice_index -1).
    """
    root = Path(root)
    rows = []
    for i in range(int(n)):
        label = CLASSES[i % len(CLASSES)]
        volume = make_volume(label, shape=tuple(shape), seed=seed * 100003 + i)
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"phantomvol_{i:04d}.npy"
        np.save(path, np.clip(np.rint(volume.volume_hu), -32768, 32767).astype(np.int16))
        rows.append(
            {
                "path": str(path.resolve()),
                "label": label,
                "group": f"phantomvol_{i:04d}",
                "split": "",
                "source": "phantom-volume",
                "slice_index": -1,
            }
        )
    return make_manifest(rows)


def plot_phantom_classes(size: int = 256, seed: int = 3):
    """One phantom slice per class in the lung window, above its lung labels and lesion mask.

    Args:
        size: slice side in pixels.
        seed: phantom seed (the same for every class).

    Returns:
        A matplotlib Figure (2 rows x 3 classes).
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.4 * len(CLASSES), 7))
    axes = figure.subplots(2, len(CLASSES))
    for column, label in enumerate(CLASSES):
        item = make_slice(label, size=size, seed=seed)
        # Lung window W1500 / L-600 shown as HU -1350..150.
        axes[0, column].imshow(item.image_hu, cmap="gray", vmin=-1350, vmax=150)
        axes[0, column].set_title(f"{label} (lung window)")
        axes[1, column].imshow(item.lung_labels + 3 * item.lesion.astype(np.uint8), cmap="viridis", vmin=0, vmax=5)
        axes[1, column].set_title("lungs (1 right, 2 left) + lesion")
    for axis in axes.ravel():
        axis.axis("off")
    figure.suptitle("covidct synthetic CT phantoms (not patient data)")
    figure.tight_layout()
    return figure
