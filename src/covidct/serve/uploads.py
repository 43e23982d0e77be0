"""Uploads: what a file is (by content), the limits it must respect, and reading it into a ``CTImage``.

The server never trusts the client's file name: the type is sniffed from the first bytes (PNG, JPEG, TIFF,
DICOM, NIfTI, gzip-compressed NIfTI, ZIP of DICOM files) and the file is stored under a name the server chose
(``upload.<ext>``) inside a private temporary folder that the request removes when it ends, failed or not.
Before anything is decoded, the header's dimensions are checked, so a decompression bomb (a small PNG that
claims 20,000 x 20,000 pixels, a gzip NIfTI that claims a huge volume, a ZIP whose members expand without end)
is refused without allocating its pixels.

Every refusal is an ``UploadError`` with an HTTP status (413 too large, 415 not a supported type, 422 a supported
type that cannot be used) and a message for the user.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidct.data.io import header_kind, read_image, take_slice
from covidct.errors import CovidctError
from covidct.serve import DEFAULT_MAX_UPLOAD_MB  # noqa: F401  (re-exported: the app's default)

#: Largest slice in pixels (rows x columns): 4096 x 4096. A float32 copy of it is 64 MiB.
MAX_PIXELS = 4096 * 4096
#: Smallest side of a slice in pixels (a 1 x 1 "image" carries nothing to classify).
MIN_SIDE = 16
#: Largest volume in voxels (512 x 512 x 400; about 420 MB as float32).
MAX_VOXELS = 512 * 512 * 400
#: Most members of a ZIP of DICOM slices, and the most bytes they may expand to.
MAX_ARCHIVE_MEMBERS = 2000
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024

SUPPORTED = "PNG, JPEG, TIFF, DICOM (a slice, or a ZIP of one series), NIfTI (.nii, .nii.gz)"

EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm", "nifti": ".nii", "nifti-gz": ".nii.gz",
              "zip": ".zip"}


class UploadError(CovidctError):
    """An upload the server refuses, with the HTTP status to answer."""
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)


def _nifti_header_size(head: bytes) -> bool:
    if len(head) < 4:
        return False
    return struct.unpack("<i", head[:4])[0] in (348, 540) or struct.unpack(">i", head[:4])[0] in (348, 540)


def _describe_unknown(head: bytes) -> str:
    if head.startswith(b"\x7fELF") or head.startswith(b"MZ") or head[:4] in (b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe"):
        return "an executable program"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "an unrecognised binary file"
    return "a text file"


def sniff(path: Path) -> str:
    """The kind of an uploaded file from its first bytes: one of the ``EXTENSIONS`` keys.

    Raises:
        UploadError: 422 for an empty file, 415 for anything that is not a supported image type.
    """
    size = path.stat().st_size
    if size == 0:
        raise UploadError(422, "The uploaded file is empty (0 bytes). Choose an image file.")
    with open(path, "rb") as handle:
        head = handle.read(352)
    kind = header_kind(head)
    if kind in ("dicom", "png", "jpeg", "tiff"):
        return kind
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as stream:
                inner = stream.read(352)
        except (OSError, EOFError):
            raise UploadError(422, "The uploaded file is gzip-compressed but truncated or corrupt.") from None
        if _nifti_header_size(inner):
            return "nifti-gz"
        raise UploadError(415, f"The uploaded file is gzip-compressed but holds no NIfTI image. Supported: {SUPPORTED}.")
    if _nifti_header_size(head) and (head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00")):
        return "nifti"
    raise UploadError(
        415, f"The uploaded file is {_describe_unknown(head[:64])}, not a supported image. Supported: {SUPPORTED}."
    )


def _check_plane(height: int, width: int, what: str) -> None:
    if min(height, width) < MIN_SIDE:
        raise UploadError(
            422, f"The {what} is {width} x {height} pixels; at least {MIN_SIDE} x {MIN_SIDE} is needed to classify it."
        )
    if height * width > MAX_PIXELS:
        raise UploadError(
            422,
            f"The {what} is {width} x {height} pixels, more than the limit of {MAX_PIXELS:,} pixels "
            f"({int(MAX_PIXELS ** 0.5)} x {int(MAX_PIXELS ** 0.5)}); downscale it first.",
        )


def check_picture(path: Path) -> None:
    """Check a PNG/JPEG/TIFF's dimensions from its header (nothing decoded)."""
    from PIL import Image

    with open(path, "rb") as handle:
        head = handle.read(24)
    if head[12:16] == b"IHDR":  # PNG: the size is in the first chunk
        width, height = struct.unpack(">II", head[16:24])
        _check_plane(height, width, "image")
        return
    try:
        with Image.open(path) as image:  # lazy: reads the header only
            width, height = image.size
    except Image.DecompressionBombError:
        raise UploadError(422, f"The image has more than the limit of {MAX_PIXELS:,} pixels; downscale it first.") from None
    except Exception as error:  # noqa: BLE001  (Pillow raises many types for corrupt headers)
        raise UploadError(422, f"The image header cannot be read ({type(error).__name__}): the file is corrupt.") from None
    _check_plane(height, width, "image")


def check_dicom(path: Path) -> None:
    """Check a DICOM file's header: rows x columns x frames within the limits (pixels not read)."""
    import pydicom

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as error:  # noqa: BLE001  (pydicom raises many types)
        raise UploadError(422, f"The DICOM file cannot be read ({type(error).__name__}): it is truncated or corrupt.") from None
    rows, columns = int(getattr(header, "Rows", 0) or 0), int(getattr(header, "Columns", 0) or 0)
    frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    if rows and columns:
        _check_plane(rows, columns, "DICOM slice")
        if frames > 1:
            raise UploadError(422, f"The DICOM file holds {frames} frames; upload single-frame CT slices (or a ZIP of them).")


def check_nifti(path: Path) -> None:
    """Check a NIfTI header: 3-D (or 4-D with one volume), within the voxel limit (data not read)."""
    import nibabel as nib

    try:
        shape = tuple(int(s) for s in nib.load(str(path)).shape)
    except Exception as error:  # noqa: BLE001  (nibabel raises many types)
        raise UploadError(422, f"The NIfTI header cannot be read ({type(error).__name__}): the file is corrupt.") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise UploadError(
            422,
            f"The NIfTI file holds a {len(shape)}-D array of shape {shape}; a 3-D CT volume is expected "
            "(a 4-D file is a time series or multi-channel image: split it into 3-D volumes first).",
        )
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise UploadError(422, f"The NIfTI volume {shape} has more than {MAX_VOXELS:,} voxels; crop or downsample it.")
    in_plane = sorted(shape)[1:]
    _check_plane(in_plane[0], in_plane[1], "NIfTI volume's slice")


def extract_series(archive: Path, folder: Path) -> int:
    """Extract the DICOM members of a ZIP into ``folder`` under server-chosen names; returns how many.

    Member names are never used on disk (``../`` and absolute names are harmless); members are copied with a
    running byte count, so an archive that expands beyond ``MAX_ARCHIVE_BYTES`` stops there, whatever its
    directory claims.

    Raises:
        UploadError: 422 for a corrupt archive, too many members, too many bytes, or no DICOM file in it.
    """
    folder.mkdir()
    total = 0
    kept = 0
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir()]
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise UploadError(422, f"The ZIP holds {len(members)} files; at most {MAX_ARCHIVE_MEMBERS} are read.")
            for index, member in enumerate(members):
                target = folder / f"{index:05d}.dcm"
                with bundle.open(member) as source, open(target, "wb") as sink:
                    while True:
                        chunk = source.read(1 << 20)
                        if not chunk:
                            break
                        total += len(chunk)
                        if total > MAX_ARCHIVE_BYTES:
                            raise UploadError(
                                422, f"The ZIP expands to more than {MAX_ARCHIVE_BYTES // (1 << 20)} MB; upload fewer slices."
                            )
                        sink.write(chunk)
                with open(target, "rb") as handle:
                    head = handle.read(132)
                if len(head) == 132 and head[128:132] == b"DICM":
                    kept += 1
                else:
                    target.unlink()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError) as error:
        raise UploadError(422, f"The ZIP archive cannot be read ({error}).") from None
    if kept == 0:
        raise UploadError(422, "The ZIP holds no DICOM file (a ZIP upload must be one DICOM series).")
    return kept


@dataclass
class StoredUpload:
    """An upload on disk: its path (server-chosen name), kind and size in bytes."""
    path: Path
    kind: str
    size: int


def classify_upload(raw: Path) -> StoredUpload:
    """Sniff ``raw`` (a file the server named), give it its type's extension and check its header limits.

    Returns:
        A ``StoredUpload`` whose path ends in the type's extension (the readers look at it for NIfTI).
    """
    kind = sniff(raw)
    path = raw.with_name("upload" + EXTENSIONS[kind])
    os.replace(raw, path)
    if kind in ("png", "jpeg", "tiff"):
        check_picture(path)
    elif kind == "dicom":
        check_dicom(path)
    elif kind in ("nifti", "nifti-gz"):
        check_nifti(path)
    return StoredUpload(path, kind, path.stat().st_size)


def read_upload(upload: StoredUpload):
    """Decode a checked upload into a ``CTImage`` (a slice (H, W) or a volume (D, H, W)).

    Raises:
        UploadError: 422 with the reader's message (truncated data, no pixel data, mixed series, ...).
    """
    path = upload.path
    if upload.kind == "zip":
        folder = path.parent / "series"
        count = extract_series(path, folder)
        path.unlink()
        if count == 1:
            only = next(folder.iterdir())
            check_dicom(only)
            path = only
        else:
            for member in folder.iterdir():
                check_dicom(member)
            path = folder
    try:  # a reader's warnings (uneven slice spacing, colour picture) go to the server's log
        image = read_image(path)
    except CovidctError as error:
        raise UploadError(422, _strip_path(str(error), path)) from None
    except (ValueError, OSError, EOFError, MemoryError) as error:
        raise UploadError(422, f"The file cannot be decoded ({type(error).__name__}): it is truncated or corrupt.") from None
    array = image.array
    if array.ndim == 3 and array.shape[0] == 1:

        image = take_slice(image, 0)
        array = image.array
    if array.ndim == 2:
        _check_plane(array.shape[0], array.shape[1], "image")
    elif array.ndim == 3:
        if array.size > MAX_VOXELS:
            raise UploadError(422, f"The volume {array.shape} has more than {MAX_VOXELS:,} voxels; crop or downsample it.")
        _check_plane(array.shape[1], array.shape[2], "volume's slice")
    else:
        raise UploadError(422, f"Expected a slice or a volume, got an array of shape {array.shape}.")
    return image


def _strip_path(message: str, path: Path) -> str:
    """A reader's message without the server's temporary path (the user knows which file they sent)."""
    for text in (str(path), str(path.parent)):
        message = message.replace(text + ": ", "").replace(text, "the upload")
    return message


def remove_tree(folder: Path) -> None:
    """Remove a request's temporary folder (best effort; called in ``finally``)."""
    shutil.rmtree(folder, ignore_errors=True)
