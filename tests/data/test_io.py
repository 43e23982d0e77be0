"""Readers: pictures, NumPy, DICOM slices and series, NIfTI orientation, and bad inputs."""

from __future__ import annotations

import warnings

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from ct_dicom import ct_slice
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGLosslessSV1

from covidct.data.io import detect_format, read_image
from covidct.errors import CovidctError


def ramp(height=32, width=48, dtype=np.uint8, top=255):
    return (np.arange(height * width).reshape(height, width) % (top + 1)).astype(dtype)


# ------------------------------------------------------------------------------------------- pictures
@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_gray_8bit_is_exact(tmp_path, suffix):
    pixels = ramp()
    path = tmp_path / f"slice{suffix}"
    cv2.imwrite(str(path), pixels)
    image = read_image(path)
    assert image.unit == "display"
    assert image.array.dtype == np.float32 and image.array.shape == (32, 48)
    np.testing.assert_array_equal(image.array, pixels.astype(np.float32))
    assert image.meta["bit_depth"] == 8 and image.meta["channels"] == 1


def test_jpeg_decodes_close_to_source(tmp_path):
    pixels = np.full((32, 32), 100, np.uint8)
    path = tmp_path / "slice.jpg"
    cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    image = read_image(path)
    assert detect_format(path) == "jpeg"
    assert np.abs(image.array - 100).max() <= 1


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_scaled_to_display(tmp_path, suffix):
    pixels = np.array([[0, 65535], [257, 32896]], np.uint16)
    path = tmp_path / f"deep{suffix}"
    cv2.imwrite(str(path), pixels)
    image = read_image(path)
    assert image.meta["bit_depth"] == 16
    np.testing.assert_allclose(image.array, [[0, 255], [1, 128]], atol=1e-4)


def test_rgb_with_equal_channels_is_gray_without_warning(tmp_path):
    gray = ramp()
    rgb = np.stack([gray, gray, np.clip(gray.astype(int) + 1, 0, 255).astype(np.uint8)], axis=2)
    path = tmp_path / "rgb.png"
    cv2.imwrite(str(path), rgb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(path)
    np.testing.assert_allclose(image.array, gray + np.where(gray < 255, 1 / 3, 0), atol=1e-4)


def test_rgba_alpha_dropped(tmp_path):
    gray = ramp()
    rgba = np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=2)
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), rgba)
    image = read_image(path)
    assert image.meta["channels"] == 4
    np.testing.assert_array_equal(image.array, gray.astype(np.float32))


def test_colour_picture_warns_and_uses_luminance(tmp_path):
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 2] = 200  # red
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), bgr)
    with pytest.warns(UserWarning, match="colour channels differ"):
        image = read_image(path)
    np.testing.assert_allclose(image.array, 200 * 0.299, atol=1e-3)


def test_npy_is_hu_and_slices(tmp_path):
    volume = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000
    path = tmp_path / "vol.npy"
    np.save(path, volume)
    image = read_image(path)
    assert image.unit == "HU" and image.array.shape == (2, 3, 4)
    np.testing.assert_array_equal(read_image(path, slice_index=1).array, volume[1])


# ---------------------------------------------------------------------------------------------- DICOM
def test_dicom_slope_intercept_to_hu():
    path = get_testdata_file("CT_small.dcm")
    dataset = pydicom.dcmread(path)
    expected = dataset.pixel_array.astype(np.float32) * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    image = read_image(path)
    assert image.unit == "HU"
    np.testing.assert_array_equal(image.array, expected)
    np.testing.assert_array_equal(image.array, pydicom.pixels.apply_modality_lut(dataset.pixel_array, dataset))
    assert image.spacing == pytest.approx((0.661468, 0.661468))


def _dicom(path, pixels, position_z=0.0, series_uid="1.2.3", pixel_data=True, **tags):
    ct_slice(pixels if pixel_data else None, position_z=position_z, series_uid=series_uid,
             shape=pixels.shape, **tags).save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_without_pixel_data(tmp_path):
    path = _dicom(tmp_path / "header.dcm", np.zeros((4, 4)), pixel_data=False)
    with pytest.raises(CovidctError, match="header.dcm.*no pixel data"):
        read_image(path)


def test_compressed_dicom_without_decoder_says_what_to_install(tmp_path):
    path = tmp_path / "jpegls.dcm"
    _dicom(path, np.zeros((4, 4)), pixel_data=False, syntax=JPEGLosslessSV1)
    dataset = pydicom.dcmread(path)
    # A valid encapsulated frame item is not needed: decoding fails before reading it without pylibjpeg.
    dataset.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 20 + b"\xff\xd9"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(str(path), enforce_file_format=True)
    with pytest.raises(CovidctError, match="jpegls.dcm.*compressed.*pip install pylibjpeg pylibjpeg-libjpeg"):
        read_image(path)


def test_monochrome1_picture_is_inverted_but_hu_are_not(tmp_path):
    pixels = np.array([[0, 65535], [1000, 2000]])
    picture = read_image(_dicom(tmp_path / "m1.dcm", pixels, modality="OT", photometric="MONOCHROME1", rescale=None))
    assert picture.unit == "display"
    np.testing.assert_allclose(picture.array, (65535 - pixels) * 255 / 65535, atol=1e-3)
    ct = read_image(_dicom(tmp_path / "ct.dcm", pixels, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(ct.array, pixels - 1024.0)


def _series(folder, zs, series_uid="1.2.3"):
    folder.mkdir(exist_ok=True)
    for k, z in enumerate(zs):
        # File names deliberately out of order: sorting must follow the position, not the name.
        _dicom(folder / f"f{(7 * k) % len(zs):03d}_{k}.dcm", np.full((4, 6), 1024 + int(z * 10)), z, series_uid)


def test_dicom_series_sorted_by_position_with_spacing(tmp_path):
    _series(tmp_path / "s", [5.0, -2.5, 0.0, 2.5])
    volume = read_image(tmp_path / "s")
    assert volume.array.shape == (4, 4, 6)
    np.testing.assert_array_equal(volume.array[:, 0, 0], [-25, 0, 25, 50])
    assert volume.spacing == pytest.approx((2.5, 0.5, 0.75))
    np.testing.assert_array_equal(read_image(tmp_path / "s", slice_index=3).array, np.full((4, 6), 50.0))


def test_dicom_series_gap_warns_or_fails_strict(tmp_path):
    _series(tmp_path / "s", [0.0, 2.0, 4.0, 10.0, 12.0])
    with pytest.warns(UserWarning, match="gap of 6.00 mm \\(about 2 missing"):
        read_image(tmp_path / "s")
    with pytest.raises(CovidctError, match="gap"):
        read_image(tmp_path / "s", strict=True)


def test_dicom_series_uneven_spacing_warns(tmp_path):
    _series(tmp_path / "s", [0.0, 2.0, 3.2, 5.0])
    with pytest.warns(UserWarning, match="uneven slice spacing"):
        read_image(tmp_path / "s")


def test_mixed_series_named_and_selectable(tmp_path):
    _series(tmp_path / "s", [0.0, 1.0], series_uid="1.2.3")
    for k, z in enumerate([0.0, 2.0, 4.0]):
        _dicom(tmp_path / "s" / f"other{k}.dcm", np.zeros((4, 6)), z, "9.8.7")
    with pytest.raises(CovidctError, match=r"mixes 2 DICOM series: 1\.2\.3 \(2 slices\); 9\.8\.7 \(3 slices\)"):
        read_image(tmp_path / "s")
    assert read_image(tmp_path / "s", series_uid="9.8.7").array.shape == (3, 4, 6)


# ---------------------------------------------------------------------------------------------- NIfTI
def test_nifti_ras_to_dhw_convention(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)  # x=3 (R), y=4 (A), z=5 (S)
    path = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.7, 2.0, 1.0])), str(path))
    volume = read_image(path)
    assert volume.unit == "HU" and volume.array.shape == (5, 4, 3)
    for k, r, c in [(0, 0, 0), (4, 1, 2), (2, 3, 1)]:
        # Row r counts from anterior (largest y), column c from patient right (largest x).
        assert volume.array[k, r, c] == data[3 - 1 - c, 4 - 1 - r, k]
    assert volume.spacing == pytest.approx((2.0, 0.7, 0.5))


def test_nifti_lps_matches_radiological_view(tmp_path):
    # The COVID-CT-MD sample's convention: LPS, and data[:, :, k].T is the radiological view.
    data = np.random.default_rng(0).integers(0, 255, (6, 7, 4)).astype(np.uint8)
    path = tmp_path / "lps.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 2.0, 1.0])), str(path))
    volume = read_image(path)
    assert volume.unit == "display"
    for k in range(4):
        np.testing.assert_array_equal(volume.array[k], data[:, :, k].T)


def test_nifti_4d_is_a_clear_error(tmp_path):
    path = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), str(path))
    with pytest.raises(CovidctError, match="fmri.nii.gz: expected a 3-D volume, got a 4-D"):
        read_image(path)


@pytest.mark.realdata
def test_covid_ct_md_volume_orientation(data_root):
    path = data_root / "covid-ct-md-sample" / "COVID-19" / "P001.nii.gz"
    volume = read_image(path)
    raw = np.asarray(nib.load(str(path)).dataobj)
    assert volume.array.shape == (148, 224, 224)
    np.testing.assert_array_equal(volume.array[70], raw[:, :, 70].T)
    assert volume.spacing == pytest.approx((2.0, 1.7098, 1.7098), abs=1e-3)


# ------------------------------------------------------------------------------------------ bad inputs
def test_truncated_png(tmp_path):
    ok, buffer = cv2.imencode(".png", ramp(64, 64))
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.tobytes()[: len(buffer) // 2])
    with pytest.raises(CovidctError, match="cut.png: cannot decode.*truncated"):
        read_image(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(CovidctError, match="empty.png: the file is empty"):
        read_image(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(CovidctError, match="notes.png: the content is not a valid .png image"):
        read_image(path)


def test_missing_path_suggests_close_name(tmp_path):
    (tmp_path / "Covid (1).png").write_bytes(cv2.imencode(".png", ramp())[1].tobytes())
    with pytest.raises(CovidctError, match=r"Covid \(l\).png: no such file.*Did you mean: Covid \(1\).png"):
        read_image(tmp_path / "Covid (l).png")


def test_header_kind_reads_magic_numbers_only():
    from covidct.data.io import header_kind

    pad = b"\x00" * 140
    assert header_kind(b"\x00" * 128 + b"DICM" + pad) == "dicom"
    assert header_kind(b"II*\x00" + b"\x00" * 124 + b"DICM" + pad) == "dicom"  # the DICOM tag wins over TIFF
    assert [header_kind(m + pad) for m in (b"\x93NUMPY", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"MM\x00*")] == [
        "npy", "png", "jpeg", "bmp", "tiff"]
    assert header_kind(b"hello, world" + pad) is None and header_kind(b"") is None
