"""Helpers of the serve tests (imported by their conftest and modules): phantom uploads in every format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

THRESHOLD = 0.4
BINARY = {"COV": "COV", "Normal": "NonCOV", "OtherPneumonia": "NonCOV"}
CHROMIUM = Path("/usr/bin/chromium")


def phantom_slice(label: str = "COV", size: int = 128, seed: int = 3) -> np.ndarray:
    """One HU phantom slice (size x size) of the class ``label``."""
    from covidct.data.phantom import make_dataset

    phantoms = make_dataset(n=6, size=size, seed=seed, slices_per_patient=1)
    index = list(phantoms.labels).index(label)
    return np.asarray(phantoms.images_hu[index], np.float32)


def png_bytes(image_hu: np.ndarray) -> bytes:
    import cv2

    from covidct.data.windows import window_hu

    ok, data = cv2.imencode(".png", np.rint(window_hu(image_hu) * 255).astype(np.uint8))
    assert ok
    return data.tobytes()


def dicom_bytes(pixels_hu: np.ndarray, position_z: float = 0.0, pixel_data: bool = True, series_uid: str = "1.2.3") -> bytes:
    """A CT DICOM slice (uint16 stored, RescaleIntercept -1024) as bytes."""
    import io

    from ct_dicom import ct_slice

    stored = np.clip(pixels_hu + 1024, 0, 65535) if pixel_data else None
    buffer = io.BytesIO()
    ct_slice(stored, position_z=position_z, series_uid=series_uid, spacing=(0.7, 0.7),
             shape=pixels_hu.shape).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def phantom_volume(depth: int = 6, size: int = 64, seed: int = 4) -> np.ndarray:
    """A (D, H, W) HU volume: phantom slices of one class stacked (enough for the lung-slice selection)."""
    from covidct.data.phantom import make_dataset

    phantoms = make_dataset(n=depth, size=size, seed=seed, slices_per_patient=depth)
    return np.asarray(phantoms.images_hu[:depth], np.float32)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
