"""Readers: one entry point, ``read_image(path)``, for PNG/JPG/BMP/TIFF, DICOM, NIfTI and NumPy files."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UNITS = ("HU", "display")


@dataclass
class CTImage:
    """A decoded image or volume with its intensity unit.

    Attributes:
        array: float32, (H, W) for a slice or (D, H, W) for a volume (axial slices along axis 0).
        unit: ``"HU"`` (Hounsfield units: DICOM, NIfTI, phantoms) or ``"display"`` (0-255 grey levels
            of PNG/JPG exports, whose original HU window is unknown).
        path: the file (or series folder) it came from.
        spacing: voxel/pixel spacing in mm, (row, col) or (slice, row, col), when known.
        meta: reader-specific facts (bit depth, file format, series uid, ...).
    """

    array: np.ndarray
    unit: str
    path: str = ""
    spacing: tuple | None = None
    meta: dict = field(default_factory=dict)
