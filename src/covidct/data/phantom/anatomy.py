"""The anatomy of one synthetic patient and the lesion plan of one slice."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from covidct.data.phantom.containers import LEFT_LUNG, RIGHT_LUNG
from covidct.data.phantom.geometry import _Ellipse, _harmonics


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
