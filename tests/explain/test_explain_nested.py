"""Grad-CAM through a keras.applications base nested as a layer, and through two-input models.

Known answer: when the explained layer is followed only by global average pooling and a Dense layer,
Grad-CAM's weights are ``W[:, c] / (h w)``, so the heatmap equals the class activation map of Zhou et
al. (2016), ``relu(sum_k W[k, c] A_k)`` scaled to [0, 1]. ``A`` is computed here independently, with a
plain sub-model of the nested base.
"""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.explain.gradcam import compute_cams, conv_layer_names, layer_activations


def test_nested_base_layers_are_found_by_path(mobilenet):
    model, base = mobilenet
    names = conv_layer_names(model)
    assert base.name in names  # the nested model itself (its output is 4-D)
    last_inner = base.layers[-1].name
    assert f"{base.name}/{last_inner}" in names
    images = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 1)).astype(np.float32)
    by_path = compute_cams(model, images, layer_name=f"{base.name}/{last_inner}")
    by_bare_name = compute_cams(model, images, layer_name=last_inner)
    assert by_path.layer == by_bare_name.layer == f"{base.name}/{last_inner}"
    np.testing.assert_allclose(by_path.heatmaps, by_bare_name.heatmaps)
    with pytest.raises(CovidctError, match=f"{base.name}/"):
        compute_cams(model, images, layer_name=f"{base.name}/no_such_layer")


def test_nested_grad_cam_equals_class_activation_map(mobilenet, class_activation_map):
    model, base = mobilenet
    import keras

    images = np.random.default_rng(2).uniform(0, 255, (3, 64, 64, 1)).astype(np.float32)
    result = compute_cams(model, images, class_index=[0, 1, 1], layer_name=base.name)
    # Independent activations: the nested base alone on the images scaled and repeated to RGB by hand.
    rgb = np.repeat(images / 255.0, 3, axis=-1)
    features = keras.ops.convert_to_numpy(base(rgb, training=False))
    assert features.shape[1:3] == (2, 2)
    kernel = model.get_layer("logits").get_weights()[0]
    for i, class_index in enumerate([0, 1, 1]):
        expected = class_activation_map(features[i], kernel, class_index, 64)
        np.testing.assert_allclose(result.heatmaps[i], expected, atol=2e-4)
    np.testing.assert_allclose(result.logits, keras.ops.convert_to_numpy(model(images)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer_activations(model, images, base.name), features, rtol=1e-4, atol=1e-5)


def test_inner_layer_gradients_reach_through_the_nested_graph(mobilenet):
    """An inner layer several blocks before the output: the heatmap must depend on the target class."""
    model, base = mobilenet
    images = np.random.default_rng(4).uniform(0, 255, (2, 64, 64, 1)).astype(np.float32)
    inner = [name for name in conv_layer_names(model) if name.startswith(f"{base.name}/expanded_conv_3")][-1]
    zero = compute_cams(model, images, class_index=0, layer_name=inner)
    one = compute_cams(model, images, class_index=1, layer_name=inner)
    assert zero.heatmaps.shape == (2, 64, 64)
    assert np.all(np.isfinite(zero.heatmaps)) and np.all(np.isfinite(one.heatmaps))
    assert not np.allclose(zero.heatmaps, one.heatmaps)


def test_two_input_masked_efficientnet():
    from covidct.models import build_model, get_spec

    model = build_model("masked_efficientnet_b0", (64, 64, 1), 2)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 64, 64, 1)).astype(np.float32)
    masks = np.zeros((2, 64, 64, 1), np.float32)
    masks[:, 16:48, 8:56] = 255.0
    result = compute_cams(model, (images, masks))
    assert result.layer == get_spec("masked_efficientnet_b0").gradcam_layer == "top_activation"
    assert result.heatmaps.shape == (2, 64, 64)
    assert np.all(np.isfinite(result.heatmaps)) and result.heatmaps.min() >= 0 and result.heatmaps.max() <= 1
    assert np.all(result.heatmaps.max(axis=(1, 2)) == 1.0)  # a 2x2 map with contrast
    as_dict = compute_cams(model, {"image": images, "mask": masks}).heatmaps
    as_kwarg = compute_cams(model, images, masks=masks).heatmaps
    np.testing.assert_allclose(as_dict, result.heatmaps, atol=1e-6)
    np.testing.assert_allclose(as_kwarg, result.heatmaps, atol=1e-6)
    # An all-zero mask blanks the image inside the model: a constant input, so a zero heatmap, not NaN.
    blank = compute_cams(model, images, masks=np.zeros_like(masks)).heatmaps
    assert np.all(blank == 0.0)
    with pytest.raises(CovidctError, match="lacks"):
        compute_cams(model, {"image": images})
    with pytest.raises(CovidctError, match="takes 2 input"):
        compute_cams(model, images)
