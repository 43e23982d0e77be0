"""Lung crops for segmentation (``segmentation.crop: lungs``): box, zero-padded crop, paste-back, scoring."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from covidct.cli import main
from covidct.errors import CovidctError
from covidct.segment.data import (
    crop_pairs_to_lungs,
    crop_square,
    dilated_lung_mask,
    lung_crop_box,
    paste_crops,
    phantom_pairs,
)
from covidct.segment.evaluate import evaluate_split
from covidct.segment.metrics import per_image_metrics
from covidct.segment.predict import predict_files
from covidct.segment.train import train_segmenter


def test_lung_crop_box_by_hand():
    lungs = np.zeros((64, 80), np.uint8)
    lungs[10:30, 20:60] = 1  # 20 rows x 40 columns
    # side = round(40 * 1.1) = 44, centred: top = (10 + 30 - 44) // 2 = -2, left = (20 + 60 - 44) // 2 = 18
    assert lung_crop_box(lungs) == (-2, 18, 44)
    assert lung_crop_box(lungs, margin=0.0) == (0, 20, 40)
    # No lungs: the whole image, as a square.
    assert lung_crop_box(np.zeros((30, 50), np.uint8), margin=0.0) == (-10, 0, 50)


def test_crop_square_pads_with_zeros_outside_the_image():
    image = np.arange(1, 101, dtype=np.uint8).reshape(10, 10)
    crop = crop_square(image, top=-2, left=6, side=6, size=6)
    assert (crop[:2] == 0).all() and (crop[:, 4:] == 0).all()
    np.testing.assert_array_equal(crop[2:, :4], image[0:4, 6:10])


def test_paste_crops_puts_a_crop_back_where_it_came_from():
    frame = np.zeros((128, 128), np.uint8)
    cv2.ellipse(frame, (70, 60), (30, 18), 20, 0, 360, 1, -1)
    top, left, side = 20, 30, 80
    crop = crop_square(frame, top, left, side, size=64, nearest=True).astype(np.float32)
    box = np.array([[top / 128, left / 128, side / 128, side / 128]])
    back = paste_crops(crop[None], box, 128)[0] >= 0.5
    dice = 2 * (back & (frame > 0)).sum() / (back.sum() + frame.sum())
    assert dice > 0.95
    # A map of ones fills exactly the crop's square in the frame (frame of another size: 64 px).
    ones = paste_crops(np.ones((1, 64, 64), np.float32), box, 64)[0] >= 0.5
    assert ones.sum() == pytest.approx(40 * 40, rel=0.03)
    rows, cols = np.flatnonzero(ones.any(1)), np.flatnonzero(ones.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (10, 49, 15, 54)


@pytest.fixture
def lesion_crops():
    pairs = phantom_pairs(n=20, size=64, target="lesion", seed=1)
    return pairs, crop_pairs_to_lungs(pairs, 32)


def test_crop_pairs_keep_the_whole_slice_masks(lesion_crops):
    whole, crops = lesion_crops
    assert crops.images.shape == (20, 32, 32, 1) and crops.masks.shape == (20, 32, 32)
    assert crops.boxes.shape == (20, 4) and crops.lungs.shape == (20, 32, 32)
    # frame_masks are the whole slices' masks at data.size (nearest), what test predictions are scored on.
    expected = np.stack(
        [cv2.resize(m.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA) >= 0.5 for m in whole.masks]
    )
    np.testing.assert_array_equal(crops.frame_masks, expected)
    # The lungs fill more of a crop than of the whole slice (the point of cropping).
    whole_lungs = np.stack([dilated_lung_mask(image[..., 0]) for image in whole.images])
    assert crops.lungs.mean() > 1.3 * whole_lungs.mean()
    subset = crops.subset([3, 1])
    np.testing.assert_array_equal(subset.boxes, crops.boxes[[3, 1]])
    np.testing.assert_array_equal(subset.frame_masks, crops.frame_masks[[3, 1]])


def test_train_on_lung_crops_scores_the_whole_slice(lesion_crops, tmp_path, tiny_segmenter):
    whole, crops = lesion_crops
    run = train_segmenter(
        tiny_segmenter, dataset="phantom", size=32, epochs=1, batch_size=4, run_dir=tmp_path / "run",
        pairs=crops, crop="lungs", lung_input="masked",
    )
    info = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert info["crop"] == "lungs" and metrics["crop"] == "lungs"
    assert metrics["scored_on"].startswith("whole slice")
    # The per-image table was computed against the whole-slice masks (true fractions of frame_masks).
    table = pd.read_csv(run / "per_image_test.csv")
    test = np.flatnonzero(crops.splits == "test")
    np.testing.assert_allclose(table["true_fraction"], crops.frame_masks[test].reshape(len(test), -1).mean(1))
    # Same numbers by hand: predict the crops, paste back, threshold, score.
    import keras

    from covidct.train.segmentation import model_inputs, predict_mask_logits

    model = keras.saving.load_model(run / "model.keras", compile=False)
    subset = crops.subset(test)
    logits = predict_mask_logits(model, model_inputs(subset, True))
    pasted = paste_crops(1 / (1 + np.exp(-logits)), subset.boxes, 32) >= 0.5
    by_hand = per_image_metrics(pasted, subset.frame_masks, names=subset.names, groups=subset.groups)
    np.testing.assert_allclose(table["dice"], by_hand["dice"])
    # Pairs without boxes cannot evaluate a crop-trained checkpoint.
    with pytest.raises(CovidctError, match="lung crops"):
        evaluate_split(run, whole, "masked", crop="lungs")
    with pytest.raises(CovidctError, match="crop='lungs'"):
        train_segmenter(
            tiny_segmenter, dataset="phantom", size=64, epochs=1, run_dir=tmp_path / "bad", pairs=whole,
            crop="lungs",
        )
    # covidct segment predict crops a whole slice the same way and writes a whole-slice mask.
    path = tmp_path / "slice.png"
    cv2.imwrite(str(path), whole.images[test[0], ..., 0])
    result = predict_files(run, [path], tmp_path / "pred")[0]
    mask = cv2.imread(result["mask"], cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (64, 64)
    assert set(np.unique(mask)) <= {0, 255}
    # ... and prepares the slice exactly as training did: same mask as the evaluator's, pasted at 64 px.
    from covidct.segment.evaluate import predict_test_masks

    one = crops.subset(test[:1])
    one.frame_masks = whole.masks[test[:1]]
    expected, _ = predict_test_masks(model, one, "masked", crop="lungs")
    np.testing.assert_array_equal(mask > 0, expected[0])
    # With mirror TTA (`segment predict --tta`, `evaluation.tta`) too.
    assert main(["segment", "predict", "--model", str(run), "--images", str(path), "--out", str(tmp_path / "tta"), "--tta"]) == 0
    expected, _ = predict_test_masks(model, one, "masked", crop="lungs", tta=True)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "tta" / "slice_mask.png"), cv2.IMREAD_GRAYSCALE) > 0, expected[0])


def test_downsampled_masks_stay_centred_on_their_images():
    from covidct.segment.data import resize_square as _resize

    yy, xx = np.mgrid[:512, :512]
    disc = (((yy - 200.0) ** 2 + (xx - 300.0) ** 2) <= 40**2).astype(np.uint8)
    small = _resize(disc, 128, nearest=True)
    assert set(np.unique(small)) == {0, 1}
    # Pixel i of the 128 px grid covers source pixels 4i..4i+3, centred at 4i + 1.5.
    rows, cols = np.nonzero(small)
    assert 4 * rows.mean() + 1.5 == pytest.approx(200.0, abs=0.3)
    assert 4 * cols.mean() + 1.5 == pytest.approx(300.0, abs=0.3)
    # (OpenCV's INTER_NEAREST, used before, put it 1.5 source pixels up-left.)
    nearest = np.nonzero(cv2.resize(disc, (128, 128), interpolation=cv2.INTER_NEAREST))
    assert 4 * nearest[0].mean() + 1.5 == pytest.approx(201.5, abs=0.3)
