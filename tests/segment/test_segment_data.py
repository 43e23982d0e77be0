"""Segmentation pairs are manifest rows cached by the slice cache (the mask with its image); folds come
from ``covidct.data.splits``."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from covidct.data.cache import build_cache
from covidct.data.manifest import make_manifest
from covidct.data.phantom import make_dataset
from covidct.data.splits import group_folds
from covidct.preprocess.body import to_display_u8
from covidct.segment.data import SegmentationPairs, SegmentationStage, crop_pairs_to_lungs, load_pairs


def _expected(mask01: np.ndarray, size: int) -> np.ndarray:
    """Area-averaged and cut at 0.5, computed here with OpenCV directly."""
    return (cv2.resize(mask01.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) >= 0.5).astype(np.uint8)


def _write_kaggle_layout(root, images, masks):
    for split in ("train", "test"):
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True)
    for index, (image, mask) in enumerate(zip(images, masks)):
        split = "test" if index % 4 == 3 else "train"
        cv2.imwrite(str(root / split / "images" / f"s{index:02d}.png"), image)
        cv2.imwrite(str(root / split / "masks" / f"s{index:02d}.png"), mask * 255)


def test_a_mask_travels_through_the_cache_pixel_exactly(tmp_path):
    rng = np.random.default_rng(0)
    rows, truth = [], []
    for index, turns in enumerate((0, -1, 0)):
        image = rng.integers(0, 256, (48, 48), dtype=np.uint8)
        mask = (rng.random((48, 48)) < 0.4).astype(np.uint8)
        mask[10:30, 5:20] = 1
        cv2.imwrite(str(tmp_path / f"i{index}.png"), image)
        cv2.imwrite(str(tmp_path / f"m{index}.png"), mask * 255)
        rows.append({"path": str(tmp_path / f"i{index}.png"), "mask_path": str(tmp_path / f"m{index}.png"),
                     "label": "x", "group": f"g{index}", "split": "train", "source": "t", "mask_rot90": turns})
        truth.append(_expected(np.rot90(mask, turns), 24))
    cache = build_cache(make_manifest(rows), SegmentationStage(), 24, tmp_path / "cache", workers=1, progress=False)
    np.testing.assert_array_equal(np.asarray(cache.targets), np.stack(truth))
    # The turned mask is not its unturned copy (the turn was applied, not ignored).
    unturned = _expected((cv2.imread(str(tmp_path / "m1.png"), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8), 24)
    assert not np.array_equal(cache.targets[1], unturned)


def test_load_pairs_reads_manifest_rows_once_and_reuses_the_cache(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(8)]
    masks = [(rng.random((64, 64)) < 0.5).astype(np.uint8) for _ in range(8)]
    _write_kaggle_layout(tmp_path / "kaggle-lungs-ct-64px", images, masks)
    pairs = load_pairs("kaggle-lungs", tmp_path, size=32, cache_root=tmp_path / "cache", workers=1)
    order = [int(name[-6:-4]) for name in pairs.names]
    np.testing.assert_array_equal(pairs.masks, np.stack([_expected(masks[i], 32) for i in order]))
    expected_images = [cv2.resize(images[i], (32, 32), interpolation=cv2.INTER_AREA) for i in order]
    np.testing.assert_array_equal(pairs.images[..., 0], np.stack(expected_images))
    assert pairs.splits.tolist().count("test") == 2
    caches = list((tmp_path / "cache").glob("segment-none-32-*/meta.json"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    again = load_pairs("kaggle-lungs", tmp_path, size=32, cache_root=tmp_path / "cache", workers=1)
    assert caches[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    np.testing.assert_array_equal(again.masks, pairs.masks)


def test_lung_crops_from_the_cache_equal_the_crops_made_in_memory(tmp_path):
    phantoms = make_dataset(n=6, size=64, seed=2)
    images = [to_display_u8(image) for image in phantoms.images_hu]
    masks = [(labels > 0).astype(np.uint8) for labels in phantoms.lung_labels]
    _write_kaggle_layout(tmp_path / "kaggle-lungs-ct-64px", images, masks)
    cropped = load_pairs("kaggle-lungs", tmp_path, size=64, crop="lungs", cache_root=tmp_path / "cache", workers=1)
    order = [int(name[-6:-4]) for name in cropped.names]
    whole = SegmentationPairs(np.stack([images[i] for i in order])[..., None], np.stack([masks[i] for i in order]),
                              cropped.names, cropped.splits, cropped.groups)
    reference = crop_pairs_to_lungs(whole, 64)
    for field in ("images", "masks", "lungs", "boxes", "frame_masks"):
        np.testing.assert_array_equal(getattr(cropped, field), getattr(reference, field), err_msg=field)


@pytest.mark.parametrize("val_fraction", [0.0, 0.25])
def test_segmentation_folds_are_the_folds_of_data_splits(val_fraction):
    from covidct.train.segmentation import plan_splits

    groups = np.array([f"p{i // 3}" for i in range(30)])  # 10 patients, 3 slices each
    pairs = SimpleNamespace(groups=groups, splits=np.array([""] * 30))
    cfg = SimpleNamespace(segmentation=SimpleNamespace(folds=5, val_fraction=val_fraction),
                          data=SimpleNamespace(seed=4, dataset="medseg"))
    plans = plan_splits(pairs, cfg)
    expected = group_folds(groups, 5, seed=4)
    assert [plan.test.tolist() for plan in plans] == [np.sort(test).tolist() for test in expected]
    assert sorted(np.concatenate([plan.test for plan in plans]).tolist()) == list(range(30))
    for plan in plans:
        sides = [set(groups[getattr(plan, part)]) for part in ("train", "val", "test")]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert len(plan.train) + len(plan.val) + len(plan.test) == 30
        assert (len(plan.val) > 0) == (val_fraction > 0)


def test_pairs_of_an_unknown_dataset_are_refused_with_a_close_match(tmp_path):
    from covidct.errors import CovidctError

    with pytest.raises(CovidctError, match=r"Did you mean: medseg\?"):
        load_pairs("medsg", tmp_path)
