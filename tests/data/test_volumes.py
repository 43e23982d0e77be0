"""Volume preprocessing: HU window, resizing, spacing, orientation, memory, and the volume cache."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest
from skimage.transform import resize as skimage_resize

from covidct.data.io import CTImage
from covidct.data.volumes import (
    SHAPES,
    VolumeCache,
    build_volume_cache,
    dhw_to_kerasio,
    hu_to_uint8,
    hu_to_unit,
    kerasio_to_dhw,
    preprocess_volume,
    reorient,
    resample_spacing,
    resize_volume,
    write_phantom_volumes,
)
from covidct.data.windows import hu_to_volume_uint8
from covidct.errors import CovidctError


def test_hu_window_hand_values():
    hu = np.array([[-2000.0, -1000.0, -650.0, -300.0, 400.0, 1000.0]], dtype=np.float32)
    # (hu + 1000) / 1400 * 255, rounded: -650 -> 63.75 -> 64; -300 -> 127.5 -> 128 (round half to even).
    assert hu_to_uint8(hu).tolist() == [[0, 0, 64, 128, 255, 255]]
    assert hu_to_unit(hu)[0].tolist() == pytest.approx([0.0, 0.0, 0.25, 0.5, 1.0, 1.0])
    # Slab-wise processing agrees with the data layer's one-shot implementation of the same convention.
    volume = np.random.default_rng(0).uniform(-1500, 1500, (37, 9, 11)).astype(np.float32)
    assert np.array_equal(hu_to_uint8(volume), hu_to_volume_uint8(volume))
    with pytest.raises(CovidctError, match="hu_max"):
        hu_to_uint8(volume, hu_min=0, hu_max=0)


def test_resize_volume_averages_and_matches_skimage():
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32), (2, 2, 8))
    # Halving with voxel areas aligned: each output voxel is the mean of a pair.
    assert resize_volume(ramp, (2, 2, 4))[0, 0].tolist() == [0.5, 2.5, 4.5, 6.5]
    volume = np.random.default_rng(1).uniform(0, 255, (20, 30, 30)).astype(np.float32)
    ours = resize_volume(volume, (8, 16, 16))
    reference = skimage_resize(
        volume, (8, 16, 16), order=1, mode="edge", anti_aliasing=False, preserve_range=True
    )
    assert np.abs(ours - reference).max() < 1e-3
    as_uint8 = resize_volume(volume.round().astype(np.uint8), (8, 16, 16))
    assert as_uint8.dtype == np.uint8 and np.abs(as_uint8 - reference).max() <= 1.0
    labels = (np.arange(20)[:, None, None] % 3 * np.ones((20, 30, 30))).astype(np.uint8)
    assert set(np.unique(resize_volume(labels, (7, 9, 9), order=0))) <= {0, 1, 2}
    assert resize_volume(volume, "covidscan").shape == SHAPES["covidscan"] == (32, 64, 64)
    assert SHAPES["kerasio"] == (64, 128, 128)
    with pytest.raises(CovidctError, match="Did you mean: kerasio"):
        resize_volume(volume, "keras_io")
    with pytest.raises(CovidctError, match="three positive"):
        resize_volume(volume, (8, 16))


def test_resample_spacing():
    volume = np.zeros((10, 20, 20), dtype=np.float32)
    resampled, spacing = resample_spacing(volume, (5.0, 1.0, 1.0), (2.5, 2.0, 2.0))
    assert resampled.shape == (20, 10, 10)
    assert spacing == pytest.approx((2.5, 2.0, 2.0))
    _, rounded = resample_spacing(np.zeros((10, 10, 10)), (1.0, 1.0, 1.0), (3.0, 3.0, 3.0))
    assert rounded == pytest.approx((10 / 3, 10 / 3, 10 / 3))  # 10 mm / 3 voxels
    with pytest.raises(CovidctError, match="spacing"):
        resample_spacing(volume, None)


def test_reorient_ras_to_dhw_and_kerasio_layout():
    ras = np.arange(4 * 5 * 6).reshape(4, 5, 6)  # axes towards Right, Anterior, Superior
    dhw = reorient(ras, ("R", "A", "S"))
    # Independent formula (the NIfTI reader's): D = S axis, H = A flipped, W = R flipped.
    assert np.array_equal(dhw, np.transpose(ras[::-1, ::-1, :], (2, 1, 0)))
    assert np.array_equal(reorient(dhw, ("S", "P", "L"), target=("R", "A", "S")), ras)
    assert np.array_equal(reorient(ras, ("R", "A", "S"), target=("R", "A", "S")), ras)
    with pytest.raises(CovidctError, match="axis codes"):
        reorient(ras, ("R", "A", "X"))
    kerasio = np.zeros((128, 128, 64))
    assert kerasio_to_dhw(kerasio).shape == (64, 128, 128)
    volume = np.random.default_rng(2).random((6, 7, 8))
    assert np.array_equal(kerasio_to_dhw(dhw_to_kerasio(volume)), volume)


def test_preprocess_volume_phantom_and_units():
    from covidct.data.phantom import make_volume

    phantom = make_volume("COV", shape=(16, 48, 48), seed=3)
    out = preprocess_volume(CTImage(phantom.volume_hu, "HU", spacing=phantom.spacing_mm), shape=(8, 24, 24))
    assert out.shape == (8, 24, 24) and out.dtype == np.uint8
    reference = skimage_resize(
        hu_to_uint8(phantom.volume_hu).astype(np.float32),
        (8, 24, 24),
        order=1,
        mode="edge",
        anti_aliasing=False,
        preserve_range=True,
    )
    assert np.abs(out.astype(np.float32) - reference).max() <= 1.0
    # Lungs (about -850 HU -> ~27) are darker than the body (~+35 HU -> ~188).
    lungs = resize_volume(phantom.lung_labels, (8, 24, 24), order=0) > 0
    assert np.median(out[lungs]) < 60 < 150 < np.median(out[~lungs & (out > 100)])
    display = CTImage(np.full((4, 8, 8), 77.0, dtype=np.float32), "display")
    assert np.all(preprocess_volume(display, shape=(2, 4, 4)) == 77)
    spaced = preprocess_volume(
        CTImage(phantom.volume_hu, "HU", spacing=(5.0, 2.0, 2.0)),
        (8, 24, 24),
        target_spacing_mm=(2.5, 2.0, 2.0),
    )
    assert spaced.shape == (8, 24, 24)
    with pytest.raises(CovidctError, match="3-D|volume"):
        preprocess_volume(np.zeros((8, 8)), shape=(2, 4, 4))


def test_preprocess_memory_is_a_fraction_of_one_copy():
    volume = np.random.default_rng(0).uniform(-1200, 800, (128, 128, 128)).astype(np.float32)  # 8 MiB
    tracemalloc.start()
    tracemalloc.reset_peak()
    out = preprocess_volume(volume, shape=(32, 64, 64))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out.shape == (32, 64, 64)
    # The uint8 copy (1/4) plus one float slab; far below a second float32 copy of the input.
    assert peak < 0.5 * volume.nbytes


@pytest.fixture()
def volume_manifest(tmp_path):
    return write_phantom_volumes(tmp_path / "volumes", n=6, shape=(12, 32, 32), seed=1)


def test_build_volume_cache_and_reuse(tmp_path, volume_manifest):
    manifest = volume_manifest.assign(split=["train", "train", "train", "val", "test", "test"])
    cache = build_volume_cache(manifest, shape=(8, 16, 16), cache_root=tmp_path / "cache", progress=False)
    assert cache.images.shape == (6, 8, 16, 16, 1) and cache.images.dtype == np.uint8
    assert cache.shape == (8, 16, 16) and len(cache) == 6
    assert cache.class_names == ["COV", "Normal", "OtherPneumonia"]
    for i, path in enumerate(manifest["path"]):
        assert np.array_equal(cache.images[i, ..., 0], preprocess_volume(path, (8, 16, 16)))
    assert cache.indices("test").tolist() == [4, 5]
    with pytest.raises(CovidctError, match="Did you mean"):
        cache.indices("tests")
    again = build_volume_cache(manifest, shape=(8, 16, 16), cache_root=tmp_path / "cache", progress=False)
    assert again.path == cache.path and again.meta["build_seconds"] == cache.meta["build_seconds"]
    reopened = VolumeCache.open(cache.path)
    assert np.array_equal(np.asarray(reopened.images), np.asarray(cache.images))
    # A per-slice manifest of the same files gives one row per volume.
    per_slice = pd.concat([manifest.assign(slice_index=k) for k in range(3)], ignore_index=True)
    collapsed = build_volume_cache(
        per_slice, shape=(8, 16, 16), cache_root=tmp_path / "cache2", progress=False
    )
    assert len(collapsed) == 6


class _Interrupted(Exception):
    """Stands for an interruption (pytest reserves KeyboardInterrupt for itself)."""


def test_volume_cache_skips_bad_files_and_resumes(tmp_path, volume_manifest, monkeypatch):
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"\x93NUMPY not really")
    rows = pd.concat(
        [volume_manifest, volume_manifest.iloc[[0]].assign(path=str(broken), group="bad")], ignore_index=True
    )
    import covidct.data.volumes as volumes

    real = volumes.preprocess_volume
    calls = []
    interrupt = [True]

    def interrupted(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3 and interrupt[0]:
            interrupt[0] = False
            raise _Interrupted("simulated Ctrl-C")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(volumes, "preprocess_volume", interrupted)
    with pytest.raises(_Interrupted):
        build_volume_cache(rows, shape=(4, 8, 8), cache_root=tmp_path / "cache", progress=False)
    calls.clear()
    cache = build_volume_cache(rows, shape=(4, 8, 8), cache_root=tmp_path / "cache", progress=False)
    assert len(calls) == 5  # the two finished volumes are not redone
    assert len(cache) == 6 and cache.images.shape[0] == 6
    assert list(cache.failed["path"]) == [str(broken)]
    assert str(broken) not in set(cache.manifest["path"])
    for i, path in enumerate(cache.manifest["path"]):
        assert np.array_equal(cache.images[i, ..., 0], real(path, (4, 8, 8)))


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "S"), ("I", "L", "A")])
def test_nifti_streaming_matches_reader(tmp_path, axcodes, monkeypatch):
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

    import covidct.data.volumes as volumes
    from covidct.data.io import read_image

    monkeypatch.setattr(volumes, "SLAB_SLICES", 3)  # several slabs, one partial
    rng = np.random.default_rng(0)
    ras = rng.integers(-1100, 600, size=(10, 12, 11)).astype(np.int16)
    # Store the same anatomy with other axis codes; the affine says how.
    ornt = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(axcodes))
    data = nib.orientations.apply_orientation(ras, ornt)
    affine = np.diag([0.8, 0.9, 2.5, 1.0]) @ inv_ornt_aff(ornt, ras.shape)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    reference = read_image(path)
    streamed, spacing, unit = volumes._nifti_to_uint8(path)
    assert unit == "HU" and spacing == pytest.approx(reference.spacing)
    assert np.array_equal(streamed, hu_to_uint8(reference.array))
    assert np.array_equal(
        preprocess_volume(path, (5, 6, 6)), resize_volume(hu_to_uint8(reference.array), (5, 6, 6))
    )
    display = tmp_path / "display.nii"
    nib.save(nib.Nifti1Image(rng.integers(0, 255, (8, 8, 7), dtype=np.uint8), np.eye(4)), display)
    streamed, _, unit = volumes._nifti_to_uint8(display)
    assert unit == "display" and np.array_equal(streamed, read_image(display).array.astype(np.uint8))
