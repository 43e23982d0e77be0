"""CT volumes for 3D models: HU window, fixed shape or target spacing, orientation, and a volume cache.

Volume models take ``(D, H, W, 1)`` values in 0..255: HU clipped to [-1000, 400] and mapped linearly
(-1000 HU, air, to 0; +400 HU, dense soft tissue and the start of bone, to 255). The window keeps
everything from air through lung parenchyma, ground glass and consolidation to soft tissue, and
saturates bone, as in the MosMedData 3D CNN of CovidScan and the keras-io ``3D_image_classification``
example. The models divide by 255 inside, so the cache holds compact uint8.

**Shapes.** covidct writes volume shapes as (D, H, W) = (axial slices, rows, columns), the layout of
``covidct.data.io.read_image``: slices inferior (0) to superior, anterior at the top of each slice,
the patient's right on the image left. The original studies write sizes the other way round: CovidScan's
"64x64x32" and keras-io's "128x128x64" are (W, H, D) (keras-io's ``process_scan`` resizes the array
from ``nibabel.get_fdata()`` to ``(128, 128, 64)`` with depth last). In covidct they are
``SHAPES["covidscan"] = (32, 64, 64)`` and ``SHAPES["kerasio"] = (64, 128, 128)``; use
``kerasio_to_dhw`` / ``dhw_to_kerasio`` to move arrays between the two layouts.

**Memory.** ``preprocess_volume`` windows the volume into uint8 a slab of slices at a time and
resamples the uint8 array, so a volume of N float32 voxels is processed with the input plus about a
quarter of it (the uint8 copy) in memory: well under two copies. ``.npy`` files are memory-mapped and
NIfTI files are read a slab at a time, so from a path the float volume is never in memory at all.

**Cache.** ``build_volume_cache(manifest, shape)`` stores one preprocessed volume per manifest row in a
memory-mapped uint8 array (N, D, H, W, 1) with its manifest, like the slice cache of
``covidct.data.cache``: same key scheme, same ``indices(split)``, same checks before reuse (input files
unchanged in size and modification time, ``images.u8`` of the size ``meta.json`` says; otherwise rebuilt
with a logged warning), same build lock; an interrupted build resumes unless its files changed meanwhile.

**Non-finite values.** Every reader refuses a volume holding NaN or infinite values (``CovidctError``
naming the file): windowing would turn them into arbitrary grey levels and a model would answer
confidently from nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from covidct import __version__
from covidct.data.cache import ManifestRows, cache_key, reuse_or_build
from covidct.data.cache_integrity import (
    array_problem,
    changed_inputs,
    input_stats,
    read_cache_meta,
    read_cache_tables,
    stats_digest,
)
from covidct.data.io import CTImage, check_finite, detect_format, read_image
from covidct.data.manifest import validate_manifest
from covidct.data.phantom import write_phantom_volumes  # noqa: F401  (re-exported: its old home)
from covidct.data.writes import atomic_write_text, removing_on_error
from covidct.errors import CovidctError, unknown_name_error

logger = logging.getLogger(__name__)

#: The volume HU window (keras-io and CovidScan): [-1000, 400] HU mapped to 0..255.
HU_MIN, HU_MAX = -1000.0, 400.0
#: Named target shapes, (D, H, W). CovidScan writes 64x64x32 and keras-io 128x128x64 as (W, H, D).
SHAPES = {"covidscan": (32, 64, 64), "kerasio": (64, 128, 128)}
#: Axis codes of the (D, H, W) layout (nibabel convention: the direction each index increases towards):
#: D towards Superior, H towards Posterior, W towards the patient's Left (radiological view).
DHW_AXCODES = ("S", "P", "L")
#: Slices windowed at a time (bounds the float temporaries of ``hu_to_uint8``).
SLAB_SLICES = 16
VOLUME_CACHE_FORMAT = "1"


# ----------------------------------------------------------------------------------------- intensities
def hu_to_uint8(volume_hu: np.ndarray, hu_min: float = HU_MIN, hu_max: float = HU_MAX) -> np.ndarray:
    """Clip HU to [hu_min, hu_max] and map linearly to uint8 0..255 (rounded), a slab at a time.

    Args:
        volume_hu: (D, H, W) or (H, W) array in HU, any real dtype (a memmap is fine: it is read
            ``SLAB_SLICES`` slices at a time).
        hu_min: HU mapped to 0 (default -1000, air).
        hu_max: HU mapped to 255 (default 400).

    Returns:
        uint8 array of the same shape: ``round((clip(hu) - hu_min) / (hu_max - hu_min) * 255)``.
    """
    if not hu_max > hu_min:
        raise CovidctError(f"hu_to_uint8: hu_max ({hu_max}) must be above hu_min ({hu_min}).")
    volume_hu = np.asarray(volume_hu)
    out = np.empty(volume_hu.shape, dtype=np.uint8)
    scale = np.float32(255.0 / (hu_max - hu_min))
    flat_in = volume_hu.reshape((1,) + volume_hu.shape) if volume_hu.ndim == 2 else volume_hu
    flat_out = out.reshape((1,) + out.shape) if out.ndim == 2 else out
    for start in range(0, flat_in.shape[0], SLAB_SLICES):
        slab = np.asarray(flat_in[start : start + SLAB_SLICES], dtype=np.float32)
        slab = np.clip(slab, hu_min, hu_max)
        slab -= np.float32(hu_min)
        slab *= scale
        np.rint(slab, out=slab)
        flat_out[start : start + SLAB_SLICES] = slab
    return out


def hu_to_unit(volume_hu: np.ndarray, hu_min: float = HU_MIN, hu_max: float = HU_MAX) -> np.ndarray:
    """keras-io's ``normalize``: clip HU to [hu_min, hu_max] and scale to float32 [0, 1]."""
    volume = np.clip(np.asarray(volume_hu, dtype=np.float32), hu_min, hu_max)
    return (volume - np.float32(hu_min)) / np.float32(hu_max - hu_min)


# ---------------------------------------------------------------------------------------------- shapes
def resolve_shape(shape) -> tuple[int, int, int]:
    """A (D, H, W) tuple from a tuple or a name in ``SHAPES`` (``"covidscan"``, ``"kerasio"``)."""
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise unknown_name_error("volume shape", shape, SHAPES)
        return SHAPES[shape]
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise CovidctError(f"volume shape {shape!r} must be three positive sizes (D, H, W).")
    return shape


def resize_volume(volume: np.ndarray, shape=(32, 64, 64), order: int = 1) -> np.ndarray:
    """Resize a (D, H, W) volume to ``shape`` with ``scipy.ndimage.zoom`` (the original studies' method).

    Args:
        volume: (D, H, W) array; the output keeps its dtype (uint8 values are interpolated and rounded).
        shape: target (D, H, W) or a name in ``SHAPES``.
        order: spline order (1 = trilinear, as keras-io; 0 = nearest, for label masks).

    Returns:
        The resized array, exactly ``shape``.
    """
    shape = resolve_shape(shape)
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise CovidctError(f"resize_volume: expected a (D, H, W) volume, got shape {volume.shape}.")
    if volume.shape == shape:
        return np.array(volume)
    factors = [target / current for target, current in zip(shape, volume.shape)]
    # grid_mode=True maps voxel *areas* (edges to edges), so a 2x shrink averages pairs of voxels rather
    # than sampling every other one off-centre; zoom also keeps uint8 in, uint8 out (no float copy).
    resized = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True, prefilter=False)
    if resized.shape != shape:  # zoom rounds output sizes; guard against an off-by-one
        resized = resized[: shape[0], : shape[1], : shape[2]]
        resized = np.pad(resized, [(0, t - s) for t, s in zip(shape, resized.shape)], mode="edge")
    return resized


def resample_spacing(
    volume: np.ndarray, spacing_mm, target_spacing_mm=(2.0, 1.5, 1.5), order: int = 1
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Resample a (D, H, W) volume to a target voxel spacing.

    Args:
        volume: (D, H, W) array.
        spacing_mm: its (slice, row, column) spacing in mm.
        target_spacing_mm: wanted spacing in mm (default 2 mm slices, 1.5 mm pixels).
        order: spline order (1 trilinear, 0 nearest for masks).

    Returns:
        (resampled volume, actual spacing in mm). The output has ``round(size * spacing / target)``
        voxels per axis, so the actual spacing differs from the target by the rounding only.
    """
    if spacing_mm is None or len(tuple(spacing_mm)) != 3:
        raise CovidctError(
            f"resample_spacing: spacing_mm={spacing_mm!r} must be (slice, row, column) in mm; the reader gives "
            "it as CTImage.spacing (None when the file does not record it: resize to a fixed shape instead)."
        )
    spacing = np.asarray(spacing_mm, dtype=float)
    target = np.asarray(target_spacing_mm, dtype=float)
    if np.any(spacing <= 0) or np.any(target <= 0) or target.shape != (3,):
        raise CovidctError(
            f"resample_spacing: spacings must be positive (got {spacing_mm} -> {target_spacing_mm})."
        )
    volume = np.asarray(volume)
    new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(volume.shape, spacing, target))
    resized = resize_volume(volume, new_shape, order=order)
    actual = tuple(float(n * s / m) for n, s, m in zip(volume.shape, spacing, new_shape))
    return resized, actual


# ------------------------------------------------------------------------------------------ orientation
def reorient(volume: np.ndarray, axcodes, target=DHW_AXCODES) -> np.ndarray:
    """Flip and transpose an array from its axis codes to ``target`` (default the (D, H, W) layout).

    Axis codes follow nibabel: the anatomical direction each index increases towards, e.g.
    ``("R", "A", "S")`` for data read with ``nibabel.as_closest_canonical(img).get_fdata()``. The result
    is a view where possible (flips and transposes copy nothing).

    Args:
        volume: a 3-D array.
        axcodes: its three axis codes (``"L"/"R"``, ``"A"/"P"``, ``"S"/"I"``).
        target: the wanted axis codes; default ``DHW_AXCODES`` = (S, P, L).

    Returns:
        The reoriented array.
    """
    from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

    volume = np.asarray(volume)
    try:
        source_ornt = axcodes2ornt(tuple(axcodes))
        target_ornt = axcodes2ornt(tuple(target))
        if np.isnan(source_ornt).any() or np.isnan(target_ornt).any():
            raise ValueError("unknown axis code")
        transform = ornt_transform(source_ornt, target_ornt)
    except ValueError as error:
        raise CovidctError(
            f"reorient: bad axis codes {tuple(axcodes)} -> {tuple(target)} ({error}); use one of L/R, A/P, S/I "
            "per axis, each direction once."
        ) from None
    if volume.ndim != 3:
        raise CovidctError(f"reorient: expected a 3-D array, got shape {volume.shape}.")
    return apply_orientation(volume, transform)


def kerasio_to_dhw(volume_whd: np.ndarray) -> np.ndarray:
    """keras-io layout (rows, cols, depth) - its "128x128x64" - to covidct's (D, H, W): depth first."""
    volume_whd = np.asarray(volume_whd)
    if volume_whd.ndim != 3:
        raise CovidctError(f"kerasio_to_dhw: expected a 3-D array, got shape {volume_whd.shape}.")
    return np.moveaxis(volume_whd, -1, 0)


def dhw_to_kerasio(volume_dhw: np.ndarray) -> np.ndarray:
    """covidct's (D, H, W) to the keras-io layout (rows, cols, depth): depth last."""
    volume_dhw = np.asarray(volume_dhw)
    if volume_dhw.ndim != 3:
        raise CovidctError(f"dhw_to_kerasio: expected a 3-D array, got shape {volume_dhw.shape}.")
    return np.moveaxis(volume_dhw, 0, -1)


# ------------------------------------------------------------------------------------------- pipeline
def load_volume(path) -> object:
    """Read a volume file or DICOM series folder as a ``CTImage`` (D, H, W), holding one copy at most.

    ``.npy`` files are memory-mapped (HU, nothing read until used); NIfTI files are read a slab at a
    time into one float32 (D, H, W) array (same values and layout as ``covidct.data.io.read_image``,
    without its intermediate full-size copy); DICOM series go through ``read_image``.

    Raises:
        CovidctError: the file is not a 3-D volume.
    """

    path = Path(path)
    kind = detect_format(path)
    if kind == "npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise CovidctError(f"{path}: cannot read the NumPy file ({error}).") from None
        if array.dtype.kind not in "biuf":
            raise CovidctError(f"{path}: expected numbers (HU), got a {array.dtype} array.")
        check_finite(array, path, "volume")
        image = CTImage(array, "HU", str(path), None, {"format": "npy"})
    elif kind == "nifti":
        array, spacing, unit = _read_nifti_slabs(path, None)
        image = CTImage(array, unit, str(path), spacing, {"format": "nifti"})
    else:
        image = read_image(path)
    if image.array.ndim != 3:
        raise CovidctError(f"{path}: expected a 3-D volume (D, H, W), got shape {image.array.shape}.")
    return image


def _nifti_to_uint8(path: Path) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """Window a NIfTI volume into uint8 (D, H, W) a slab at a time (see ``_read_nifti_slabs``)."""
    return _read_nifti_slabs(path, np.uint8)


def _read_nifti_slabs(path: Path, dtype) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """Read a NIfTI volume into the (D, H, W) layout a slab of ``SLAB_SLICES`` slices at a time.

    Same orientation as ``covidct.data.io.read_nifti`` (inferior to superior, anterior at the top,
    patient right on the image left), but only one slab is ever decoded at once: with ``dtype=np.uint8``
    each slab is windowed (``hu_to_uint8``; uint8 files are display values and kept), so the float
    volume never exists; with ``dtype=None`` the output is float32 values (one copy, no intermediate).

    Returns:
        (volume, spacing (D, H, W) in mm, unit ``"HU"`` or ``"display"`` for uint8 files).
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform


    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises several unrelated types for bad files
        raise CovidctError(f"{path}: cannot read the NIfTI file ({error}).") from None
    shape = image.shape[:3] if len(image.shape) == 4 and image.shape[3] == 1 else image.shape
    if len(shape) != 3:
        raise CovidctError(f"{path}: expected a 3-D volume, got shape {image.shape}; split 4-D files first.")
    source = io_orientation(image.affine)
    transform = ornt_transform(source, axcodes2ornt(DHW_AXCODES))
    # The source axis that runs along the patient's long axis becomes D; slabs are cut along it.
    long_axis = int(np.flatnonzero(source[:, 0] == 2)[0])
    towards_head = source[long_axis, 1] > 0
    depth = shape[long_axis]
    out_shape = [0, 0, 0]
    zooms = image.header.get_zooms()[:3]
    spacing = [0.0, 0.0, 0.0]
    for axis in range(3):
        target_axis = int(transform[axis, 0])
        out_shape[target_axis] = shape[axis]
        spacing[target_axis] = float(zooms[axis])
    display = image.get_data_dtype() == np.uint8
    out = np.empty(out_shape, dtype=np.float32 if dtype is None else np.uint8)
    proxy = image.dataobj
    for start in range(0, depth, SLAB_SLICES):
        stop = min(start + SLAB_SLICES, depth)
        index = [slice(None)] * len(image.shape)
        index[long_axis] = slice(start, stop)
        if len(image.shape) == 4:
            index[3] = 0
        try:
            slab = np.asarray(proxy[tuple(index)], dtype=np.float32)
        except Exception as error:
            raise CovidctError(
                f"{path}: cannot decode the NIfTI data ({error}); the file may be truncated."
            ) from None
        check_finite(slab, path, "volume")
        slab = apply_orientation(slab, transform)
        rows = slice(start, stop) if towards_head else slice(depth - stop, depth - start)
        if dtype is None:
            out[rows] = slab
        elif display:
            out[rows] = np.clip(np.rint(slab), 0, 255).astype(np.uint8)
        else:
            out[rows] = hu_to_uint8(slab)
    return out, tuple(spacing), ("display" if display else "HU")


def preprocess_volume(image, shape=(32, 64, 64), target_spacing_mm=None) -> np.ndarray:
    """The volume models' input: window to uint8, then resample and/or resize to a fixed shape.

    Args:
        image: a ``CTImage`` volume (HU or display units), a path, or a (D, H, W) array in HU.
        shape: output (D, H, W) or a name in ``SHAPES``.
        target_spacing_mm: when given (and the spacing is known), first resample to this spacing, then
            resize to ``shape`` (so the anatomy keeps its proportions before the final resize).

    Returns:
        uint8 (D, H, W) volume in 0..255. Display-unit volumes (already windowed exports, e.g. the
        COVID-CT-MD sample's uint8 NIfTI) are taken as they are, since their HU window is unknown.
    """

    if isinstance(image, (str, os.PathLike)):

        if detect_format(image) == "nifti":
            volume_u8, spacing, _ = _nifti_to_uint8(Path(image))
            if target_spacing_mm is not None:
                volume_u8, _ = resample_spacing(volume_u8, spacing, target_spacing_mm)
            return resize_volume(volume_u8, shape)
        image = load_volume(image)
    elif not isinstance(image, CTImage):
        image = CTImage(np.asarray(image), "HU")
    check_finite(image.array, image.path or None, "volume")
    if image.array.ndim != 3:
        raise CovidctError(
            f"{image.path or 'volume'}: expected a (D, H, W) volume, got shape {image.array.shape}."
        )
    if image.unit == "display":
        volume_u8 = np.clip(np.rint(image.array), 0, 255).astype(np.uint8)
    elif image.unit == "HU":
        volume_u8 = hu_to_uint8(image.array)
    else:
        raise CovidctError(
            f"{image.path}: unknown intensity unit {image.unit!r}; expected 'HU' or 'display'."
        )
    if target_spacing_mm is not None:
        if image.spacing is None:
            logger.warning("%s: spacing unknown; resizing to %s without resampling", image.path, shape)
        else:
            volume_u8, _ = resample_spacing(volume_u8, image.spacing, target_spacing_mm)
    return resize_volume(volume_u8, shape)


# ---------------------------------------------------------------------------------------------- cache
@dataclass
class VolumeCache(ManifestRows):
    """A built volume cache: a uint8 memmap (N, D, H, W, 1) aligned with ``manifest`` rows.

    Attributes:
        path: the cache folder.
        key: the content key (hex).
        images: uint8 memmap (N, D, H, W, 1), HU [-1000, 400] mapped to 0..255.
        manifest: DataFrame, one row per volume (``path, label, group, split, source, ...``).
        failed: DataFrame ``path, error`` of skipped volumes.
        meta: the contents of ``meta.json``.
    """

    path: Path
    key: str
    images: np.ndarray
    manifest: pd.DataFrame
    failed: pd.DataFrame
    meta: dict

    @classmethod
    def open(cls, path) -> VolumeCache:
        """Open a finished volume cache folder read-only."""
        path = Path(path)
        meta, problem = read_cache_meta(path, required=("key", "count", "shape"))
        problem = problem or array_problem(path, volume_arrays(meta))
        if problem:
            raise CovidctError(f"{problem}; rebuild it with build_volume_cache(..., rebuild=True).")
        shape = (meta["count"], *meta["shape"], 1)
        images = np.memmap(path / "images.u8", dtype=np.uint8, mode="r", shape=shape)
        manifest, failed = read_cache_tables(path, int(meta["count"]))
        return cls(path, meta["key"], images, manifest, failed, meta)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (D, H, W) of every cached volume."""
        return tuple(self.meta["shape"])



def volume_arrays(meta: dict) -> dict[str, int]:
    """Expected byte size of a volume cache's ``images.u8`` from its ``meta.json``."""
    return {"images.u8": int(meta["count"]) * int(np.prod([int(s) for s in meta["shape"]]))}


def _allocated_memmap(path: Path, shape: tuple, mode: str) -> np.memmap:
    """A uint8 memmap whose disk blocks are reserved first: a full disk is then an ``OSError`` here, not a
    SIGBUS when a page of a sparse file is written later."""
    if mode == "w+":
        with open(path, "wb") as handle:
            size = int(np.prod(shape))
            if size and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle.fileno(), 0, size)
            else:
                handle.truncate(size)
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)


def volume_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per volume file: a per-slice manifest (``slice_index`` >= 0) is collapsed by path."""
    frame = manifest.reset_index(drop=True)
    if "slice_index" in frame and (frame["slice_index"].astype(int) >= 0).any():
        frame = frame.drop_duplicates("path").reset_index(drop=True)
        frame["slice_index"] = -1
    return frame


def build_volume_cache(
    manifest: pd.DataFrame,
    shape=(32, 64, 64),
    cache_root=".cache/covidct",
    target_spacing_mm=None,
    progress: bool = True,
    rebuild: bool = False,
) -> VolumeCache:
    """Preprocess every volume of a manifest once into a memory-mapped uint8 (N, D, H, W, 1) cache.

    Volumes are processed one at a time (each is large; memory holds one input volume, its uint8 copy
    and the small output) and written straight into the memmap; a finished volume is recorded in
    ``progress.json`` so an interrupted build resumes. A volume that cannot be read is logged, listed
    in ``failed.csv`` and left out; the build stops only when a class loses every volume.

    Args:
        manifest: a Manifest of volume files (rows with ``slice_index`` >= 0 are collapsed per file).
        shape: output (D, H, W) or a name in ``SHAPES``.
        cache_root: folder holding caches (shared with the slice cache).
        target_spacing_mm: resample to this spacing before the final resize (see ``preprocess_volume``).
        progress: show a tqdm progress bar.
        rebuild: rebuild even when an up-to-date cache exists.

    Returns:
        The ``VolumeCache``, reused when a finished cache with the same key exists, its input files are
        unchanged (size, modification time) and ``images.u8`` is intact. The key hashes the manifest,
        the shape, the spacing, covidct's version and this module's source.

    Raises:
        CovidctError: a class with no readable volume, or a cache folder that cannot be written (disk full,
            read-only), naming the file.
    """

    validate_manifest(manifest)
    shape = resolve_shape(shape)
    rows = volume_rows(manifest)
    spacing_tag = "" if target_spacing_mm is None else "@" + "x".join(f"{s:g}" for s in target_spacing_mm)
    size_tag = "x".join(str(s) for s in shape) + spacing_tag
    key = cache_key(rows, "volume", size_tag, preprocess_volume)
    folder = Path(cache_root) / f"volume-{size_tag}-{key[:16]}"
    stats = input_stats(rows)
    digest = stats_digest(stats)
    return reuse_or_build(
        folder, rebuild, "volume cache", lambda: _volume_reuse_problem(folder, key, stats, digest),
        lambda: VolumeCache.open(folder),
        lambda: _build_volume_cache(rows, shape, size_tag, folder, key, target_spacing_mm, progress, stats, digest),
        VOLUME_CACHE_FILES,
    )


VOLUME_CACHE_FILES = ("meta.json", "images.u8", "images.u8.part", "manifest.csv", "failed.csv", "inputs.csv",
                      "progress.json")


def _volume_reuse_problem(folder: Path, key: str, stats: pd.DataFrame, digest: str) -> str:
    """Why the volume cache in ``folder`` cannot be reused ("" when it can)."""
    meta, problem = read_cache_meta(folder, required=("key", "count", "shape"))
    if problem:
        return problem
    if meta["key"] != key:
        return f"{folder / 'meta.json'}: holds key {str(meta['key'])[:16]}..., not this cache's {key[:16]}..."
    return array_problem(folder, volume_arrays(meta)) or changed_inputs(folder, stats, digest, meta)


def _build_volume_cache(rows: pd.DataFrame, shape: tuple, size_tag: str, folder: Path, key: str, target_spacing_mm,
                        progress: bool, stats: pd.DataFrame, digest: str) -> VolumeCache:
    """``build_volume_cache``'s work under the build lock: volume by volume (resumable), then ``meta.json``."""
    from tqdm.auto import tqdm


    count = len(rows)
    work = folder / "images.u8.tmp"
    progress_file = folder / "progress.json"
    try:
        state = json.loads(progress_file.read_text()) if progress_file.is_file() and work.is_file() else {}
    except ValueError:  # a progress file cut short: start again
        state = {}
    if state and state.get("inputs_digest") != digest:
        logger.warning("discarding the unfinished volume cache build in %s: the input files changed since", folder)
        state = {}
    done = {int(k): v for k, v in state.get("done", {}).items()}
    with removing_on_error(*([] if done else [work]), what=work):
        images = _allocated_memmap(work, (count, *shape, 1), "r+" if done else "w+")
    started = time.perf_counter()
    bar = tqdm(
        total=count, initial=len(done), desc=f"volume cache {size_tag}", unit="vol", disable=not progress
    )
    for index, path in enumerate(rows["path"]):
        if index in done:
            continue
        try:
            images[index, ..., 0] = preprocess_volume(path, shape, target_spacing_mm)
            done[index] = ""
        except (CovidctError, OSError, ValueError) as error:
            message = (
                str(error)
                if isinstance(error, CovidctError)
                else f"{path}: {error.__class__.__name__}: {error}"
            )
            logger.warning("skipped %s: %s", path, message)
            done[index] = message
        with removing_on_error(what=work):
            images.flush()
        atomic_write_text(progress_file, json.dumps({"inputs_digest": digest,
                                                     "done": {str(k): v for k, v in done.items()}}))
        bar.update(1)
    bar.close()
    good = [i for i in range(count) if not done.get(i)]
    failed = pd.DataFrame(
        [{"path": rows["path"][i], "error": done[i]} for i in range(count) if done.get(i)],
        columns=["path", "error"],
    )
    lost = sorted(set(rows["label"]) - set(rows["label"].iloc[good]))
    if lost:
        raise CovidctError(
            f"volume cache: class(es) {lost} have no readable volume ({len(failed)} failed, e.g. "
            f"{failed['error'].iloc[0] if len(failed) else 'none'}); fix or remove them."
        )
    if len(good) < count:  # compact: keep the readable volumes only
        part = folder / "images.u8.part"
        with removing_on_error(part):
            final = _allocated_memmap(part, (len(good), *shape, 1), "w+")
            for out_index, in_index in enumerate(good):
                final[out_index] = images[in_index]
            final.flush()
            del final, images
            os.replace(part, folder / "images.u8")
        work.unlink()
    else:
        del images
        os.replace(work, folder / "images.u8")
    out = rows.iloc[good].reset_index(drop=True)
    out["source_row"] = good
    for name, table in (("manifest.csv", out), ("failed.csv", failed), ("inputs.csv", stats)):
        atomic_write_text(folder / name, table.to_csv(index=False))
    meta = {
        "key": key,
        "kind": "volume",
        "shape": list(shape),
        "count": len(good),
        "failed": len(failed),
        "target_spacing_mm": None if target_spacing_mm is None else list(target_spacing_mm),
        "hu_window": [HU_MIN, HU_MAX],
        "layout": "(N, D, H, W, 1); D inferior->superior, H anterior->posterior, W patient right->left",
        "version": __version__,
        "format": VOLUME_CACHE_FORMAT,
        "inputs_digest": digest,
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2))
    progress_file.unlink(missing_ok=True)
    return VolumeCache.open(folder)
