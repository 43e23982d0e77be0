"""The named stages: shapes, channels, masks, purity, aspect ratio, halves, and bad inputs."""

import numpy as np
import pytest

from covidct.data.io import CTImage
from covidct.data.phantom import make_slice
from covidct.preprocess import STAGES, get_stage
from covidct.preprocess.body import to_display_u8
from covidct.preprocess.pipelines import fit_to_size, midline_column, square_pad

CHANNELS = {
    "original": 1,
    "nobackg": 1,
    "crop": 1,
    "lungs-nocrop": 1,
    "lungs": 1,
    "lungs-3window": 3,
    "masked-pair": 2,
    "halves": 1,
}


@pytest.fixture(scope="module")
def phantom():
    return make_slice("COV", size=128, seed=0)


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_stage_outputs_and_purity(name, phantom):
    stage = get_stage(name)
    image = CTImage(phantom.image_hu, "HU")
    outputs = stage(image, 48)
    assert len(outputs) == (2 if name == "halves" else 1)
    for output in outputs:
        assert output.image.shape == (48, 48, CHANNELS[name]) and output.image.dtype == np.uint8
        assert output.mask.shape == (48, 48) and set(np.unique(output.mask)) <= {0, 1}
        assert output.mask.any()
    again = stage(image, 48)
    for first, second in zip(outputs, again):
        np.testing.assert_array_equal(first.image, second.image)
        np.testing.assert_array_equal(first.mask, second.mask)


def test_all_named_stages_are_registered():
    assert set(CHANNELS) <= set(STAGES)


def test_lung_stages_zero_outside_the_mask_and_zoom_in(phantom):
    image = CTImage(phantom.image_hu, "HU")
    nocrop = get_stage("lungs-nocrop")(image, 64)[0]
    crop = get_stage("lungs")(image, 64)[0]
    original = get_stage("original")(image, 64)[0]
    assert (nocrop.image[..., 0][nocrop.mask == 0] == 0).all()
    assert (crop.image[..., 0][crop.mask == 0] == 0).all()
    # The lung crop fills more of the frame than the uncropped image does.
    assert crop.mask.mean() > 1.5 * original.mask.mean()
    pair = get_stage("masked-pair")(image, 64)[0]
    np.testing.assert_array_equal(pair.image[..., 1] > 0, pair.mask > 0)


def test_three_windows_differ_for_hu_and_repeat_for_display(phantom):
    hu = get_stage("lungs-3window")(CTImage(phantom.image_hu, "HU"), 48)[0].image
    assert not np.array_equal(hu[..., 0], hu[..., 1])
    display = CTImage(to_display_u8(phantom.image_hu).astype(np.float32), "display")
    repeated = get_stage("lungs-3window")(display, 48)[0].image
    np.testing.assert_array_equal(repeated[..., 0], repeated[..., 2])


def test_square_pad_and_fit_keep_the_aspect_ratio():
    image = np.full((2, 4), 7, np.uint8)
    padded, mask = square_pad(image, np.ones((2, 4), np.uint8))
    assert padded.tolist() == [[0, 0, 0, 0], [7, 7, 7, 7], [7, 7, 7, 7], [0, 0, 0, 0]]
    assert mask.sum() == 8
    wide = np.full((50, 100), 200, np.uint8)
    out, out_mask = fit_to_size(wide, np.ones((50, 100), np.uint8), 20)
    # 100x100 after padding, 20x20 after resizing: the 50-row band becomes 10 rows.
    assert out.shape == (20, 20, 1) and out_mask[:, 0].sum() == 10
    assert (out[5:15, :, 0] == 200).all() and (out[:5, :, 0] == 0).all()


def test_halves_cut_between_the_lungs(phantom):
    labels = phantom.lung_labels
    middle = midline_column(labels, phantom.body)
    assert np.argwhere(labels == 1)[:, 1].max() < middle < np.argwhere(labels == 2)[:, 1].min()
    right, left = get_stage("halves")(CTImage(phantom.image_hu, "HU"), 32)
    assert (right.suffix, left.suffix) == ("right", "left")
    assert right.mask.mean() > 0.1 and left.mask.mean() > 0.1


@pytest.mark.parametrize("name", sorted(CHANNELS))
@pytest.mark.parametrize("kind", ["blank", "tiny"])
def test_stages_survive_bad_inputs(name, kind, caplog):
    image = np.zeros((64, 64), np.float32) if kind == "blank" else to_display_u8(make_slice("Normal", 64, 1).image_hu)
    if kind == "tiny":
        image = image[::2, ::2].astype(np.float32)
    with pytest.warns(UserWarning) if kind == "blank" else _nothing():
        outputs = get_stage(name)(CTImage(image, "display"), 32)
    assert all(o.image.shape[:2] == (32, 32) and o.mask.any() for o in outputs)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False
