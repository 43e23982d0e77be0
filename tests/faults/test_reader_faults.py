"""Reader faults: NaN and infinite values are refused by every reader, naming the file and the real cause.

What may fail, and what then: a NumPy slice or volume, a float NIfTI volume (read whole, or slab by slab for
the volume models) or a DICOM slice whose rescale is not a number holds NaN or +-inf values. Windowing used to
map them to arbitrary grey levels (an all-NaN volume scored "nonCOVID 1.000" with ``--min-lung-fraction 0``);
now the reader stops with "<file>: the volume holds non-finite values ...", the batch jobs (cache, audit) list
the file as unreadable with that cause, and ``covidct predict-volume`` exits 2 with that line.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from ct_dicom import ct_slice

from covidct.cli import main
from covidct.data.io import read_image
from covidct.data.manifest import make_manifest
from covidct.data.volumes import build_volume_cache, load_volume, preprocess_volume
from covidct.errors import CovidctError

NON_FINITE = r"holds non-finite values \((all|\d+ of \d+) voxels are NaN or infinite\)"


def _volume(nan_at=None, inf_at=None, shape=(4, 32, 32)) -> np.ndarray:
    volume = np.full(shape, -700.0, np.float32)
    if nan_at is not None:
        volume[nan_at] = np.nan
    if inf_at is not None:
        volume[inf_at] = np.inf
    return volume


@pytest.mark.parametrize("array, count", [
    (_volume(nan_at=(slice(None),)), "all"),
    (_volume(nan_at=(2, 5, 7)), "1 of 4096"),
    (_volume(inf_at=(0, 0, slice(0, 3))), "3 of 4096"),
    (_volume(nan_at=(3,))[0], None),  # a 2-D slice without any NaN: read fine
    (_volume(nan_at=(0, 1, 1))[0], "1 of 1024"),
])
def test_npy_readers_refuse_non_finite_values(tmp_path, array, count):
    path = tmp_path / "scan.npy"
    np.save(path, array)
    readers = [read_image] + ([load_volume, lambda p: preprocess_volume(p, (4, 32, 32))] if array.ndim == 3 else [])
    for reader in readers:
        if count is None:
            assert np.isfinite(reader(path).array).all()
            continue
        with pytest.raises(CovidctError, match=NON_FINITE) as caught:
            reader(path)
        assert str(caught.value).startswith(f"{path}: the ") and f"({count} voxels" in str(caught.value)


def test_nifti_readers_refuse_non_finite_values(tmp_path):
    volume = np.full((32, 32, 20), -600.0, np.float32)  # x, y, z: more than one 16-slice slab
    volume[3, 4, 18] = np.nan  # in the second slab
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    for reader in (read_image, load_volume, lambda p: preprocess_volume(p, (4, 32, 32))):
        with pytest.raises(CovidctError, match=rf"scan\.nii\.gz: the volume {NON_FINITE}"):
            reader(path)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_a_dicom_slice_with_a_rescale_that_is_not_a_number_is_refused(tmp_path):
    dataset = ct_slice(np.zeros((8, 8)), position_z=None, series_uid=None, rescale=("NaN", "-1024"))
    path = tmp_path / "slice.dcm"
    dataset.save_as(str(path), enforce_file_format=True)
    with pytest.raises(CovidctError, match=r"slice\.dcm: RescaleSlope nan / RescaleIntercept -1024\.0 are not finite"):
        read_image(path)


def test_cli_predict_volume_names_the_non_finite_volume(tmp_path, capsys):
    path = tmp_path / "allnan.npy"
    np.save(path, np.full((6, 32, 32), np.nan, np.float32))
    code = main(["predict-volume", "--run", str(tmp_path / "no-run"), str(path), "--min-lung-fraction", "0",
                 "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and "nonCOVID" not in captured.out
    assert captured.err.strip() == (
        f"covidct predict-volume: error: {path}: the volume holds non-finite values (all voxels are NaN or infinite); "
        "covidct refuses them rather than guess intensities. Fix the export (or replace NaN by a HU value such as "
        "-1024, air) and remove the file from the dataset meanwhile."
    )
    assert not (tmp_path / "out").exists()


def test_the_volume_cache_lists_a_non_finite_volume_as_failed(tmp_path):
    rows = []
    for k, label in enumerate(("COV", "Normal", "COV")):
        path = tmp_path / f"v{k}.npy"
        np.save(path, _volume(nan_at=(1, 2, 3)) if k == 2 else _volume())
        rows.append({"path": str(path), "label": label, "group": f"p{k}", "split": "", "source": "t"})
    cache = build_volume_cache(make_manifest(rows), (4, 32, 32), tmp_path / "cache", progress=False)
    assert len(cache) == 2
    assert cache.failed["path"].tolist() == [str(tmp_path / "v2.npy")]
    assert "non-finite values (1 of 4096 voxels" in cache.failed["error"].iloc[0]
