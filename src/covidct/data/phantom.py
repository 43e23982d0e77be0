"""Synthetic chest CT phantoms in Hounsfield units, with exact masks.

The phantoms are the built-in ``phantom`` dataset and the fixture of every unit test: they look like
axial chest CT slices closely enough for preprocessing, lung masks, classifiers and Grad-CAM to be
exercised, and every structure comes with its exact mask, so tests can assert numbers.

What a slice holds (values in HU, before noise):

- air outside the body: -1000; a patient table below the body (a foam core near -500 between two
  thin carbon shells near +150; the patient lies supine, so the table is posterior, at the image bottom);
- the body: soft tissue from 0 to 60 HU under a subcutaneous fat ring near -100 HU, the heart (~+40 HU)
  in the anterior mediastinum, a trachea (air, with a soft-tissue wall) at the top of the mediastinum;
- bone 400..1000 HU: the spine (cortical shell ~900 HU around marrow ~500 HU, spinal canal ~+20 HU)
  at the posterior midline, ribs as small ellipses around the lungs, the sternum at the anterior midline;
- two lungs as deformed ellipses, parenchyma about -850 HU (slightly denser posteriorly, as in a supine
  patient), with vessels: small bright dots and branches (~+40 HU) blended in by partial volume;
- Gaussian noise over the whole image (standard deviation 8..25 HU, one value per patient).

**Orientation (radiological convention).** Rows run anterior (row 0) to posterior; columns run from
the patient's right (column 0) to the patient's left. So the patient's *right* lung appears on the
*image left*: ``right_lung`` occupies small column indices and carries lung label 1; ``left_lung`` is on
the image right and carries label 2 (``lung_labels``: 0 background, 1 right lung, 2 left lung).
Volumes stack axial slices along axis 0 from inferior (index 0, feet side) to superior (head side).

Classes (``CLASSES``):

- ``Normal``: no lesion.
- ``COV``: COVID-19 pattern: bilateral, peripheral (subpleural), patchy ground-glass opacities of
  -500..-300 HU, several blobs in each lung, more often posterior and (in volumes) in the lower lobes.
  Every 2D ``COV`` slice has lesion pixels in both lungs.
- ``OtherPneumonia``: dense consolidation of -100..+40 HU in one lung only (unilateral), either lobar
  (the lung region beyond a fissure-like plane) or focal (one or two large blobs), in 60% of cases
  with air bronchograms (thin air tubes of about -870 HU inside the consolidation).

Lesions are clipped to the lung masks (``lesion`` is a subset of the lungs), the lungs lie inside the
body and never overlap bone, the heart or the trachea. Everything is a deterministic function of the
seed (a ``numpy.random.Generator``): the same seed gives the same arrays on any machine.

Example::

    from covidct.data.phantom import make_dataset, make_slice
    one = make_slice("COV", size=256, seed=3)          # PhantomSlice
    data = make_dataset(n=600, size=128, seed=0)       # PhantomSet, 120 patients x 5 slices
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from covidct.data.manifest import make_manifest
from covidct.errors import CovidctError, unknown_name_error

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


# --------------------------------------------------------------------------------------------------
# Geometry helpers (normalised coordinates: the longer image side spans [-1, 1])
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ellipse:
    """A rotated ellipse whose radius is modulated by angular harmonics k = 2, 3, ..."""

    cx: float
    cy: float
    ax: float
    ay: float
    angle: float = 0.0
    eps: tuple = ()
    phases: tuple = ()

    def scaled(self, factor: float) -> _Ellipse:
        return replace(self, ax=self.ax * factor, ay=self.ay * factor)

    def point(self, phi: float, rho: float, side_sign: float = 1.0) -> tuple[float, float]:
        """Point at parametric angle ``phi`` and relative radius ``rho`` (x mirrored by side_sign)."""
        x_local = side_sign * self.ax * rho * math.cos(phi)
        y_local = self.ay * rho * math.sin(phi)
        cos_a, sin_a = math.cos(self.angle), math.sin(self.angle)
        return (self.cx + x_local * cos_a - y_local * sin_a, self.cy + x_local * sin_a + y_local * cos_a)


@functools.lru_cache(maxsize=16)
def _axes(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates of rows (v, anterior -) and columns (u, patient right -)."""
    scale = 2.0 / max(height, width)
    v = ((np.arange(height) + 0.5 - height / 2) * scale).astype(np.float32)
    u = ((np.arange(width) + 0.5 - width / 2) * scale).astype(np.float32)
    v.flags.writeable = False
    u.flags.writeable = False
    return v, u


def _region(shape_hw, ell: _Ellipse, margin: float = 1.0):
    """Normalised radius (<= 1 inside) of a deformed ellipse, computed on its bounding box only.

    Returns:
        (row_slice, col_slice, ratio) where ratio is float32 over the box, or None when the box is empty.
    """
    v, u = _axes(*shape_hw)
    reach = max(ell.ax, ell.ay) * (1.0 + sum(abs(e) for e in ell.eps)) * margin
    r0 = int(np.searchsorted(v, ell.cy - reach))
    r1 = int(np.searchsorted(v, ell.cy + reach))
    c0 = int(np.searchsorted(u, ell.cx - reach))
    c1 = int(np.searchsorted(u, ell.cx + reach))
    if r1 <= r0 or c1 <= c0:
        return None
    du = u[c0:c1][None, :] - np.float32(ell.cx)
    dv = v[r0:r1][:, None] - np.float32(ell.cy)
    cos_a, sin_a = np.float32(math.cos(ell.angle)), np.float32(math.sin(ell.angle))
    x = (du * cos_a + dv * sin_a) * np.float32(1.0 / ell.ax)
    y = (dv * cos_a - du * sin_a) * np.float32(1.0 / ell.ay)
    radius = np.sqrt(x * x + y * y)
    if len(ell.eps):
        # cos(k theta + phase) from cos/sin of theta by the angle-addition recurrence (no arctan2, no
        # cos), in place: fresh temporaries for every term cost more (allocation) than the arithmetic.
        inverse = np.float32(1.0) / np.maximum(radius, np.float32(1e-12))
        cos_1, sin_1 = x * inverse, y * inverse
        cos_k, sin_k = cos_1.copy(), sin_1.copy()
        scratch_a, scratch_b = inverse, np.empty_like(radius)
        boundary = np.ones_like(radius)
        for eps, phase in zip(ell.eps, ell.phases):
            np.multiply(cos_k, sin_1, out=scratch_a)
            np.multiply(sin_k, sin_1, out=scratch_b)
            cos_k *= cos_1
            cos_k -= scratch_b
            sin_k *= cos_1
            sin_k += scratch_a
            np.multiply(cos_k, np.float32(eps * math.cos(phase)), out=scratch_a)
            boundary += scratch_a
            np.multiply(sin_k, np.float32(eps * math.sin(phase)), out=scratch_a)
            boundary -= scratch_a
        radius /= boundary
    return slice(r0, r1), slice(c0, c1), radius


def _fill(shape_hw, ell: _Ellipse, limit: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """OR the region ``ratio <= limit`` of an ellipse into ``out`` (a new bool mask by default)."""
    if out is None:
        out = np.zeros(shape_hw, dtype=bool)
    box = _region(shape_hw, ell, margin=max(limit, 1.0))
    if box is not None:
        rows, cols, radius = box
        out[rows, cols] |= radius <= limit
    return out


@functools.lru_cache(maxsize=8)
def _noise_bank(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed banks of noise, three times the image size, that slices crop their noise from.

    Returns white noise, fine texture (Gaussian-smoothed, sigma 1.2 px at 128 px) and coarse texture
    (sigma 2.5 px at 128 px), each with unit standard deviation. Cropping random windows from a fixed,
    seeded bank is many times faster than filtering new noise for every slice, and keeps every phantom a
    deterministic function of its seed.
    """
    bank_rng = np.random.default_rng(20260401)
    shape = (3 * height, 3 * width)
    scale = max(height, width) / 128.0
    banks = [bank_rng.standard_normal(shape, dtype=np.float32)]
    for sigma in (1.2 * scale, 2.5 * scale):
        smooth = ndimage.gaussian_filter(
            bank_rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap"
        )
        banks.append(smooth * np.float32(1.0 / smooth.std()))
    for bank in banks:
        bank.flags.writeable = False
    return tuple(banks)


def _crop(bank: np.ndarray, rng: np.random.Generator, shape_hw) -> np.ndarray:
    """A random window of a noise bank, flipped at random (a read-only view)."""
    height, width = shape_hw
    r = int(rng.integers(0, bank.shape[0] - height + 1))
    c = int(rng.integers(0, bank.shape[1] - width + 1))
    window = bank[r : r + height, c : c + width]
    flips = int(rng.integers(0, 4))
    if flips & 1:
        window = window[::-1]
    if flips & 2:
        window = window[:, ::-1]
    return window


def _harmonics(rng: np.random.Generator, count: int, scale: float) -> tuple[tuple, tuple]:
    eps = tuple(float(e) for e in np.clip(rng.normal(0.0, scale, count), -2 * scale, 2 * scale))
    phases = tuple(float(p) for p in rng.uniform(0, 2 * math.pi, count))
    return eps, phases


def _lung_scale(t: float, t_low: float, t_high: float) -> float:
    """Relative lung size along z: 0 outside [t_low, t_high], growing to 1 near the lower third, then
    shrinking to the apex (the lung bases are wide, the apices narrow)."""
    if t <= t_low or t >= t_high:
        return 0.0
    tau = (t - t_low) / (t_high - t_low)
    peak = 0.6 / 1.6
    return float((tau**0.6 * (1 - tau)) / (peak**0.6 * (1 - peak)))


# --------------------------------------------------------------------------------------------------
# Anatomy of one synthetic patient
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Anatomy:
    body: _Ellipse
    body_flat: float  # posterior flattening, as a fraction of the body half-height
    fat_fraction: float
    muscle_fraction: float
    table_gap: float
    table_thickness: float
    right_lung: _Ellipse  # image left
    left_lung: _Ellipse  # image right
    mediastinum_half_width: float
    heart: _Ellipse
    spine_center: tuple[float, float]
    spine_radius: float
    rib_angles: tuple[tuple[float, ...], tuple[float, ...]]  # (right lung, left lung)
    rib_distance: float
    rib_size: tuple[float, float]
    sternum: _Ellipse
    trachea_center: tuple[float, float]
    trachea_radius: float
    lung_t_range: tuple[float, float]  # volumes: z extent of the lungs (0 inferior, 1 superior)
    noise_sd_hu: float
    soft_hu: float
    fat_hu: float
    lung_hu: float
    marrow_hu: float
    cortical_hu: float
    rib_hu: float
    vessel_count: int


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Draw one patient's body, lung and skeleton geometry and tissue values."""
    body_eps, body_phases = _harmonics(rng, 3, 0.02)
    body = _Ellipse(
        cx=float(rng.uniform(-0.04, 0.04)),
        cy=float(rng.uniform(-0.12, -0.04)),
        ax=float(rng.uniform(0.76, 0.9)),
        ay=float(rng.uniform(0.5, 0.6)),
        eps=body_eps,
        phases=body_phases,
    )
    body_flat = float(rng.uniform(0.86, 0.95))
    fat_fraction = float(rng.uniform(0.03, 0.07))
    muscle_fraction = float(rng.uniform(0.05, 0.08))
    lung_offset = float(rng.uniform(0.4, 0.48)) * body.ax
    lung_cy = body.cy - float(rng.uniform(0.0, 0.08)) * body.ay
    tilt = float(rng.uniform(-0.12, 0.12))
    lungs = []
    for side_sign in (-1.0, 1.0):
        eps, phases = _harmonics(rng, 3, 0.035)
        lungs.append(
            _Ellipse(
                cx=body.cx + side_sign * lung_offset * float(rng.uniform(0.97, 1.03)),
                cy=lung_cy + float(rng.uniform(-0.02, 0.02)),
                ax=float(rng.uniform(0.3, 0.37)) * body.ax,
                ay=float(rng.uniform(0.7, 0.8)) * body.ay,
                angle=side_sign * tilt + float(rng.uniform(-0.03, 0.03)),
                eps=eps,
                phases=phases,
            )
        )
    heart = _Ellipse(
        cx=body.cx + float(rng.uniform(0.04, 0.09)),
        cy=body.cy + float(rng.uniform(-0.1, 0.02)),
        ax=float(rng.uniform(0.17, 0.22)),
        ay=float(rng.uniform(0.14, 0.19)),
        angle=float(rng.uniform(-0.5, -0.2)),
    )
    posterior = body.cy + body_flat * body.ay
    spine_radius = float(rng.uniform(0.055, 0.07))
    spine_center = (body.cx + float(rng.uniform(-0.01, 0.01)), posterior - spine_radius - 0.11)
    rib_angles = tuple(
        tuple(np.sort(rng.uniform(-1.25, 1.45, int(rng.integers(4, 7)))).tolist()) for _ in range(2)
    )
    sternum = _Ellipse(
        cx=body.cx,
        cy=body.cy - body.ay * (1.0 - fat_fraction - float(rng.uniform(0.06, 0.09))),
        ax=float(rng.uniform(0.05, 0.07)),
        ay=float(rng.uniform(0.02, 0.03)),
    )
    return _Anatomy(
        body=body,
        body_flat=body_flat,
        fat_fraction=fat_fraction,
        muscle_fraction=muscle_fraction,
        table_gap=float(rng.uniform(0.01, 0.04)),
        table_thickness=float(rng.uniform(0.05, 0.08)),
        right_lung=lungs[0],
        left_lung=lungs[1],
        mediastinum_half_width=float(rng.uniform(0.08, 0.11)),
        heart=heart,
        spine_center=spine_center,
        spine_radius=spine_radius,
        rib_angles=rib_angles,
        rib_distance=float(rng.uniform(1.1, 1.16)),
        rib_size=(float(rng.uniform(0.018, 0.026)), float(rng.uniform(0.03, 0.04))),
        sternum=sternum,
        trachea_center=(body.cx + float(rng.uniform(-0.015, 0.015)), lung_cy - float(rng.uniform(0.3, 0.4))),
        trachea_radius=float(rng.uniform(0.035, 0.05)),
        lung_t_range=(float(rng.uniform(0.06, 0.14)), float(rng.uniform(0.86, 0.94))),
        noise_sd_hu=float(rng.uniform(8.0, 25.0)),
        soft_hu=float(rng.uniform(25.0, 45.0)),
        fat_hu=float(rng.uniform(-110.0, -90.0)),
        lung_hu=float(rng.uniform(-870.0, -835.0)),
        marrow_hu=float(rng.uniform(450.0, 550.0)),
        cortical_hu=float(rng.uniform(850.0, 950.0)),
        rib_hu=float(rng.uniform(600.0, 800.0)),
        vessel_count=int(rng.integers(12, 22)),
    )


def _jitter(anatomy: _Anatomy, rng: np.random.Generator, amount: float = 0.02) -> _Anatomy:
    """Small per-slice variation of one patient's geometry (breathing, position, slice level)."""

    def shake(ell: _Ellipse) -> _Ellipse:
        return replace(
            ell,
            cx=ell.cx + float(rng.normal(0, amount / 2)),
            cy=ell.cy + float(rng.normal(0, amount / 2)),
            ax=ell.ax * (1 + float(rng.normal(0, amount))),
            ay=ell.ay * (1 + float(rng.normal(0, amount))),
        )

    return replace(
        anatomy,
        body=shake(anatomy.body),
        right_lung=shake(anatomy.right_lung),
        left_lung=shake(anatomy.left_lung),
        heart=shake(anatomy.heart),
    )


# --------------------------------------------------------------------------------------------------
# Lesion plans: what to draw in one slice
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Blob:
    side: int  # RIGHT_LUNG or LEFT_LUNG
    ellipse: _Ellipse
    base_hu: float


@dataclass(frozen=True)
class _Lobar:
    side: int
    # The consolidated part of the lung is where (v - cy) * direction > offset + slope * (u - cx).
    offset: float
    slope: float
    direction: float
    base_hu: float


@dataclass
class _LesionPlan:
    blobs: list = field(default_factory=list)
    lobar: _Lobar | None = None
    bronchograms: int = 0
    pattern: str = "none"


def _side_sign(side: int) -> float:
    """Lateral direction in image columns: the right lung's lateral side is the image left."""
    return -1.0 if side == RIGHT_LUNG else 1.0


def _cov_phi(rng: np.random.Generator) -> float:
    """Parametric angle of a COV blob: mostly lateral-posterior (subpleural, dependent lung)."""
    if rng.random() < 0.7:
        return float(rng.uniform(0.1, 1.5))  # lateral to posterior (v grows posteriorly)
    return float(rng.uniform(-1.3, 2.3))


def _cov_blob(rng, lung: _Ellipse, side: int, ghost: float = 1.0) -> _Blob:
    eps, phases = _harmonics(rng, 3, 0.12)
    center = lung.point(_cov_phi(rng), float(rng.uniform(0.6, 0.88)), _side_sign(side))
    size = float(rng.uniform(0.25, 0.55)) * min(lung.ax, lung.ay) * ghost
    return _Blob(
        side=side,
        ellipse=_Ellipse(
            cx=center[0],
            cy=center[1],
            ax=size * float(rng.uniform(0.7, 1.3)),
            ay=size * float(rng.uniform(0.7, 1.3)),
            angle=float(rng.uniform(0, math.pi)),
            eps=eps,
            phases=phases,
        ),
        base_hu=float(rng.uniform(-470.0, -370.0)),
    )


def _plan_2d(label: str, anatomy: _Anatomy, rng: np.random.Generator) -> _LesionPlan:
    """Lesions of one 2D slice for a class."""
    if label == "Normal":
        return _LesionPlan()
    if label == "COV":
        blobs = []
        for side, lung in ((RIGHT_LUNG, anatomy.right_lung), (LEFT_LUNG, anatomy.left_lung)):
            blobs += [_cov_blob(rng, lung, side) for _ in range(int(rng.integers(2, 5)))]
        return _LesionPlan(blobs=blobs, pattern="bilateral-ggo")
    side = RIGHT_LUNG if rng.random() < 0.5 else LEFT_LUNG
    lung = anatomy.right_lung if side == RIGHT_LUNG else anatomy.left_lung
    base_hu = float(rng.uniform(-60.0, 10.0))
    bronchograms = int(rng.integers(1, 4)) if rng.random() < 0.6 else 0
    if rng.random() < 0.6:
        direction = 1.0 if rng.random() < 0.7 else -1.0  # mostly the posterior (lower-lobe) part
        lobar = _Lobar(
            side=side,
            offset=float(rng.uniform(-0.15, 0.25)) * lung.ay,
            slope=float(rng.uniform(-0.6, 0.6)),
            direction=direction,
            base_hu=base_hu,
        )
        return _LesionPlan(lobar=lobar, bronchograms=bronchograms, pattern="lobar-consolidation")
    blobs = []
    for _ in range(int(rng.integers(1, 3))):
        eps, phases = _harmonics(rng, 3, 0.08)
        center = lung.point(float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(0.2, 0.55)), 1.0)
        size = float(rng.uniform(0.45, 0.7)) * min(lung.ax, lung.ay)
        blobs.append(
            _Blob(
                side=side,
                ellipse=_Ellipse(
                    center[0],
                    center[1],
                    size * float(rng.uniform(0.8, 1.25)),
                    size,
                    float(rng.uniform(0, math.pi)),
                    eps,
                    phases,
                ),
                base_hu=base_hu,
            )
        )
    return _LesionPlan(blobs=blobs, bronchograms=bronchograms, pattern="focal-consolidation")


# --------------------------------------------------------------------------------------------------
# Rendering one slice
# --------------------------------------------------------------------------------------------------
def _render(
    anatomy: _Anatomy,
    shape_hw: tuple[int, int],
    rng: np.random.Generator,
    lung_scale: float,
    plan: _LesionPlan,
    airway: str = "trachea",
    heart_scale: float = 1.0,
) -> dict:
    """Draw one axial slice; returns a dict of the image and its masks (PhantomSlice fields)."""
    height, width = shape_hw
    size_scale = max(height, width) / 128.0
    v, u = _axes(height, width)
    white_bank, fine_bank, coarse_bank = _noise_bank(height, width)
    texture = _crop(fine_bank, rng, shape_hw)
    image = np.full(shape_hw, AIR_HU, dtype=np.float32)

    # Body, flattened posteriorly where it lies on the table; fat ring under the skin; thorax inside.
    _, _, body_ratio = _region(shape_hw, anatomy.body, margin=1e6)
    posterior_v = anatomy.body.cy + anatomy.body_flat * anatomy.body.ay
    body = (body_ratio <= 1.0) & (v <= posterior_v)[:, None]
    inner = (body_ratio <= 1.0 - anatomy.fat_fraction) & (v <= posterior_v - 0.6 * anatomy.fat_fraction)[
        :, None
    ]
    thorax_limit = 1.0 - anatomy.fat_fraction - anatomy.muscle_fraction
    thorax = (body_ratio <= thorax_limit) & (v <= posterior_v - 0.08)[:, None]

    # Table: a foam core between two thin carbon shells, below the back, across most of the field.
    table_top = posterior_v + anatomy.table_gap
    table_bottom = table_top + anatomy.table_thickness
    table_rows = (v >= table_top) & (v <= table_bottom)
    table_cols = np.abs(u) <= 0.95
    table = table_rows[:, None] & table_cols[None, :]
    shell_rows = table_rows & ((v - table_top < 0.012) | (table_bottom - v < 0.012))
    image[table] = -500.0
    image[shell_rows[:, None] & table_cols[None, :]] = 150.0

    np.copyto(image, anatomy.soft_hu + 8.0 * texture, where=body)
    np.copyto(image, anatomy.fat_hu + 8.0 * texture, where=body & ~inner)

    # Heart (middle of the thorax; its size follows heart_scale along z).
    heart_halo = np.zeros(shape_hw, dtype=bool)
    if heart_scale > 0.05:
        heart_ell = anatomy.heart.scaled(heart_scale)
        heart = _fill(shape_hw, heart_ell) & inner
        _fill(shape_hw, heart_ell, limit=1.12, out=heart_halo)
        np.copyto(image, 40.0 + 6.0 * texture, where=heart)

    # Skeleton: vertebral body (cortical shell around marrow), arch and spinous process around the
    # spinal canal, ribs around the lungs, sternum. Painted on bounding boxes only.
    bone = np.zeros(shape_hw, dtype=bool)
    sx, sy = anatomy.spine_center
    sr = anatomy.spine_radius
    rows, cols, ratio = _region(shape_hw, _Ellipse(sx, sy, sr * 1.1, sr))
    vertebra = (ratio <= 1.0) & inner[rows, cols]
    bone[rows, cols] |= vertebra
    view = image[rows, cols]
    view[vertebra] = anatomy.marrow_hu + 40.0 * texture[rows, cols][vertebra]
    view[vertebra & (ratio > 0.78)] = anatomy.cortical_hu
    canal = _fill(shape_hw, _Ellipse(sx, sy + sr * 1.55, sr * 0.5, sr * 0.42))
    arch = _fill(shape_hw, _Ellipse(sx, sy + sr * 1.5, sr * 0.95, sr * 0.75))
    _fill(shape_hw, _Ellipse(sx, sy + sr * 2.45, sr * 0.28, sr * 0.6), out=arch)
    arch &= inner & ~canal & ~bone
    bone |= arch
    image[arch] = anatomy.cortical_hu - 100.0
    image[canal & inner] = 20.0
    keepout = _fill(shape_hw, _Ellipse(sx, sy, sr * 1.1, sr), limit=1.25)

    rib_w, rib_h = anatomy.rib_size
    for side, lung, angles in (
        (RIGHT_LUNG, anatomy.right_lung, anatomy.rib_angles[0]),
        (LEFT_LUNG, anatomy.left_lung, anatomy.rib_angles[1]),
    ):
        sign = _side_sign(side)
        for phi in angles:
            cx, cy = lung.point(phi, anatomy.rib_distance, sign)
            tangent = math.atan2(lung.ay * math.cos(phi), -sign * lung.ax * math.sin(phi))
            box = _region(shape_hw, _Ellipse(cx, cy, rib_h, rib_w, angle=tangent))
            if box is None:
                continue
            rows, cols, ratio = box
            rib = (ratio <= 1.0) & inner[rows, cols]
            bone[rows, cols] |= rib
            view = image[rows, cols]
            view[rib] = anatomy.rib_hu + 30.0 * texture[rows, cols][rib]
    box = _region(shape_hw, anatomy.sternum)
    if box is not None:
        rows, cols, ratio = box
        sternum = (ratio <= 1.0) & inner[rows, cols]
        bone[rows, cols] |= sternum
        view = image[rows, cols]
        view[sternum] = anatomy.marrow_hu + 80.0 + 30.0 * texture[rows, cols][sternum]
    bone &= body

    # Airway: the trachea above the carina, two main bronchi just below it, nothing lower down.
    tx, ty = anatomy.trachea_center
    tr = anatomy.trachea_radius
    if airway == "trachea":
        airways = [(tx, ty, tr)]
    elif airway == "bronchi":
        airways = [(tx - 1.4 * tr, ty + 0.02, 0.7 * tr), (tx + 1.4 * tr, ty + 0.02, 0.7 * tr)]
    else:
        airways = []
    airway_air = np.zeros(shape_hw, dtype=bool)
    airway_wall = np.zeros(shape_hw, dtype=bool)
    for cx, cy, radius in airways:
        _fill(shape_hw, _Ellipse(cx, cy, radius, radius), out=airway_air)
        _fill(shape_hw, _Ellipse(cx, cy, radius + 0.014, radius + 0.014), out=airway_wall)
        _fill(shape_hw, _Ellipse(cx, cy, radius + 0.03, radius + 0.03), out=keepout)

    # Lungs: deformed ellipses inside the thorax, on their own side of the mediastinum, kept off the
    # heart, the skeleton and the airway.
    keepout |= bone | heart_halo
    medial = np.abs(u - anatomy.body.cx) >= anatomy.mediastinum_half_width
    lungs = {}
    for side, lung in ((RIGHT_LUNG, anatomy.right_lung), (LEFT_LUNG, anatomy.left_lung)):
        if lung_scale < _MIN_LUNG_SCALE:
            lungs[side] = np.zeros(shape_hw, dtype=bool)
            continue
        on_side = (u < anatomy.body.cx) if side == RIGHT_LUNG else (u > anatomy.body.cx)
        mask = _fill(shape_hw, lung.scaled(lung_scale))
        mask &= (medial & on_side)[None, :]
        mask &= thorax
        mask &= ~keepout
        lungs[side] = mask
    lung_any = lungs[RIGHT_LUNG] | lungs[LEFT_LUNG]
    # Supine patients' dependent (posterior) lung is slightly denser.
    depth = ((v - anatomy.right_lung.cy) * np.float32(20.0 / anatomy.right_lung.ay))[:, None]
    np.copyto(image, anatomy.lung_hu + depth + 15.0 * texture, where=lung_any)

    # Lesions, clipped to their lung.
    lesion = np.zeros(shape_hw, dtype=bool)
    if plan.blobs or plan.lobar is not None:
        lesion_hu = np.zeros(shape_hw, dtype=np.float32)
        patches = _crop(coarse_bank, rng, shape_hw)
        for blob in plan.blobs:
            if blob.ellipse.ax <= 0 or blob.ellipse.ay <= 0:
                continue
            region = _fill(shape_hw, blob.ellipse) & lungs[blob.side]
            if blob.base_hu < -200:
                region &= patches > -1.1  # patchy ground glass with spared lobules
            np.copyto(lesion_hu, np.float32(blob.base_hu), where=region & ~lesion)
            lesion |= region
        if plan.lobar is not None:
            lob = plan.lobar
            lung = anatomy.right_lung if lob.side == RIGHT_LUNG else anatomy.left_lung
            dv = ((v - lung.cy) * np.float32(lob.direction))[:, None]
            du = (u - lung.cx)[None, :]
            region = (dv > lob.offset * lung_scale + lob.slope * du) & lungs[lob.side]
            np.copyto(lesion_hu, np.float32(lob.base_hu), where=region & ~lesion)
            lesion |= region
        spread = (
            35.0 if plan.pattern == "bilateral-ggo" or any(b.base_hu < -200 for b in plan.blobs) else 20.0
        )
        np.copyto(image, lesion_hu + spread * patches, where=lesion)

    # Vessels: bright dots plus branches from the hilum, blended in by partial volume (lung bbox only).
    if lung_any.any():
        row_hits = np.flatnonzero(lung_any.any(axis=1))
        col_hits = np.flatnonzero(lung_any.any(axis=0))
        pad = int(3 * size_scale) + 2
        r0, r1 = max(row_hits[0] - pad, 0), min(row_hits[-1] + pad + 1, height)
        c0, c1 = max(col_hits[0] - pad, 0), min(col_hits[-1] + pad + 1, width)
        seeds = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
        for side in (RIGHT_LUNG, LEFT_LUNG):
            candidates = np.flatnonzero(lungs[side][r0:r1, c0:c1])
            if candidates.size < 20:
                continue
            count = min(int(anatomy.vessel_count * min(lung_scale, 1.0)) + 1, candidates.size)
            picks = rng.choice(candidates, size=count, replace=False)
            seeds.flat[picks] = rng.uniform(0.6, 1.4, count).astype(np.float32)
            lung = anatomy.right_lung if side == RIGHT_LUNG else anatomy.left_lung
            hx, hy = lung.scaled(lung_scale).point(0.0, 0.7, -_side_sign(side))  # the hilum, medially
            r_start = int(np.searchsorted(v, hy)) - r0
            c_start = int(np.searchsorted(u, hx)) - c0
            for end in rng.choice(candidates, size=min(3, count), replace=False):
                r_end, c_end = divmod(int(end), c1 - c0)
                # Branches run from the hilum about halfway to a random point of the lung.
                r_end, c_end = (r_start + r_end) // 2, (c_start + c_end) // 2
                steps = max(abs(r_end - r_start), abs(c_end - c_start)) + 1
                line_r = np.clip(np.linspace(r_start, r_end, steps).round().astype(int), 0, r1 - r0 - 1)
                line_c = np.clip(np.linspace(c_start, c_end, steps).round().astype(int), 0, c1 - c0 - 1)
                seeds[line_r, line_c] = np.maximum(seeds[line_r, line_c], 0.35)
        sigma = 0.6 * size_scale
        weight = ndimage.gaussian_filter(seeds, sigma, truncate=3.0) * np.float32(2 * math.pi * sigma**2)
        np.clip(weight, 0.0, 1.0, out=weight)
        weight *= lung_any[r0:r1, c0:c1]
        view = image[r0:r1, c0:c1]
        view += weight * (40.0 - view)

    # Air bronchograms: thin air tubes from the centre of the consolidation outwards.
    if plan.bronchograms and lesion.any():
        core = ndimage.binary_erosion(lesion, iterations=max(1, int(round(size_scale))))
        core_idx = np.flatnonzero(core)
        if core_idx.size > 4:
            center_r, center_c = ndimage.center_of_mass(core)
            for end in rng.choice(core_idx, size=plan.bronchograms):
                r_end, c_end = divmod(int(end), width)
                steps = int(max(abs(r_end - center_r), abs(c_end - center_c))) + 1
                line_r = np.linspace(center_r, r_end, steps).round().astype(int)
                line_c = np.linspace(center_c, c_end, steps).round().astype(int)
                keep = core[line_r, line_c]
                image[line_r[keep], line_c[keep]] = -870.0

    # Airway drawn last: air inside a soft-tissue wall, never part of the lungs.
    image[airway_wall & ~lung_any & body] = 30.0
    image[airway_air & body] = AIR_HU

    image += np.float32(anatomy.noise_sd_hu) * _crop(white_bank, rng, shape_hw)
    sides = tuple(
        name for side, name in ((RIGHT_LUNG, "right"), (LEFT_LUNG, "left")) if (lesion & lungs[side]).any()
    )
    return {
        "image_hu": image,
        "body": body,
        "right_lung": lungs[RIGHT_LUNG],
        "left_lung": lungs[LEFT_LUNG],
        "lesion": lesion,
        "bone": bone,
        "table": table,
        "info": {
            "pattern": plan.pattern,
            "lesion_sides": sides,
            "bronchograms": plan.bronchograms,
            "noise_sd_hu": anatomy.noise_sd_hu,
            "pixel_spacing_mm": FIELD_OF_VIEW_MM / max(height, width),
        },
    }


def _check_label(label: str) -> str:
    if label not in CLASSES:
        raise unknown_name_error("phantom class", label, CLASSES)
    return label


def _check_size(name: str, value: int, minimum: int = 32) -> int:
    if int(value) != value or value < minimum:
        raise CovidctError(
            f"Phantom {name}={value!r} is too small or not an integer; use at least {minimum}."
        )
    return int(value)


def _slice_from_anatomy(label: str, anatomy: _Anatomy, size: int, rng: np.random.Generator) -> PhantomSlice:
    """Render a 2D slice at the mid-thorax level, retrying COV blobs until both lungs hold a lesion."""
    lung_scale = float(rng.uniform(0.88, 1.0))
    plan = _plan_2d(label, anatomy, rng)
    render_rng = np.random.default_rng(rng.integers(2**63))
    out = _render(anatomy, (size, size), render_rng, lung_scale, plan)
    tries = 0
    while label == "COV" and len(out["info"]["lesion_sides"]) < 2 and tries < 5:
        # A blob can fall outside its (clipped) lung; add one nearer the lung centre and redraw.
        missing = [
            s
            for s, name in ((RIGHT_LUNG, "right"), (LEFT_LUNG, "left"))
            if name not in out["info"]["lesion_sides"]
        ]
        for side in missing:
            lung = anatomy.right_lung if side == RIGHT_LUNG else anatomy.left_lung
            blob = _cov_blob(rng, lung.scaled(lung_scale), side)
            plan.blobs.append(
                replace(
                    blob, ellipse=replace(blob.ellipse, ax=blob.ellipse.ax * 1.3, ay=blob.ellipse.ay * 1.3)
                )
            )
        render_rng = np.random.default_rng(rng.integers(2**63))
        out = _render(anatomy, (size, size), render_rng, lung_scale, plan)
        tries += 1
    return PhantomSlice(label=label, **out)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def make_slice(label: str, size: int = 256, seed: int = 0) -> PhantomSlice:
    """Make one synthetic axial chest CT slice in HU with its exact masks.

    Args:
        label: one of ``CLASSES`` (``"COV"``, ``"Normal"``, ``"OtherPneumonia"``).
        size: image height and width in pixels (>= 32); the field of view is 360 mm.
        seed: seed of the ``numpy.random.Generator``; equal seeds give equal slices.

    Returns:
        A ``PhantomSlice`` (float32 ``image_hu``; bool masks ``body``, ``left_lung``, ``right_lung``,
        ``lesion``, ``bone``, ``table``).
    """
    _check_label(label)
    size = _check_size("size", size)
    rng = np.random.default_rng(seed)
    return _slice_from_anatomy(label, _sample_anatomy(rng), size, rng)


def _patient_labels(n_patients: int) -> list[str]:
    """Round-robin class assignment: balanced, and independent of how many patients follow."""
    return [CLASSES[i % len(CLASSES)] for i in range(n_patients)]


def make_dataset(n: int = 600, size: int = 128, seed: int = 0, slices_per_patient: int = 5) -> PhantomSet:
    """Make ``n`` labelled phantom slices from synthetic patients of balanced classes.

    Patients are assigned to classes in turn (COV, Normal, OtherPneumonia, COV, ...), so the classes are
    balanced to within one patient. The slices of one patient share its body and lung shape (with small
    variation: position, breathing, slice level), its noise level and its class; lesions differ between
    slices. Patient ``i`` only depends on ``seed`` and ``i``, so a smaller ``n`` gives a prefix of a
    larger one.

    Args:
        n: number of slices (>= 1).
        size: slice height and width in pixels (>= 32).
        seed: dataset seed.
        slices_per_patient: slices per patient (>= 1); the last patient may have fewer.

    Returns:
        A ``PhantomSet`` with ``groups`` ``phantom_0000``, ``phantom_0001``, ...
    """
    size = _check_size("size", size)
    if int(n) != n or n < 1:
        raise CovidctError(f"make_dataset: n={n!r} must be a positive integer number of slices.")
    if int(slices_per_patient) != slices_per_patient or slices_per_patient < 1:
        raise CovidctError(
            f"make_dataset: slices_per_patient={slices_per_patient!r} must be a positive integer."
        )
    n, slices_per_patient = int(n), int(slices_per_patient)
    n_patients = -(-n // slices_per_patient)
    patient_seeds = np.random.SeedSequence(seed).spawn(n_patients)
    images = np.empty((n, size, size), dtype=np.float32)
    lung_labels = np.zeros((n, size, size), dtype=np.uint8)
    lesions = np.empty((n, size, size), dtype=bool)
    bodies = np.empty((n, size, size), dtype=bool)
    labels, groups = [], []
    index = 0
    for patient, (label, patient_seed) in enumerate(zip(_patient_labels(n_patients), patient_seeds)):
        rng = np.random.default_rng(patient_seed)
        anatomy = _sample_anatomy(rng)
        for _ in range(min(slices_per_patient, n - index)):
            one = _slice_from_anatomy(label, _jitter(anatomy, rng), size, rng)
            images[index] = one.image_hu
            lung_labels[index][one.right_lung] = RIGHT_LUNG
            lung_labels[index][one.left_lung] = LEFT_LUNG
            lesions[index] = one.lesion
            bodies[index] = one.body
            labels.append(label)
            groups.append(f"phantom_{patient:04d}")
            index += 1
    return PhantomSet(images, labels, groups, lung_labels, lesions, bodies)


def _plan_volume(
    label: str, anatomy: _Anatomy, rng: np.random.Generator, t_low: float, t_high: float
) -> list:
    """3D lesions of a volume: (kind, parameters) items cross-sectioned slice by slice."""
    items = []
    span = t_high - t_low
    if label == "COV":
        for side in (RIGHT_LUNG, LEFT_LUNG):
            for _ in range(int(rng.integers(3, 6))):
                # Lower lobes more often: the centre's height is skewed towards the lung bases.
                t_center = t_low + span * float(rng.beta(1.6, 2.6))
                items.append(
                    (
                        "blob",
                        side,
                        t_center,
                        span * float(rng.uniform(0.07, 0.15)),
                        _cov_phi(rng),
                        float(rng.uniform(0.6, 0.88)),
                        float(rng.uniform(0.3, 0.55)),
                        float(rng.uniform(0.7, 1.3)),
                        float(rng.uniform(0, math.pi)),
                        float(rng.uniform(-470.0, -370.0)),
                        _harmonics(rng, 3, 0.12),
                    )
                )
    elif label == "OtherPneumonia":
        side = RIGHT_LUNG if rng.random() < 0.5 else LEFT_LUNG
        base_hu = float(rng.uniform(-60.0, 10.0))
        bronchograms = int(rng.integers(1, 4)) if rng.random() < 0.6 else 0
        if rng.random() < 0.6:
            # Lobar: a lower-lobe-like region, posterior to a tilted plane, in the lower half of the lung.
            t0 = t_low + span * float(rng.uniform(0.02, 0.15))
            t1 = t_low + span * float(rng.uniform(0.45, 0.65))
            items.append(
                (
                    "lobar",
                    side,
                    t0,
                    t1,
                    float(rng.uniform(-0.15, 0.2)),
                    float(rng.uniform(-0.5, 0.5)),
                    float(rng.uniform(-0.6, 0.6)),
                    base_hu,
                    bronchograms,
                )
            )
        else:
            t_center = t_low + span * float(rng.uniform(0.25, 0.7))
            items.append(
                (
                    "blob",
                    side,
                    t_center,
                    span * float(rng.uniform(0.15, 0.25)),
                    float(rng.uniform(-math.pi, math.pi)),
                    float(rng.uniform(0.2, 0.5)),
                    float(rng.uniform(0.5, 0.7)),
                    float(rng.uniform(0.8, 1.25)),
                    float(rng.uniform(0, math.pi)),
                    base_hu,
                    _harmonics(rng, 3, 0.08),
                    bronchograms,
                )
            )
    return items


def make_volume(label: str, shape: tuple[int, int, int] = (32, 128, 128), seed: int = 0) -> PhantomVolume:
    """Make a synthetic chest CT volume: axial slices from inferior (index 0) to superior.

    The lungs appear a few slices above the bottom, grow to their widest near the lower third and
    shrink towards the apex; slices below the bases and above the apices hold no lung. The heart sits
    in the lower half, the trachea in the upper part (two main bronchi just below the carina). Lesions
    are 3D ellipsoids (COV: several per lung, skewed towards the lower lobes; OtherPneumonia: a lobar
    region or one large blob in one lung) cut slice by slice and clipped to that slice's lungs, so the
    masks are consistent along z. Noise, vessels and air bronchograms are drawn per slice.

    Args:
        label: one of ``CLASSES``.
        shape: (depth, height, width) in voxels; depth >= 4, height and width >= 32.
        seed: seed of the ``numpy.random.Generator``.

    Returns:
        A ``PhantomVolume`` (float32 ``volume_hu``, uint8 ``lung_labels``, bool ``lesion_masks``,
        bool ``body_masks``, ``spacing_mm`` (slice, row, column)).
    """
    _check_label(label)
    if len(tuple(shape)) != 3:
        raise CovidctError(f"make_volume: shape={shape!r} must be (depth, height, width).")
    depth = _check_size("depth", shape[0], minimum=4)
    height, width = _check_size("height", shape[1]), _check_size("width", shape[2])
    rng = np.random.default_rng(seed)
    anatomy = _sample_anatomy(rng)
    t_low, t_high = anatomy.lung_t_range
    items = _plan_volume(label, anatomy, rng, t_low, t_high)
    slice_seeds = np.random.SeedSequence(int(rng.integers(2**63))).spawn(depth)

    volume = np.empty((depth, height, width), dtype=np.float32)
    lung_labels = np.zeros((depth, height, width), dtype=np.uint8)
    lesions = np.empty((depth, height, width), dtype=bool)
    bodies = np.empty((depth, height, width), dtype=bool)
    for k in range(depth):
        t = (k + 0.5) / depth
        scale = _lung_scale(t, t_low, t_high)
        plan = _LesionPlan(pattern="none" if label == "Normal" else label)
        for item in items:
            side = item[1]
            lung = (anatomy.right_lung if side == RIGHT_LUNG else anatomy.left_lung).scaled(max(scale, 1e-3))
            if item[0] == "blob":
                _, _, t_center, t_radius, phi, rho, size, aspect, angle, base_hu, (eps, phases), *rest = item
                dz = (t - t_center) / t_radius
                if abs(dz) >= 1.0 or scale < _MIN_LUNG_SCALE:
                    continue
                shrink = math.sqrt(1.0 - dz * dz)
                radius = size * min(lung.ax, lung.ay) * shrink
                center = lung.point(phi, rho, _side_sign(side))
                plan.blobs.append(
                    _Blob(
                        side,
                        _Ellipse(center[0], center[1], radius * aspect, radius, angle, eps, phases),
                        base_hu,
                    )
                )
                if rest:
                    plan.bronchograms = rest[0]
            else:
                _, _, t0, t1, offset, tilt_z, slope, base_hu, bronchograms = item
                if t0 <= t <= t1:
                    plan.lobar = _Lobar(
                        side,
                        (offset + tilt_z * (t - t0) / max(t1 - t0, 1e-6)) * lung.ay / max(scale, 1e-3),
                        slope,
                        1.0,
                        base_hu,
                    )
                    plan.bronchograms = bronchograms
        tau = (t - t_low) / (t_high - t_low)
        airway = "trachea" if tau > 0.72 else ("bronchi" if tau > 0.6 else "none")
        heart_scale = max(0.0, 1.0 - abs(tau - 0.35) / 0.3) ** 0.5 if 0.05 < tau < 0.65 else 0.0
        out = _render(
            anatomy,
            (height, width),
            np.random.default_rng(slice_seeds[k]),
            scale,
            plan,
            airway=airway,
            heart_scale=heart_scale,
        )
        volume[k] = out["image_hu"]
        lung_labels[k][out["right_lung"]] = RIGHT_LUNG
        lung_labels[k][out["left_lung"]] = LEFT_LUNG
        lesions[k] = out["lesion"]
        bodies[k] = out["body"]
    pixel_mm = FIELD_OF_VIEW_MM / max(height, width)
    # The lungs span about 250 mm of the patient's height.
    slice_mm = 250.0 / ((t_high - t_low) * depth)
    return PhantomVolume(
        volume, lung_labels, lesions, label, bodies, (round(slice_mm, 4), pixel_mm, pixel_mm)
    )


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
