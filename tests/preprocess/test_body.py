"""Body masks, background removal and crops on phantoms (exact masks) and bad inputs."""

import cv2
import numpy as np
import pytest

from covidct.data.phantom import make_slice
from covidct.preprocess.body import (
    BodyMaskWarning,
    body_mask,
    crop_to_body,
    fill_holes,
    mask_bbox,
    remove_background,
    resize_mask,
    to_display_u8,
)


def dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("label", ["COV", "Normal", "OtherPneumonia"])
@pytest.mark.parametrize("seed", [0, 1])
def test_body_mask_matches_phantom_body_hu_and_display(label, seed):
    phantom = make_slice(label, size=256, seed=seed)
    assert dice(body_mask(phantom.image_hu), phantom.body) >= 0.97
    # The same slice as a lung-window PNG (display unit); the table below the body must stay out.
    display = to_display_u8(phantom.image_hu)
    mask = body_mask(display)
    assert dice(mask, phantom.body) >= 0.97
    if phantom.table is not None and phantom.table.any():
        assert mask[phantom.table].mean() < 0.05


def test_seed_recipe_finds_the_body():
    phantom = make_slice("Normal", size=256, seed=0)
    assert dice(body_mask(phantom.image_hu, method="seed"), phantom.body) >= 0.95


def test_tight_crop_keeps_lungs_touching_the_border_inside_the_body():
    phantom = make_slice("COV", size=256, seed=0)
    lungs = phantom.lung_labels > 0
    top, bottom, left, right = mask_bbox(lungs)
    crop = to_display_u8(phantom.image_hu)[top:bottom, left:right]
    mask = body_mask(crop)
    # Everything in a lung crop is inside the body, including the lungs that touch the crop's border.
    assert mask.mean() >= 0.95
    assert mask[lungs[top:bottom, left:right]].mean() >= 0.98


def test_paper_figure_text_and_arrows_stay_out_of_the_body():
    phantom = make_slice("Normal", size=256, seed=1)
    figure = to_display_u8(phantom.image_hu)
    cv2.putText(figure, "Fig. 3 COVID-19", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 2)
    cv2.arrowedLine(figure, (240, 240), (200, 200), 255, 3)
    assert dice(body_mask(figure), phantom.body) >= 0.97


@pytest.mark.parametrize("value", [0, 255])
def test_blank_and_white_images_fall_back_to_whole_image_with_warning(value):
    image = np.full((64, 64), value, np.uint8)
    with pytest.warns(BodyMaskWarning, match="whole image"):
        mask = body_mask(image)
    assert mask.shape == (64, 64) and mask.all()
    with pytest.warns(BodyMaskWarning):
        assert body_mask(image, method="seed").all()


def test_remove_background_and_bbox_by_hand():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    mask = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    out = remove_background(image, mask)
    assert out.tolist() == [[0, 1, 2, 0], [0, 5, 6, 0], [0, 0, 0, 0]]
    assert mask_bbox(mask) == (0, 2, 1, 3)
    assert mask_bbox(np.zeros((3, 4))) == (0, 3, 0, 4)
    rgb = np.ones((3, 4, 3), np.uint8)
    assert remove_background(rgb, mask)[..., 0].sum() == 4


def test_crop_to_body_drops_narrow_arm_rows():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:6, 9:11] = 1  # a narrow piece above the trunk
    mask[6:18, 2:18] = 1  # the trunk, 16 wide
    image = np.arange(400).reshape(20, 20)
    cropped, cropped_mask, box = crop_to_body(image, mask)
    assert box == (2, 18, 2, 18)
    _, _, box_arms = crop_to_body(image, mask, drop_arms=True)
    assert box_arms == (6, 18, 2, 18)
    assert cropped.shape == cropped_mask.shape == (16, 16)


def test_fill_holes_by_hand():
    ring = np.zeros((5, 5), bool)
    ring[1:4, 1:4] = True
    ring[2, 2] = False
    assert fill_holes(ring).sum() == 9
    open_ring = ring.copy()
    open_ring[2, 1] = False  # not enclosed any more... except diagonally: 4-connected flood reaches it
    assert fill_holes(open_ring).sum() == 7


def test_resize_mask_by_hand_area_down_linear_up():
    mask = np.zeros((8, 8), np.uint8)
    mask[1:5, 1:5] = 7  # any value > 0 is inside
    # Area 4x: block (0, 0) holds 9 of its 16 pixels inside (>= 0.5), block (0, 1) 3, (1, 0) 3, (1, 1) 1.
    # (INTER_NEAREST reads pixel (4i, 4j) of each block instead and would give [[0, 0], [0, 1]].)
    np.testing.assert_array_equal(resize_mask(mask, (2, 2)), [[True, False], [False, False]])
    # The mask used by the classification stages is the same function (one resampling rule everywhere).
    from covidct.preprocess.pipelines import fit_to_size

    _, fitted = fit_to_size(np.zeros((8, 8), np.uint8), mask, 2)
    np.testing.assert_array_equal(fitted, [[1, 0], [0, 0]])
    # Enlarging 2 -> 4 linearly: output pixel (1, 1) takes 0.75 x 0.75 = 0.56 of the inside source pixel,
    # (1, 2) and (2, 1) 0.75 x 0.25 = 0.19 (edges clamp): the cut at 0.5 keeps exactly the top-left 2 x 2 block.
    np.testing.assert_array_equal(resize_mask(np.array([[1, 0], [0, 0]]), (4, 4)), np.pad(np.ones((2, 2)), ((0, 2), (0, 2))))
    assert resize_mask(mask, (8, 8)).sum() == 16
