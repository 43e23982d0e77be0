"""Geometry and noise helpers of the phantom (normalised coordinates: the longer image side spans [-1, 1])."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage


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
