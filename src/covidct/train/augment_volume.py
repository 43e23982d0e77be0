"""3D augmentation of volume batches: in-plane rotation, flips, small intensity shifts.

Applied to training batches only, outside the saved network (like the 2D augmentation layers), so
inference and Grad-CAM see the plain model. Written with NumPy and ``scipy.ndimage``: it runs on the
batch before it reaches Keras and so works under every Keras backend (TensorFlow, JAX, PyTorch).

Batches are channels-last ``(N, D, H, W, C)`` in the volume-model range 0..255 (HU [-1000, 400] mapped
linearly; 0 is air). Rotations turn each volume about the slice axis (in the axial plane, as the
keras-io example does slice by slice with ``ndimage.rotate``) and fill the corners with air (0).
A left-right flip swaps the patient's sides: the class of a COVID / pneumonia volume does not depend on
the side, but do not use it for side-specific labels.

Example::

    augment = VolumeAugmenter(rotation_deg=20, flip_lr=True, intensity_shift=10, seed=0)
    batch = augment(batch_uint8)        # float32, same shape
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidct.errors import CovidctError


def rotate_inplane(volume: np.ndarray, angle_deg: float, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Rotate a (D, H, W) or (D, H, W, C) volume by ``angle_deg`` in the axial (H, W) plane.

    Args:
        volume: the volume (any real dtype; computed in float32).
        angle_deg: counter-clockwise angle in degrees, as seen in the displayed slice.
        order: spline order (1 linear, 0 nearest for masks).
        fill: value outside the rotated field (0 = air in the 0..255 volume range).

    Returns:
        float32 array of the input shape.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim not in (3, 4):
        raise CovidctError(f"rotate_inplane: expected (D, H, W) or (D, H, W, C), got shape {volume.shape}.")
    if angle_deg == 0:
        return volume.copy()
    return ndimage.rotate(
        volume,
        angle_deg,
        axes=(2, 1),
        reshape=False,
        order=order,
        mode="constant",
        cval=fill,
        prefilter=False,
    )


@dataclass(frozen=True)
class VolumeAugmenter:
    """Random 3D augmentation of volume batches, reproducible from a seed.

    Attributes:
        rotation_deg: maximum in-plane rotation; each volume gets an angle uniform in [-r, r] degrees.
        flip_lr: flip left-right (the W axis) with probability 0.5.
        flip_ap: flip anterior-posterior (the H axis) with probability 0.5 (off by default: the patient
            lies supine, so the table and spine are always at the bottom).
        flip_si: flip superior-inferior (the D axis) with probability 0.5 (off by default).
        intensity_shift: maximum additive shift in 0..255 levels, uniform in [-s, s] per volume.
        intensity_scale: maximum relative contrast change, a factor uniform in [1 - c, 1 + c] per volume.
        seed: seed of the random generator (each call draws new parameters from it).
    """

    rotation_deg: float = 15.0
    flip_lr: bool = True
    flip_ap: bool = False
    flip_si: bool = False
    intensity_shift: float = 10.0
    intensity_scale: float = 0.05
    seed: int | None = 0

    def __post_init__(self) -> None:
        for name in ("rotation_deg", "intensity_shift", "intensity_scale"):
            if getattr(self, name) < 0:
                raise CovidctError(f"VolumeAugmenter: {name} must be >= 0, got {getattr(self, name)}.")
        if self.intensity_scale >= 1:
            raise CovidctError(f"VolumeAugmenter: intensity_scale must be < 1, got {self.intensity_scale}.")
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Augment a batch (N, D, H, W, C); returns float32 in [0, 255] of the same shape."""
        return augment_volumes(
            batch,
            self._rng,
            rotation_deg=self.rotation_deg,
            flip_lr=self.flip_lr,
            flip_ap=self.flip_ap,
            flip_si=self.flip_si,
            intensity_shift=self.intensity_shift,
            intensity_scale=self.intensity_scale,
        )


def augment_volumes(
    batch: np.ndarray,
    rng: np.random.Generator | int | None = None,
    rotation_deg: float = 15.0,
    flip_lr: bool = True,
    flip_ap: bool = False,
    flip_si: bool = False,
    intensity_shift: float = 10.0,
    intensity_scale: float = 0.05,
) -> np.ndarray:
    """Randomly rotate, flip and shift the intensity of each volume of a batch.

    Args:
        batch: (N, D, H, W, C) volumes in 0..255 (uint8 or float).
        rng: a ``numpy.random.Generator`` or a seed.
        rotation_deg: maximum in-plane rotation in degrees (0 turns rotation off).
        flip_lr: random left-right flips (W axis).
        flip_ap: random anterior-posterior flips (H axis).
        flip_si: random superior-inferior flips (D axis).
        intensity_shift: maximum additive shift in grey levels.
        intensity_scale: maximum relative contrast change about the volume mean.

    Returns:
        float32 (N, D, H, W, C), clipped to [0, 255]. The input is not modified.
    """
    batch = np.asarray(batch)
    if batch.ndim != 5:
        raise CovidctError(f"augment_volumes: expected a batch (N, D, H, W, C), got shape {batch.shape}.")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = np.empty(batch.shape, dtype=np.float32)
    for i, volume in enumerate(batch):
        angle = float(rng.uniform(-rotation_deg, rotation_deg)) if rotation_deg > 0 else 0.0
        flips = rng.random(3) < 0.5
        shift = float(rng.uniform(-intensity_shift, intensity_shift))
        scale = float(rng.uniform(1 - intensity_scale, 1 + intensity_scale))
        sample = rotate_inplane(volume, angle)
        for axis, enabled, flip in ((2, flip_lr, flips[0]), (1, flip_ap, flips[1]), (0, flip_si, flips[2])):
            if enabled and flip:
                sample = np.flip(sample, axis=axis)
        if shift or scale != 1.0:
            mean = np.float32(sample.mean())
            sample = (sample - mean) * np.float32(scale) + mean + np.float32(shift)
        np.clip(sample, 0.0, 255.0, out=out[i])
    return out
