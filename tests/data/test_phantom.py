"""Phantom generator: HU ranges per tissue and class, masks that match the drawn organs, seeds, groups."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from covidct.data.manifest import validate_manifest
from covidct.data.phantom import (
    CLASSES,
    LEFT_LUNG,
    RIGHT_LUNG,
    PhantomSlice,
    make_dataset,
    make_slice,
    make_volume,
    write_dataset,
)
from covidct.errors import CovidctError

SEEDS = range(6)


@pytest.fixture(scope="module")
def slices() -> dict[str, list[PhantomSlice]]:
    return {label: [make_slice(label, size=128, seed=s) for s in SEEDS] for label in CLASSES}


def _lungs(one: PhantomSlice) -> np.ndarray:
    return one.left_lung | one.right_lung


def test_normal_slice_tissue_hu(slices):
    for one in slices["Normal"]:
        image = one.image_hu
        assert image.dtype == np.float32 and image.shape == (128, 128)
        lungs = _lungs(one)
        assert -900 <= np.median(image[lungs]) <= -800
        # Outside the body (and off the table) is air plus zero-mean Gaussian noise.
        air = ~one.body & ~one.table
        sd = one.info["noise_sd_hu"]
        assert abs(image[air].mean() + 1000.0) < 4 * sd / np.sqrt(air.sum()) + 0.5
        assert image[air].std() == pytest.approx(sd, rel=0.1)
        # Bone 400..1000 HU; the max exceeds 400 HU.
        assert one.bone.sum() > 20
        assert 400 <= np.median(image[one.bone]) <= 1000
        assert image[one.bone].max() >= 400
        # Soft tissue (body minus lungs, bone and the airway) mostly 0..60 HU.
        soft = one.body & ~lungs & ~one.bone & (image > -500)
        assert 0 <= np.median(image[soft]) <= 60
        assert not one.lesion.any()


def test_masks_match_drawn_organs(slices):
    for label in CLASSES:
        for one in slices[label]:
            lungs = _lungs(one)
            assert not (one.left_lung & one.right_lung).any()
            assert one.left_lung.sum() > 300 and one.right_lung.sum() > 300
            assert not (lungs & ~one.body).any(), "lungs must lie inside the body"
            assert not (lungs & one.bone).any()
            assert not (one.table & one.body).any()
            assert not (one.lesion & ~lungs).any(), "lesions must be clipped to the lungs"
            # Mask edges coincide with intensity edges: the one-pixel ring around the lungs is tissue.
            ring = ndimage.binary_dilation(lungs) & ~lungs
            assert np.mean(one.image_hu[ring] > -500) > 0.9
            if label == "Normal":
                assert np.mean(one.image_hu[lungs] < -600) > 0.9
            # The table lies below (posterior to) the body.
            table_rows = np.flatnonzero(one.table.any(axis=1))
            body_rows = np.flatnonzero(one.body.any(axis=1))
            assert table_rows.min() > body_rows.max()


def test_radiological_orientation(slices):
    for one in slices["Normal"]:
        columns = np.arange(one.image_hu.shape[1])
        right_col = (one.right_lung.sum(axis=0) * columns).sum() / one.right_lung.sum()
        left_col = (one.left_lung.sum(axis=0) * columns).sum() / one.left_lung.sum()
        body_col = (one.body.sum(axis=0) * columns).sum() / one.body.sum()
        # Patient's right lung on the image left.
        assert right_col < body_col < left_col
        labels = one.lung_labels
        assert set(np.unique(labels)) == {0, RIGHT_LUNG, LEFT_LUNG}
        assert np.array_equal(labels == RIGHT_LUNG, one.right_lung)


def test_anatomy_landmarks(slices):
    for one in slices["Normal"]:
        image, lungs = one.image_hu, _lungs(one)
        rows = np.arange(image.shape[0])[:, None]
        lung_row = (lungs * rows).sum() / lungs.sum()
        # Trachea: air inside the body, outside the lungs, anterior (above) the lung centre.
        airway = one.body & ~lungs & (image < -900)
        assert airway.sum() >= 5
        assert (airway * rows).sum() / airway.sum() < lung_row
        # Spine: the densest bone is on the midline, posterior to the lung centre.
        dense = one.bone & (image > 700)
        spine_rows = np.flatnonzero(dense.any(axis=1))
        assert spine_rows.max() > lung_row
        # Vessels: a few bright dots inside the lungs, a small fraction of the lung area.
        vessels = lungs & (image > -400)
        assert 3 <= vessels.sum() <= 0.15 * lungs.sum()


def test_cov_lesions_are_bilateral_ground_glass(slices):
    for one in slices["COV"]:
        lesion = one.lesion
        assert lesion.sum() > 30
        assert -550 <= np.median(one.image_hu[lesion]) <= -250
        assert (lesion & one.left_lung).any() and (lesion & one.right_lung).any()
        assert one.info["lesion_sides"] == ("right", "left")
        # Peripheral: most lesion pixels lie in the outer half of the lung (distance to its border).
        distance = ndimage.distance_transform_edt(_lungs(one))
        assert np.median(distance[lesion]) < np.median(distance[_lungs(one)]) * 1.2


def test_cov_dataset_slices_bilateral():
    data = make_dataset(n=30, size=64, seed=4, slices_per_patient=5)
    cov = [i for i, label in enumerate(data.labels) if label == "COV"]
    both = [
        (data.lesion_masks[i] & (data.lung_labels[i] == 1)).any()
        and (data.lesion_masks[i] & (data.lung_labels[i] == 2)).any()
        for i in cov
    ]
    assert len(cov) == 10 and all(both)


def test_other_pneumonia_unilateral_consolidation(slices):
    sides = set()
    for one in slices["OtherPneumonia"]:
        lesion = one.lesion
        assert lesion.sum() > 30
        assert -120 <= np.median(one.image_hu[lesion]) <= 60
        in_left, in_right = (lesion & one.left_lung).any(), (lesion & one.right_lung).any()
        assert in_left != in_right, "consolidation must be unilateral"
        sides.add("left" if in_left else "right")
    assert sides == {"left", "right"}


def test_air_bronchograms_are_air_inside_consolidation():
    found = 0
    for seed in range(20):
        one = make_slice("OtherPneumonia", size=128, seed=seed)
        air_in_lesion = one.lesion & (one.image_hu < -700)
        if one.info["bronchograms"]:
            found += int(air_in_lesion.sum() > 0)
        else:
            assert not air_in_lesion.any()
    assert found >= 5


def test_seed_determinism_and_variation():
    a, b = make_slice("COV", size=64, seed=11), make_slice("COV", size=64, seed=11)
    for name in ("image_hu", "body", "left_lung", "right_lung", "lesion"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    c = make_slice("COV", size=64, seed=12)
    assert not np.array_equal(a.body, c.body)
    assert np.abs(a.image_hu - c.image_hu).mean() > 50
    assert np.array_equal(make_dataset(12, 64, seed=3).images_hu, make_dataset(12, 64, seed=3).images_hu)
    assert not np.array_equal(make_dataset(12, 64, seed=3).images_hu, make_dataset(12, 64, seed=4).images_hu)


def test_dataset_groups_and_balance():
    data = make_dataset(n=60, size=64, seed=0, slices_per_patient=5)
    assert data.images_hu.shape == (60, 64, 64) and data.images_hu.dtype == np.float32
    assert data.lung_labels.dtype == np.uint8 and data.lesion_masks.dtype == bool
    assert len(data) == 60 and len(set(data.groups)) == 12
    assert {label: data.labels.count(label) for label in CLASSES} == {label: 20 for label in CLASSES}
    for group in set(data.groups):
        members = [i for i, g in enumerate(data.groups) if g == group]
        assert len(members) == 5
        assert len({data.labels[i] for i in members}) == 1
        # Slices of one patient share the body shape (small variation), unlike other patients.
        first = data.body_masks[members[0]]
        same = [np.logical_xor(first, data.body_masks[i]).mean() for i in members[1:]]
        assert max(same) < 0.1
    lungs = data.lung_labels > 0
    assert not (data.lesion_masks & ~lungs).any()
    assert not (lungs & ~data.body_masks).any()
    # Patient i depends only on (seed, i): a smaller n is a prefix.
    small = make_dataset(n=13, size=64, seed=0, slices_per_patient=5)
    assert np.array_equal(small.images_hu, data.images_hu[:13])
    assert small.groups == data.groups[:13]
    uneven = make_dataset(n=7, size=32, seed=0, slices_per_patient=3)
    assert [uneven.groups.count(g) for g in sorted(set(uneven.groups))] == [3, 3, 1]


def test_volume_shapes_and_lung_profile():
    volume = make_volume("Normal", shape=(24, 64, 64), seed=2)
    assert volume.volume_hu.shape == (24, 64, 64) and volume.volume_hu.dtype == np.float32
    assert volume.lung_labels.shape == (24, 64, 64) and volume.lung_labels.dtype == np.uint8
    assert volume.lesion_masks.shape == (24, 64, 64) and not volume.lesion_masks.any()
    area = (volume.lung_labels > 0).sum(axis=(1, 2))
    # No lung below the bases or above the apices; the lungs grow, then shrink.
    assert area[0] == 0 and area[-1] == 0
    peak = int(np.argmax(area))
    assert 3 <= peak <= 16
    tolerance = 0.1 * area[peak]
    assert np.all(np.diff(area[: peak + 1]) >= -tolerance)
    assert np.all(np.diff(area[peak:]) <= tolerance)
    lungs = volume.volume_hu[volume.lung_labels > 0]
    assert -900 <= np.median(lungs) <= -800
    assert not ((volume.lung_labels > 0) & ~volume.body_masks).any()
    assert len(volume.spacing_mm) == 3 and volume.spacing_mm[0] > 0


@pytest.mark.parametrize("label", ["COV", "OtherPneumonia"])
def test_volume_lesions(label):
    volume = make_volume(label, shape=(24, 64, 64), seed=5)
    lesion, labels = volume.lesion_masks, volume.lung_labels
    assert lesion.sum() > 50
    assert not (lesion & (labels == 0)).any()
    in_right = (lesion & (labels == RIGHT_LUNG)).any()
    in_left = (lesion & (labels == LEFT_LUNG)).any()
    median = np.median(volume.volume_hu[lesion])
    if label == "COV":
        assert in_left and in_right
        assert -550 <= median <= -250
    else:
        assert in_left != in_right
        assert -120 <= median <= 60
    # Lesions are 3D blobs: one 26-connected piece per blob, spanning several slices.
    _, count = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
    assert count <= (12 if label == "COV" else 2)
    assert lesion.any(axis=(1, 2)).sum() >= 3
    again = make_volume(label, shape=(24, 64, 64), seed=5)
    assert np.array_equal(again.volume_hu, volume.volume_hu)


def test_write_dataset(tmp_path):
    manifest = write_dataset(tmp_path / "phantom", n=6, size=32, seed=1)
    validate_manifest(manifest)
    data = make_dataset(n=6, size=32, seed=1)
    assert list(manifest["label"]) == data.labels and list(manifest["group"]) == data.groups
    assert set(manifest["split"]) == {""} and set(manifest["source"]) == {"phantom"}
    for i, row in manifest.iterrows():
        hu = np.load(row["path"])
        assert hu.dtype == np.int16
        assert np.array_equal(hu, np.rint(data.images_hu[i]).astype(np.int16))
        assert f"/{row['label']}/" in row["path"].replace("\\", "/")
        lungs = cv2.imread(row["mask_path"], cv2.IMREAD_UNCHANGED)
        assert np.array_equal(lungs, data.lung_labels[i])
        lesion = cv2.imread(row["lesion_mask_path"], cv2.IMREAD_UNCHANGED)
        assert np.array_equal(lesion.astype(bool), data.lesion_masks[i])
    assert (tmp_path / "phantom" / "manifest.csv").is_file()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(CovidctError, match="Did you mean: COV"):
        make_slice("COVID", size=64)
    with pytest.raises(CovidctError, match="size"):
        make_slice("Normal", size=8)
    with pytest.raises(CovidctError, match="n="):
        make_dataset(n=0)
    with pytest.raises(CovidctError, match="shape"):
        make_volume("Normal", shape=(64, 64))


def test_plot_phantom_classes_shows_every_class():
    from covidct.data.phantom import CLASSES, plot_phantom_classes

    figure = plot_phantom_classes(size=64, seed=1)
    titles = [axis.get_title() for axis in figure.axes]
    assert len(figure.axes) == 2 * len(CLASSES)
    assert all(any(title.startswith(label) for title in titles) for label in CLASSES)
