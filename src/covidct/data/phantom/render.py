"""Drawing one axial phantom slice from an anatomy and a lesion plan."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidct.data.phantom.anatomy import _Anatomy, _LesionPlan, _side_sign
from covidct.data.phantom.containers import _MIN_LUNG_SCALE, AIR_HU, FIELD_OF_VIEW_MM, LEFT_LUNG, RIGHT_LUNG
from covidct.data.phantom.geometry import _axes, _crop, _Ellipse, _fill, _noise_bank, _region


# --------------------------------------------------------------------------------------------------
# Rendering one slice: a canvas, then the structures drawn in a fixed order (the random draws of a
# slice happen in this order, so the pixels are a function of the seed)
# --------------------------------------------------------------------------------------------------
@dataclass
class _Canvas:
    """One slice being drawn: its grid, noise banks, soft texture and the image in HU."""

    shape_hw: tuple[int, int]
    v: np.ndarray
    u: np.ndarray
    white_bank: np.ndarray
    coarse_bank: np.ndarray
    texture: np.ndarray
    image: np.ndarray

    @classmethod
    def start(cls, shape_hw: tuple[int, int], rng: np.random.Generator) -> _Canvas:
        height, width = shape_hw
        v, u = _axes(height, width)
        white_bank, fine_bank, coarse_bank = _noise_bank(height, width)
        texture = _crop(fine_bank, rng, shape_hw)
        image = np.full(shape_hw, AIR_HU, dtype=np.float32)
        return cls(shape_hw, v, u, white_bank, coarse_bank, texture, image)

    @property
    def size_scale(self) -> float:
        return max(self.shape_hw) / 128.0


def _draw_body_and_table(canvas: _Canvas, anatomy: _Anatomy):
    """Body (flattened where it lies on the table), fat ring, thorax, and the table; returns masks."""
    shape_hw, v, u, image, texture = canvas.shape_hw, canvas.v, canvas.u, canvas.image, canvas.texture
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
    return body, inner, thorax, table


def _draw_heart(canvas: _Canvas, anatomy: _Anatomy, heart_scale: float, inner: np.ndarray) -> np.ndarray:
    """The heart in the middle of the thorax (its size follows ``heart_scale`` along z); returns its halo."""
    heart_halo = np.zeros(canvas.shape_hw, dtype=bool)
    if heart_scale > 0.05:
        heart_ell = anatomy.heart.scaled(heart_scale)
        heart = _fill(canvas.shape_hw, heart_ell) & inner
        _fill(canvas.shape_hw, heart_ell, limit=1.12, out=heart_halo)
        np.copyto(canvas.image, 40.0 + 6.0 * canvas.texture, where=heart)
    return heart_halo


def _draw_spine(canvas: _Canvas, anatomy: _Anatomy, inner: np.ndarray, bone: np.ndarray) -> np.ndarray:
    """Vertebral body (cortical shell around marrow), arch and spinous process around the spinal canal.

    Adds to ``bone``; returns the keep-out zone of the lungs around the vertebra.
    """
    shape_hw, image, texture = canvas.shape_hw, canvas.image, canvas.texture
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
    return _fill(shape_hw, _Ellipse(sx, sy, sr * 1.1, sr), limit=1.25)


def _draw_ribs_and_sternum(canvas: _Canvas, anatomy: _Anatomy, inner: np.ndarray, bone: np.ndarray) -> None:
    """Ribs as small ellipses around the lungs and the sternum; painted on bounding boxes only."""
    shape_hw, image, texture = canvas.shape_hw, canvas.image, canvas.texture
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


def _airway_masks(shape_hw, anatomy: _Anatomy, airway: str, keepout: np.ndarray):
    """Trachea above the carina, two main bronchi just below it, nothing lower down: (air, wall) masks.

    Adds a margin around each airway to ``keepout``.
    """
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
    return airway_air, airway_wall


def _draw_lungs(canvas: _Canvas, anatomy: _Anatomy, lung_scale: float, thorax: np.ndarray, keepout: np.ndarray):
    """Deformed ellipses inside the thorax, on their own side of the mediastinum, off ``keepout``.

    Returns ({side: mask}, union of both lungs).
    """
    shape_hw, v, u = canvas.shape_hw, canvas.v, canvas.u
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
    np.copyto(canvas.image, anatomy.lung_hu + depth + 15.0 * canvas.texture, where=lung_any)
    return lungs, lung_any


def _draw_lesions(canvas: _Canvas, anatomy: _Anatomy, plan: _LesionPlan, lungs: dict, lung_scale: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Blobs and lobar consolidation of ``plan``, clipped to their lung; returns the lesion mask."""
    shape_hw, v, u = canvas.shape_hw, canvas.v, canvas.u
    lesion = np.zeros(shape_hw, dtype=bool)
    if not plan.blobs and plan.lobar is None:
        return lesion
    lesion_hu = np.zeros(shape_hw, dtype=np.float32)
    patches = _crop(canvas.coarse_bank, rng, shape_hw)
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
    spread = 35.0 if plan.pattern == "bilateral-ggo" or any(b.base_hu < -200 for b in plan.blobs) else 20.0
    np.copyto(canvas.image, lesion_hu + spread * patches, where=lesion)
    return lesion


def _vessel_seeds(canvas: _Canvas, anatomy: _Anatomy, lungs: dict, lung_scale: float, window,
                  rng: np.random.Generator) -> np.ndarray:
    """Vessel seeds inside the lung window ``(r0, r1, c0, c1)``: random dots and branches from each hilum."""
    v, u = canvas.v, canvas.u
    r0, r1, c0, c1 = window
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
    return seeds


def _draw_vessels(canvas: _Canvas, anatomy: _Anatomy, lungs: dict, lung_any: np.ndarray, lung_scale: float,
                  rng: np.random.Generator) -> None:
    """Bright dots plus branches from the hilum, blended in by partial volume (lung bounding box only)."""
    if not lung_any.any():
        return
    height, width = canvas.shape_hw
    row_hits = np.flatnonzero(lung_any.any(axis=1))
    col_hits = np.flatnonzero(lung_any.any(axis=0))
    pad = int(3 * canvas.size_scale) + 2
    r0, r1 = max(row_hits[0] - pad, 0), min(row_hits[-1] + pad + 1, height)
    c0, c1 = max(col_hits[0] - pad, 0), min(col_hits[-1] + pad + 1, width)
    seeds = _vessel_seeds(canvas, anatomy, lungs, lung_scale, (r0, r1, c0, c1), rng)
    sigma = 0.6 * canvas.size_scale
    weight = ndimage.gaussian_filter(seeds, sigma, truncate=3.0) * np.float32(2 * math.pi * sigma**2)
    np.clip(weight, 0.0, 1.0, out=weight)
    weight *= lung_any[r0:r1, c0:c1]
    view = canvas.image[r0:r1, c0:c1]
    view += weight * (40.0 - view)


def _draw_bronchograms(canvas: _Canvas, plan: _LesionPlan, lesion: np.ndarray, rng: np.random.Generator) -> None:
    """Air bronchograms: thin air tubes from the centre of the consolidation outwards."""
    if not plan.bronchograms or not lesion.any():
        return
    width = canvas.shape_hw[1]
    core = ndimage.binary_erosion(lesion, iterations=max(1, int(round(canvas.size_scale))))
    core_idx = np.flatnonzero(core)
    if core_idx.size <= 4:
        return
    center_r, center_c = ndimage.center_of_mass(core)
    for end in rng.choice(core_idx, size=plan.bronchograms):
        r_end, c_end = divmod(int(end), width)
        steps = int(max(abs(r_end - center_r), abs(c_end - center_c))) + 1
        line_r = np.linspace(center_r, r_end, steps).round().astype(int)
        line_c = np.linspace(center_c, c_end, steps).round().astype(int)
        keep = core[line_r, line_c]
        canvas.image[line_r[keep], line_c[keep]] = -870.0


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
    canvas = _Canvas.start(shape_hw, rng)
    body, inner, thorax, table = _draw_body_and_table(canvas, anatomy)
    heart_halo = _draw_heart(canvas, anatomy, heart_scale, inner)
    bone = np.zeros(shape_hw, dtype=bool)
    keepout = _draw_spine(canvas, anatomy, inner, bone)
    _draw_ribs_and_sternum(canvas, anatomy, inner, bone)
    bone &= body
    airway_air, airway_wall = _airway_masks(shape_hw, anatomy, airway, keepout)
    keepout |= bone | heart_halo
    lungs, lung_any = _draw_lungs(canvas, anatomy, lung_scale, thorax, keepout)
    lesion = _draw_lesions(canvas, anatomy, plan, lungs, lung_scale, rng)
    _draw_vessels(canvas, anatomy, lungs, lung_any, lung_scale, rng)
    _draw_bronchograms(canvas, plan, lesion, rng)

    # Airway drawn last: air inside a soft-tissue wall, never part of the lungs.
    image = canvas.image
    image[airway_wall & ~lung_any & body] = 30.0
    image[airway_air & body] = AIR_HU
    image += np.float32(anatomy.noise_sd_hu) * _crop(canvas.white_bank, rng, shape_hw)
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
            "pixel_spacing_mm": FIELD_OF_VIEW_MM / max(shape_hw),
        },
    }
