"""CT DICOM slices written by the tests (one pydicom set-up for the reader, serve and fault-injection tests)."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def ct_slice(stored: np.ndarray | None, *, position_z: float | None = 0.0, series_uid: str | None = "1.2.3",
             modality: str = "CT", photometric: str = "MONOCHROME2", spacing=(0.5, 0.75),
             rescale=(1.0, -1024.0), shape=None, syntax=ExplicitVRLittleEndian) -> pydicom.Dataset:
    """A single-frame CT slice of uint16 stored values (``HU = stored * slope + intercept``).

    Args:
        stored: the stored values (cast to uint16); None leaves the dataset without PixelData.
        position_z: ImagePositionPatient's z (None: no position, orientation or spacing tags).
        series_uid: SeriesInstanceUID (None: not set).
        rescale: (RescaleSlope, RescaleIntercept), values as given (strings allowed); None: not set.
        shape: (rows, columns) when ``stored`` is None.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.Modality = modality
    if series_uid is not None:
        dataset.SeriesInstanceUID = series_uid
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if position_z is not None:
        dataset.ImagePositionPatient = [0.0, 0.0, position_z]
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        dataset.PixelSpacing = list(spacing)
    dataset.Rows, dataset.Columns = shape if stored is None else stored.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
    if stored is not None:
        dataset.PixelData = np.asarray(stored).astype(np.uint16).tobytes()
    return dataset
