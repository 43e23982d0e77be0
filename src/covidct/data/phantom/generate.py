"""The phantom generator's public functions: one slice, a dataset of patients, one volume."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from covidct.data.phantom.anatomy import (
    _Anatomy,
    _Blob,
    _cov_blob,
    _cov_phi,
    _jitter,
    _LesionPlan,
    _Lobar,
    _plan_2d,
    _sample_anatomy,
    _side_sign,
)
from covidct.data.phantom.containers import (
    _MIN_LUNG_SCALE,
    CLASSES,
    FIELD_OF_VIEW_MM,
    LEFT_LUNG,
    RIGHT_LUNG,
    PhantomSet,
    PhantomSlice,
    PhantomVolume,
)
from covidct.data.phantom.geometry import _Ellipse, _harmonics, _lung_scale
from covidct.data.phantom.render import _render
from covidct.errors import CovidctError, unknown_name_error


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


def _volume_slice_plan(label: str, items: list, anatomy: _Anatomy, t: float, scale: float) -> _LesionPlan:
    """The cross-section at height ``t`` (lung size ``scale``) of a volume's 3D lesions (``_plan_volume``)."""
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
    return plan


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
        plan = _volume_slice_plan(label, items, anatomy, t, scale)
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
