"""Phantom constants and the containers the generator returns (slices, sets of slices, volumes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CLASSES = ("COV", "Normal", "OtherPneumonia")
RIGHT_LUNG, LEFT_LUNG = 1, 2
FIELD_OF_VIEW_MM = 360.0
AIR_HU = -1000.0

# Below this relative lung size (0..1) a volume slice holds no lung (above the apex / below the bases).
_MIN_LUNG_SCALE = 0.15


# --------------------------------------------------------------------------------------------------
# Public containers
# --------------------------------------------------------------------------------------------------
@dataclass
class PhantomSlice:
    """One synthetic axial slice.

    Attributes:
        image_hu: float32 (H, W), Hounsfield units (noise included).
        body: bool (H, W), everything inside the skin (lungs, bone, heart, trachea included).
        left_lung: bool (H, W), the patient's left lung (image right, lung label 2).
        right_lung: bool (H, W), the patient's right lung (image left, lung label 1).
        lesion: bool (H, W), ground-glass opacities or consolidation; always inside the lungs.
        label: one of ``CLASSES``.
        bone: bool (H, W), spine, ribs and sternum.
        table: bool (H, W), the patient table (outside the body).
        info: generation facts (``lesion_sides``, ``pattern``, ``noise_sd_hu``, ``pixel_spacing_mm``).
    """

    image_hu: np.ndarray
    body: np.ndarray
    left_lung: np.ndarray
    right_lung: np.ndarray
    lesion: np.ndarray
    label: str
    bone: np.ndarray | None = None
    table: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def lung_labels(self) -> np.ndarray:
        """uint8 (H, W): 0 background, 1 right lung (image left), 2 left lung (image right)."""
        labels = np.zeros(self.image_hu.shape, dtype=np.uint8)
        labels[self.right_lung] = RIGHT_LUNG
        labels[self.left_lung] = LEFT_LUNG
        return labels


@dataclass
class PhantomSet:
    """A stack of phantom slices grouped by synthetic patient.

    Attributes:
        images_hu: float32 (N, H, W) in HU.
        labels: N class names.
        groups: N patient ids (``phantom_0000`` ...); all slices of a patient share a class.
        lung_labels: uint8 (N, H, W): 0 background, 1 right lung, 2 left lung.
        lesion_masks: bool (N, H, W).
        body_masks: bool (N, H, W).
    """

    images_hu: np.ndarray
    labels: list[str]
    groups: list[str]
    lung_labels: np.ndarray
    lesion_masks: np.ndarray
    body_masks: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PhantomVolume:
    """A synthetic chest CT volume: axial slices along axis 0, inferior (0) to superior (D-1).

    Attributes:
        volume_hu: float32 (D, H, W) in HU.
        lung_labels: uint8 (D, H, W): 0 background, 1 right lung, 2 left lung.
        lesion_masks: bool (D, H, W), inside the lungs.
        label: one of ``CLASSES``.
        body_masks: bool (D, H, W).
        spacing_mm: voxel spacing (slice, row, column) in mm.
    """

    volume_hu: np.ndarray
    lung_labels: np.ndarray
    lesion_masks: np.ndarray
    label: str
    body_masks: np.ndarray | None = None
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
