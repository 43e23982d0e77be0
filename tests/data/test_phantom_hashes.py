"""Phantom pixels are a fixed function of the arguments: SHA-256 prefixes of the generated arrays.

The hashes were recorded from the generator before its code was reorganised; any change to a pixel,
a mask, a dtype, a shape or the voxel spacing changes a hash. When the phantom is changed on purpose,
record the new hashes (and say so), since every phantom-based test number depends on them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from covidct.data import phantom


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str(array.dtype).encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


SLICES = {
    ("COV", 64, 0): "c0553b4749e84697",
    ("Normal", 96, 3): "92344c108caf96ae",
    ("OtherPneumonia", 64, 7): "bb181b0ca7a9630b",
    ("COV", 128, 11): "1956898eec8ac05c",
    ("OtherPneumonia", 48, 0): "556ad1a841b981d8",  # lobar, 3 bronchograms
    ("OtherPneumonia", 48, 1): "344456780082b900",  # focal, 3 bronchograms
}
VOLUMES = {
    ("COV", (8, 48, 48), 1): ("cafef6c6ee723e28", (37.8084, 7.5, 7.5)),
    ("OtherPneumonia", (6, 40, 48), 2): ("444d8b1765395202", (51.4059, 7.5, 7.5)),
    ("OtherPneumonia", (6, 40, 40), 4): ("d6d60088b6e869cc", (51.8696, 9.0, 9.0)),
    ("Normal", (5, 32, 32), 9): ("938b974337e2c838", (57.9844, 11.25, 11.25)),
}


@pytest.mark.parametrize("key", sorted(SLICES, key=str))
def test_slice_arrays_are_unchanged(key):
    label, size, seed = key
    one = phantom.make_slice(label, size=size, seed=seed)
    got = _digest(one.image_hu, one.body, one.left_lung, one.right_lung, one.lesion, one.bone, one.table)
    assert got == SLICES[key]


def test_dataset_arrays_are_unchanged():
    data = phantom.make_dataset(n=12, size=48, seed=5, slices_per_patient=2)
    assert _digest(data.images_hu, data.lung_labels, data.lesion_masks, data.body_masks) == "4732af33d045ed66"
    assert data.labels[:3] == ["COV", "COV", "Normal"]
    assert data.groups[::2] == [f"phantom_{i:04d}" for i in range(6)]


@pytest.mark.parametrize("key", sorted(VOLUMES, key=str))
def test_volume_arrays_are_unchanged(key):
    label, shape, seed = key
    volume = phantom.make_volume(label, shape=shape, seed=seed)
    expected_hash, expected_spacing = VOLUMES[key]
    assert _digest(volume.volume_hu, volume.lung_labels, volume.lesion_masks, volume.body_masks) == expected_hash
    assert volume.spacing_mm == expected_spacing
