"""Grad-CAM math against hand-computed answers; output contract; errors that name the fix."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.explain.gradcam import (
    cam_from_gradients,
    compute_cams,
    compute_heatmaps,
    conv_layer_names,
    normalise_cam,
)


def test_cam_weights_match_hand_computation():
    # One image, 2x2 map, two channels.
    # channel 0: A = [[1, 2], [3, 0]], G = [[0.5, 1], [0, -1]]
    # channel 1: A = [[2, 0], [0, 1]], G = [[-1, -1], [-1, -1]]
    features = np.zeros((1, 2, 2, 2))
    gradients = np.zeros((1, 2, 2, 2))
    features[0, ..., 0] = [[1, 2], [3, 0]]
    gradients[0, ..., 0] = [[0.5, 1], [0, -1]]
    features[0, ..., 1] = [[2, 0], [0, 1]]
    gradients[0, ..., 1] = -1.0
    a0, a1 = features[0, ..., 0], features[0, ..., 1]

    # Grad-CAM: w = mean G = (0.125, -1); cam = relu(0.125 A0 - A1).
    expected = np.maximum(0.125 * a0 - a1, 0)
    np.testing.assert_allclose(cam_from_gradients(features, gradients, "gradcam")[0], expected, rtol=1e-6)

    # Guided: w0 = mean([A>0][G>0]G) = (0.5 + 1) / 4 = 0.375; w1 = 0 (no positive gradient).
    expected = 0.375 * a0
    np.testing.assert_allclose(cam_from_gradients(features, gradients, "guided")[0], expected, rtol=1e-6)

    # Grad-CAM++: S0 = sum A0 = 6; alpha = g^2 / (2 g^2 + 6 g^3): g=0.5 -> 0.25/1.25 = 0.2,
    # g=1 -> 1/8 = 0.125, g=0 -> 0, g=-1 -> relu(g)=0. w0 = 0.5*0.2 + 1*0.125 = 0.225; w1 = 0.
    expected = 0.225 * a0
    np.testing.assert_allclose(cam_from_gradients(features, gradients, "gradcam++")[0], expected, rtol=1e-6)


def test_normalise_cam_resizes_scales_and_zeroes_flat_maps():
    cam = np.array([[0.0, 2.0], [4.0, 8.0]], np.float32)
    out = normalise_cam(cam, 2, 2)
    np.testing.assert_allclose(out, cam / 8.0)
    big = normalise_cam(cam, 6, 4)
    assert big.shape == (6, 4) and big.dtype == np.float32
    assert big.min() == 0.0 and big.max() == 1.0
    assert np.all(normalise_cam(np.full((3, 3), 5.0), 9, 9) == 0.0)
    assert np.all(normalise_cam(np.array([[np.nan, 1.0], [0.0, np.inf]]), 2, 2) <= 1.0)


@pytest.mark.parametrize("method", ["gradcam", "guided", "gradcam++"])
def test_known_answer_model(known_answer, method):
    build, image_fn, expected_fn = known_answer
    model, image = build(), image_fn()
    for class_index in (0, 1):
        result = compute_cams(model, image, class_index=class_index, layer_name="features", method=method)
        # Grad-CAM: class 1 looks at negative x'. Guided and ++ drop channel 0 for class 1 (W[0, 1] < 0)
        # and keep channel 1 (W[1, 1] > 0, c_1 > 0): their map is relu(+x').
        sign_class = class_index if method == "gradcam" else 0
        np.testing.assert_allclose(result.heatmaps[0], expected_fn(image, sign_class), atol=1e-5)
        assert result.class_index[0] == class_index
        assert result.layer == "features"
    # The logits the probe returns are the model's.
    np.testing.assert_allclose(result.logits, np.asarray(model(image)), rtol=1e-5, atol=1e-6)


def test_default_layer_and_predicted_class(known_answer):
    build, image_fn, expected_fn = known_answer
    model, image = build(), image_fn()
    result = compute_cams(model, image)
    logits = np.asarray(model(image))[0]
    assert result.layer == "features"  # the only layer with a 4-D output besides the rescaling
    assert result.class_index[0] == int(np.argmax(logits))
    np.testing.assert_allclose(result.heatmaps[0], expected_fn(image, int(np.argmax(logits))), atol=1e-5)


def test_output_contract_batched_and_per_image_classes(known_answer):
    build, image_fn, expected_fn = known_answer
    model = build()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (7, 5, 6, 1)).astype(np.float32)
    classes = np.array([0, 1, 1, 0, 1, 0, 0])
    heatmaps = compute_heatmaps(model, images, class_index=classes, layer_name="features", batch_size=3)
    assert heatmaps.shape == (7, 5, 6) and heatmaps.dtype == np.float32
    assert np.all(np.isfinite(heatmaps)) and heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    for i in range(7):
        np.testing.assert_allclose(heatmaps[i], expected_fn(images[i : i + 1], classes[i]), atol=1e-5)
    # (N, H, W) grayscale input is accepted as (N, H, W, 1).
    np.testing.assert_allclose(
        compute_heatmaps(model, images[..., 0], class_index=classes, layer_name="features"), heatmaps, atol=1e-6
    )


def test_constant_image_gives_zeros_not_nan(known_answer, lesion_task):
    build, _, _ = known_answer
    heatmaps = compute_heatmaps(build(), np.full((2, 5, 6, 1), 80.0, np.float32), layer_name="features")
    assert np.all(heatmaps == 0.0)
    for method in ("gradcam", "guided", "gradcam++"):
        heatmaps = compute_heatmaps(lesion_task["model"], np.full((2, 64, 64, 1), 120.0), method=method)
        assert heatmaps.shape == (2, 64, 64)
        assert np.all(np.isfinite(heatmaps)) and heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0


def test_upsampling_to_input_resolution(lesion_task):
    model = lesion_task["model"]
    result = compute_cams(model, lesion_task["images"][:3], layer_name="relu2")
    assert result.heatmaps.shape == (3, 64, 64)  # relu2 is 16x16
    assert np.allclose(result.heatmaps.max(axis=(1, 2)), 1.0)


def test_single_logit_model_explains_both_classes(known_answer):
    import keras

    _, image_fn, expected_fn = known_answer
    inputs = keras.Input((5, 6, 1), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(1, 1, use_bias=False, name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="logit")(x))
    model.get_layer("features").set_weights([np.ones((1, 1, 1, 1), np.float32)])
    model.get_layer("logit").set_weights([np.full((1, 1), 2.0, np.float32)])
    image = image_fn()
    # logit = 2 mean(x'); class 1 = the logit (relu(x')), class 0 = its negation (relu(-x')).
    np.testing.assert_allclose(compute_heatmaps(model, image, class_index=1)[0], expected_fn(image, 0), atol=1e-5)
    np.testing.assert_allclose(compute_heatmaps(model, image, class_index=0)[0], expected_fn(image, 1), atol=1e-5)
    predicted = compute_cams(model, image).class_index[0]
    assert predicted == int(np.asarray(model(image))[0, 0] > 0)


def test_wrong_layer_name_lists_conv_layers(lesion_task):
    model = lesion_task["model"]
    with pytest.raises(CovidctError) as error:
        compute_heatmaps(model, lesion_task["images"][:1], layer_name="conv_9")
    message = str(error.value)
    for name in ("conv0", "relu1", "relu2", "Did you mean"):
        assert name in message
    assert conv_layer_names(model) == [
        "rescale", "conv0", "bn0", "relu0", "pool0", "conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2",
    ]
    with pytest.raises(CovidctError, match="not 4-D"):
        compute_heatmaps(model, lesion_task["images"][:1], layer_name="gap")


def test_bad_arguments_raise_covidct_errors(known_answer):
    build, image_fn, _ = known_answer
    model, image = build(), image_fn()
    with pytest.raises(CovidctError, match="Did you mean: gradcam"):
        compute_heatmaps(model, image, method="gradcm")
    with pytest.raises(CovidctError, match="out of range"):
        compute_heatmaps(model, image, class_index=2)
    with pytest.raises(CovidctError, match="one per image"):
        compute_heatmaps(model, np.repeat(image, 2, axis=0), class_index=[0, 1, 0])
    with pytest.raises(CovidctError, match="expects shape"):
        compute_heatmaps(model, np.zeros((1, 6, 5, 1)))
    with pytest.raises(CovidctError, match="takes 1 input"):
        compute_heatmaps(model, (image, image))
