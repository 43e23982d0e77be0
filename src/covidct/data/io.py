"""Readers: one entry point, ``read_image(path)``, for PNG/JPG/BMP/TIFF, DICOM, NIfTI and NumPy files.

``read_image`` looks at the file (magic bytes first, then the suffix) and returns a :class:`CTImage`
whose ``unit`` says how to read its intensities:

- ``"HU"``: Hounsfield units. DICOM (after RescaleSlope/RescaleIntercept), NIfTI with a signed or
  floating-point data type, ``.npy`` files (covidct's own convention: phantoms are stored as int16 HU).
- ``"display"``: grey levels 0-255 of an exported picture whose original HU window is unknown
  (PNG/JPG/BMP/TIFF; 16-bit pictures are scaled by 255/65535), and NIfTI files stored as uint8
  (already windowed exports such as the COVID-CT-MD sample).

Orientation convention for volumes: ``array`` is (D, H, W) = (axial slice, row, column). Axial slices
run **inferior to superior** (index 0 is the slice nearest the feet) and each slice is in the usual
radiological view (patient anterior at the top, patient right on the left of the image). NIfTI files
are brought to RAS+ with ``nibabel.as_closest_canonical`` and then flipped/transposed to this layout;
DICOM series are sorted by the position of each slice along the slice normal (ascending = towards the
head for axial scans) and keep the in-plane orientation of their pixel data. ``spacing`` follows the
array axes in mm: (row, col) for a slice, (slice, row, col) for a volume.

Every reader refuses NaN and infinite values (``check_finite``): a ``CovidctError`` naming the file and
the number of such values. Windowing would otherwise turn them into arbitrary grey levels, and a model
fed those answers with confidence from nothing.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidct.errors import CovidctError, did_you_mean, unknown_name_error

UNITS = ("HU", "display")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES = PICTURE_SUFFIXES + (".dcm", ".dicom", ".nii", ".nii.gz", ".npy")
# Colour channels of a grayscale export that went through a colour pipeline differ by a level or two;
# anything beyond this many 8-bit grey levels (at the 99th percentile of pixels) is real colour.
COLOUR_TOLERANCE_LEVELS = 2.0

logger = logging.getLogger(__name__)


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


#: Slices checked at a time by ``check_finite`` (bounds its temporary boolean array).
FINITE_CHECK_SLICES = 16


def check_finite(array: np.ndarray, path: str | Path | None, what: str = "image") -> np.ndarray:
    """Refuse an array holding NaN or +-inf values; integer arrays pass without a look.

    A volume (memmaps too) is checked ``FINITE_CHECK_SLICES`` slices at a time, so no full-size
    temporary is made.

    Args:
        array: the decoded values.
        path: the file they came from (named in the message).
        what: ``"image"`` or ``"volume"``, for the message.

    Returns:
        ``array`` unchanged.

    Raises:
        CovidctError: "<file>: the <what> holds N non-finite value(s) (NaN or infinite) ...".
    """
    if not np.issubdtype(array.dtype, np.inexact):
        return array
    blocks = [array] if array.ndim < 3 else (array[k : k + FINITE_CHECK_SLICES]
                                             for k in range(0, array.shape[0], FINITE_CHECK_SLICES))
    bad = sum(int(np.count_nonzero(~np.isfinite(block))) for block in blocks)
    if bad:
        nan = "all" if bad == array.size else f"{bad} of {array.size}"
        raise CovidctError(
            f"{path or 'array'}: the {what} holds non-finite values ({nan} voxels are NaN or infinite); covidct "
            "refuses them rather than guess intensities. Fix the export (or replace NaN by a HU value such as "
            "-1024, air) and remove the file from the dataset meanwhile."
        )
    return array


def header_kind(head: bytes) -> str | None:
    """The image type its first bytes (at least 132) announce, by magic number alone; None when none matches.

    One of ``"dicom"`` (the ``DICM`` tag after the 128-byte preamble, checked first: a preamble may itself look
    like a TIFF header), ``"npy"``, ``"png"``, ``"jpeg"``, ``"bmp"``, ``"tiff"``.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, kind in ((b"\x93NUMPY", "npy"), (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"BM", "bmp"),
                        (b"II*\x00", "tiff"), (b"MM\x00*", "tiff")):
        if head.startswith(magic):
            return kind
    return None

def detect_format(path: str | Path) -> str:
    """Tell what kind of image file (or folder) ``path`` is.

    Args:
        path: a file or a DICOM series folder.

    Returns:
        One of ``"dicom-series"``, ``"npy"``, ``"nifti"``, ``"dicom"``, ``"png"``, ``"jpeg"``,
        ``"bmp"``, ``"tiff"``.

    Raises:
        CovidctError: when the path does not exist, is empty, or is not a known image type.
    """
    path = Path(path)
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            hint = did_you_mean(path.name, [p.name for p in path.parent.iterdir()])
        raise CovidctError(f"{path}: no such file or folder.{hint}")
    if path.is_dir():
        return "dicom-series"
    if path.stat().st_size == 0:
        raise CovidctError(f"{path}: the file is empty (0 bytes); re-download or remove it.")
    with open(path, "rb") as handle:
        head = handle.read(132)
    name = path.name.lower()
    kind = header_kind(head)
    if kind is not None:
        return kind
    if head.startswith(b"\x1f\x8b") and name.endswith(".nii.gz"):
        return "nifti"
    if name.endswith(".nii") and len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540):
        return "nifti"
    if name.endswith((".dcm", ".dicom")):
        return "dicom"  # DICOM without the 128-byte preamble: let pydicom try.
    if name.endswith(IMAGE_SUFFIXES):
        raise CovidctError(
            f"{path}: the content is not a valid {Path(name).suffix} image (unrecognised file header "
            f"{head[:8]!r}); the file is corrupt or mislabelled."
        )
    raise CovidctError(
        f"{path}: unsupported file type. covidct reads {', '.join(IMAGE_SUFFIXES)} files and DICOM folders."
    )


def read_image(path: str | Path, slice_index: int | None = None, **options) -> CTImage:
    """Read any supported image, volume or DICOM series folder.

    Args:
        path: a PNG/JPG/BMP/TIFF picture, a DICOM file, a DICOM series folder, a NIfTI file
            (``.nii``/``.nii.gz``) or a ``.npy`` array of HU values.
        slice_index: for volumes, return only this axial slice (index along axis 0 of the (D, H, W)
            convention described in the module docstring). ``None`` or ``-1`` returns the whole array.
        **options: passed to the format reader (``series_uid`` and ``strict`` for DICOM series).

    Returns:
        A ``CTImage`` with a float32 array, its unit (``"HU"`` or ``"display"``), spacing and meta.

    Raises:
        CovidctError: naming the file, for missing, empty, corrupt or unsupported files.
    """
    kind = detect_format(path)
    readers = {
        "dicom-series": read_dicom_series,
        "npy": read_npy,
        "nifti": read_nifti,
        "dicom": read_dicom,
    }
    reader = readers.get(kind, read_picture)
    image = reader(path, **options)
    image.meta.setdefault("format", kind)
    if slice_index is not None and slice_index >= 0:
        image = take_slice(image, slice_index)
    return image


def take_slice(image: CTImage, slice_index: int) -> CTImage:
    """Return axial slice ``slice_index`` of a volume (a 2-D image is returned unchanged for index 0)."""
    if image.array.ndim == 2:
        if slice_index != 0:
            raise CovidctError(f"{image.path}: a 2-D image has no slice {slice_index}.")
        return image
    depth = image.array.shape[0]
    if not 0 <= slice_index < depth:
        raise CovidctError(f"{image.path}: slice_index {slice_index} is outside 0..{depth - 1}.")
    spacing = tuple(image.spacing[1:]) if image.spacing else None
    meta = dict(image.meta, slice_index=int(slice_index))
    return CTImage(np.ascontiguousarray(image.array[slice_index]), image.unit, image.path, spacing, meta)


# --------------------------------------------------------------------------------------------- pictures
def read_picture(path: str | Path, **_) -> CTImage:
    """Read an 8- or 16-bit PNG/JPG/BMP/TIFF (gray, RGB or RGBA) as one display channel.

    Colour pictures become one channel: when the colour channels are equal up to
    ``COLOUR_TOLERANCE_LEVELS`` (a grayscale export saved as RGB) their mean is used; when they really
    differ (annotations, colour maps) a warning is issued and the luminance (ITU-R 601) is used. An
    alpha channel is dropped. 16-bit values are scaled to 0-255.

    Args:
        path: the picture file.

    Returns:
        ``CTImage`` with unit ``"display"`` and meta ``bit_depth``, ``channels``, ``width``, ``height``.
    """
    import cv2

    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise CovidctError(f"{path}: cannot decode the image (truncated or corrupt file); re-download or remove it.")
    if pixels.dtype == np.uint8:
        bit_depth, scale = 8, 1.0
    elif pixels.dtype == np.uint16:
        bit_depth, scale = 16, 255.0 / 65535.0
    else:
        raise CovidctError(f"{path}: unsupported pixel type {pixels.dtype}; use 8- or 16-bit images.")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    meta = {"bit_depth": bit_depth, "channels": channels, "height": pixels.shape[0], "width": pixels.shape[1]}
    if channels == 1:
        gray = pixels.reshape(pixels.shape[:2]).astype(np.float32)
    else:
        colour = pixels[..., :3].astype(np.float32)
        spread = colour.max(axis=2) - colour.min(axis=2)
        if float(np.percentile(spread, 99)) * scale > COLOUR_TOLERANCE_LEVELS:
            warnings.warn(
                f"{path}: colour channels differ (not a grayscale export); converting to luminance.",
                stacklevel=3,
            )
            # OpenCV decodes BGR; luminance weights of ITU-R BT.601.
            gray = colour[..., 2] * 0.299 + colour[..., 1] * 0.587 + colour[..., 0] * 0.114
            meta["colour"] = True
        else:
            gray = colour.mean(axis=2)
    array = (gray * scale).astype(np.float32)
    return CTImage(array, "display", str(path), None, meta)


def read_npy(path: str | Path, **_) -> CTImage:
    """Read a ``.npy`` array of HU values, (H, W) or (D, H, W)."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise CovidctError(f"{path}: cannot read the NumPy file ({error}).") from None
    if array.ndim not in (2, 3):
        raise CovidctError(f"{path}: expected a 2-D slice or 3-D volume, got shape {array.shape}.")
    if array.dtype.kind not in "biuf":
        raise CovidctError(f"{path}: expected numbers (HU), got a {array.dtype} array.")
    check_finite(array, path, "volume" if array.ndim == 3 else "image")
    meta = {"bit_depth": array.dtype.itemsize * 8, "channels": 1, "height": array.shape[-2], "width": array.shape[-1]}
    return CTImage(array.astype(np.float32), "HU", str(path), None, meta)


# ------------------------------------------------------------------------------------------------ NIfTI
def read_nifti(path: str | Path, **_) -> CTImage:
    """Read a 3-D NIfTI volume into the (D, H, W) inferior-to-superior radiological layout.

    The image is reoriented to RAS+ with ``nibabel.as_closest_canonical``; then axis 2 (towards
    superior) becomes D, axis 1 flipped (anterior at the top) becomes H and axis 0 flipped (patient
    right on the image left) becomes W. Spacing (mm) is taken from the header zooms in the same order.
    Volumes stored as uint8 are treated as windowed exports (unit ``"display"``); others as HU.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``CTImage`` with a (D, H, W) float32 array.

    Raises:
        CovidctError: for unreadable files and 4-D (time series) volumes.
    """
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises several unrelated types for bad files
        raise CovidctError(f"{path}: cannot read the NIfTI file ({error}).") from None
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        image = image.slicer[..., 0]
        shape = image.shape
    if len(shape) != 3:
        raise CovidctError(
            f"{path}: expected a 3-D volume, got a {len(shape)}-D array of shape {shape} (a 4-D file is a time "
            "series or multi-channel image); split it into 3-D volumes first."
        )
    dtype = image.get_data_dtype()
    canonical = nib.as_closest_canonical(image)
    try:
        data = np.asarray(canonical.dataobj, dtype=np.float32)
    except Exception as error:
        raise CovidctError(f"{path}: cannot decode the NIfTI data ({error}); the file may be truncated.") from None
    check_finite(data, path, "volume")
    volume = np.ascontiguousarray(np.transpose(data[::-1, ::-1, :], (2, 1, 0)))
    zooms = [float(z) for z in canonical.header.get_zooms()[:3]]
    unit = "display" if dtype == np.uint8 else "HU"
    meta = {
        "bit_depth": dtype.itemsize * 8,
        "channels": 1,
        "height": volume.shape[1],
        "width": volume.shape[2],
        "depth": volume.shape[0],
        "orientation": "D inferior->superior, H anterior->posterior, W patient right->left (from RAS+)",
        "original_axcodes": "".join(nib.aff2axcodes(image.affine)),
    }
    return CTImage(volume, unit, str(path), (zooms[2], zooms[1], zooms[0]), meta)


def nifti_depth(path: str | Path) -> int:
    """Number of axial slices of a NIfTI volume in the (D, H, W) convention, read from the header only."""
    import nibabel as nib

    image = nib.load(str(path))
    if len(image.shape) < 3:
        raise CovidctError(f"{path}: expected a 3-D volume, got shape {image.shape}.")
    canonical = nib.as_closest_canonical(image) if len(image.shape) == 3 else image
    return int(canonical.shape[2])


# ------------------------------------------------------------------------------------------------ DICOM
_PYLIBJPEG_HINT = "pip install pylibjpeg pylibjpeg-libjpeg"


def _dicom_pixels_hu(dataset, path: Path) -> tuple[np.ndarray, str, dict]:
    """Decode one DICOM dataset into float32 HU (or display) values with its unit and meta."""
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise CovidctError(f"{path}: the DICOM file has no pixel data (a report, structure set or header only).")
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = dataset.pixel_array
    except Exception as error:
        if syntax is not None and syntax.is_compressed:
            raise CovidctError(
                f"{path}: pixel data is compressed ({syntax.name}) and no decoder for it is installed; "
                f"run `{_PYLIBJPEG_HINT}` ({error.__class__.__name__})."
            ) from None
        raise CovidctError(f"{path}: cannot decode the DICOM pixel data ({error}).") from None
    if pixels.ndim != 2:
        raise CovidctError(f"{path}: expected one grayscale slice, got pixel data of shape {pixels.shape}.")
    modality = str(getattr(dataset, "Modality", "")).upper()
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    has_rescale = "RescaleSlope" in dataset or "RescaleIntercept" in dataset
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2"))
    values = check_finite(pixels.astype(np.float32), path)
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise CovidctError(f"{path}: RescaleSlope {slope} / RescaleIntercept {intercept} are not finite numbers; "
                           "the HU values cannot be computed. Fix the file's header.")
    meta = {
        "bit_depth": int(getattr(dataset, "BitsStored", pixels.dtype.itemsize * 8)),
        "channels": 1,
        "height": pixels.shape[0],
        "width": pixels.shape[1],
        "photometric": photometric,
        "modality": modality,
        "transfer_syntax": str(syntax) if syntax is not None else "",
    }
    if has_rescale or modality == "CT":
        # HU are a physical quantity defined by the modality rescale; MONOCHROME1 only changes how a
        # viewer maps them to grey (after the VOI window), so HU values are never inverted.
        return values * slope + intercept, "HU", meta
    # A picture stored as DICOM (no rescale, not CT): scale to 0-255 and show MONOCHROME1 as
    # MONOCHROME2 (high = bright) by inverting it.
    bits = meta["bit_depth"]
    maximum = float(2**bits - 1)
    if photometric == "MONOCHROME1":
        values = maximum - values
        meta["inverted"] = True
    return values * (255.0 / maximum), "display", meta


def read_dicom(path: str | Path, **_) -> CTImage:
    """Read one DICOM slice, converting stored values to HU with RescaleSlope/RescaleIntercept.

    Args:
        path: a DICOM file.

    Returns:
        ``CTImage`` (H, W) in HU (CT or files with a rescale) or display units, spacing from
        PixelSpacing.

    Raises:
        CovidctError: for non-DICOM files, missing pixel data, or compressed pixel data without a
            decoder (install ``pylibjpeg pylibjpeg-libjpeg``).
    """
    import pydicom

    path = Path(path)
    try:
        dataset = pydicom.dcmread(str(path))
    except Exception as error:
        raise CovidctError(f"{path}: not a readable DICOM file ({error}).") from None
    values, unit, meta = _dicom_pixels_hu(dataset, path)
    spacing = tuple(float(s) for s in dataset.PixelSpacing) if "PixelSpacing" in dataset else None
    meta["series_uid"] = str(getattr(dataset, "SeriesInstanceUID", ""))
    return CTImage(values, unit, str(path), spacing, meta)


def read_dicom_series(
    folder: str | Path, series_uid: str | None = None, strict: bool = False, **_
) -> CTImage:
    """Read a folder of DICOM slices into a (D, H, W) volume sorted along the slice normal.

    Slices are ordered by the projection of ImagePositionPatient on the normal of
    ImageOrientationPatient (ascending: inferior to superior for axial scans). The slice spacing is the
    median distance between neighbours. A gap (a step of 1.5 times the median or more: missing
    slices) and uneven spacing (steps differing by more than 10 % of the median) give a warning, or an
    error with ``strict=True``; duplicate positions are always an error.

    Args:
        folder: the series folder (files without a DICOM header are ignored).
        series_uid: which SeriesInstanceUID to read when the folder mixes several series.
        strict: raise instead of warning on gaps and uneven spacing.

    Returns:
        ``CTImage`` (D, H, W) with spacing (slice, row, col) in mm.

    Raises:
        CovidctError: for an empty folder, mixed series without ``series_uid``, an unknown
            ``series_uid``, differing slice shapes, duplicate positions, or (strict) gaps.
    """
    import pydicom

    folder = Path(folder)
    series: dict[str, list] = defaultdict(list)
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            dataset = pydicom.dcmread(str(file), stop_before_pixels=False)
        except Exception:
            logger.debug("skipping non-DICOM file %s", file)
            continue
        series[str(getattr(dataset, "SeriesInstanceUID", ""))].append((file, dataset))
    if not series:
        raise CovidctError(f"{folder}: no DICOM files found in the folder.")
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(f"{uid} ({len(items)} slices)" for uid, items in series.items())
            raise CovidctError(
                f"{folder}: the folder mixes {len(series)} DICOM series: {listing}. "
                "Pass series_uid=... to choose one, or put each series in its own folder."
            )
        series_uid = next(iter(series))
    if series_uid not in series:
        raise unknown_name_error("series uid", series_uid, series)
    items = series[series_uid]
    positions = []
    for file, dataset in items:
        if "ImagePositionPatient" not in dataset:
            raise CovidctError(f"{file}: no ImagePositionPatient, so the slice order is unknown.")
        orientation = np.asarray(getattr(dataset, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
        normal = np.cross(orientation[:3], orientation[3:])
        positions.append(float(np.dot(normal, np.asarray(dataset.ImagePositionPatient, float))))
    order = np.argsort(positions, kind="stable")
    positions = np.asarray(positions)[order]
    items = [items[i] for i in order]
    slices, shapes, unit = [], set(), None
    for file, dataset in items:
        values, unit, meta = _dicom_pixels_hu(dataset, file)
        shapes.add(values.shape)
        slices.append(values)
    if len(shapes) > 1:
        raise CovidctError(f"{folder}: slices of series {series_uid} have different shapes {sorted(shapes)}.")
    steps = np.diff(positions)
    if len(steps) and np.min(steps) < 1e-3:
        index = int(np.argmin(steps))
        raise CovidctError(
            f"{folder}: two slices share position {positions[index]:.2f} mm ({items[index][0].name}, "
            f"{items[index + 1][0].name}); the folder holds duplicates or several acquisitions."
        )
    slice_mm = float(np.median(steps)) if len(steps) else float(getattr(items[0][1], "SliceThickness", 1.0) or 1.0)
    problems = []
    for index, step in enumerate(steps):
        if step >= 1.5 * slice_mm:
            missing = int(round(step / slice_mm)) - 1
            problems.append(
                f"gap of {step:.2f} mm (about {missing} missing slice(s)) between {items[index][0].name} and "
                f"{items[index + 1][0].name}"
            )
    if not problems and len(steps) and np.max(np.abs(steps - slice_mm)) > 0.1 * slice_mm:
        problems.append(f"uneven slice spacing: steps from {steps.min():.2f} to {steps.max():.2f} mm")
    if problems:
        message = f"{folder}: " + "; ".join(problems) + "."
        if strict:
            raise CovidctError(message)
        warnings.warn(message, stacklevel=2)
    first = items[0][1]
    row_mm, col_mm = (float(s) for s in first.PixelSpacing) if "PixelSpacing" in first else (1.0, 1.0)
    volume = np.stack(slices).astype(np.float32)
    meta.update(
        series_uid=series_uid,
        depth=volume.shape[0],
        files=[str(file) for file, _ in items],
        positions_mm=[float(p) for p in positions],
        spacing_problems=problems,
    )
    return CTImage(volume, unit, str(folder), (slice_mm, row_mm, col_mm), meta)


class ImageLoader:
    """Read images for batch jobs, keeping the last volume in memory so slices of it are cheap.

    Manifests list one row per slice of a volume file; reading the file once per row would decode a
    gzip NIfTI a hundred times. Batch jobs sort rows by path and call ``load(path, slice_index)``.
    """

    def __init__(self) -> None:
        self._path: str | None = None
        self._image: CTImage | None = None

    def load(self, path: str, slice_index: int = -1) -> CTImage:
        """Return the image at ``path`` (slice ``slice_index`` of it when >= 0)."""
        if slice_index is None or slice_index < 0:
            return read_image(path)
        if self._path != path:
            self._image, self._path = None, None
            self._image = read_image(path)
            self._path = path
        return take_slice(self._image, int(slice_index))
