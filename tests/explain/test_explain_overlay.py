"""Overlays, contact sheets and feature-map figures."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.explain.activations import feature_maps, top_channels
from covidct.explain.overlay import comparison_grid, contact_sheet, display_rgb, heatmap_rgb, overlay


def test_overlay_is_the_convex_blend_of_image_and_colormap():
    image = np.array([[0, 100], [200, 255]], np.uint8)
    heatmap = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    jet = matplotlib.colormaps["jet"]
    colours = np.rint(jet(heatmap)[..., :3] * 255)
    expected = np.rint(0.7 * image[..., None].astype(float) + 0.3 * colours)
    result = overlay(image, heatmap, alpha=0.3)
    assert result.dtype == np.uint8 and result.shape == (2, 2, 3)
    np.testing.assert_allclose(result, expected, atol=1)
    np.testing.assert_array_equal(overlay(image, heatmap, alpha=0.0), np.repeat(image[..., None], 3, axis=-1))
    np.testing.assert_array_equal(overlay(image, heatmap, alpha=1.0, cmap="gray")[..., 0], np.rint(heatmap * 255))


def test_overlay_resizes_the_heatmap_and_reads_any_image_layout():
    image = np.zeros((32, 48, 2), np.uint8)  # masked-pair: channel 0 shown
    image[..., 0] = 50
    image[..., 1] = 255
    result = overlay(image, np.ones((4, 6)), alpha=0.5, cmap="gray")
    assert result.shape == (32, 48, 3)
    assert np.all(result == np.rint(0.5 * 50 + 0.5 * 255))
    assert display_rgb(np.full((3, 3), 0.5, np.float32)).max() == 128  # floats in [0, 1] are scaled
    assert heatmap_rgb(np.zeros((2, 2)), size=(5, 7)).shape == (5, 7, 3)
    with pytest.raises(CovidctError, match="alpha"):
        overlay(image, np.ones((4, 6)), alpha=2)
    with pytest.raises(CovidctError, match="colormap"):
        overlay(image, np.ones((4, 6)), cmap="no_such_map")


def test_contact_sheet_rows_grouped_per_class():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (7, 16, 16, 1)).astype(np.uint8)
    heatmaps = rng.uniform(0, 1, (7, 16, 16)).astype(np.float32)
    labels = [1, 0, 1, 2, 0, 1, 1]
    figure = contact_sheet(
        images, heatmaps, labels=labels, predictions=[1, 0, 0, 2, 0, 1, 2], class_names=["Normal", "COV", "Other"],
        scores=np.linspace(0, 1, 7), max_per_class=3,
    )
    axes = np.array(figure.axes).reshape(-1, 3)
    assert axes.shape == (2 + 3 + 1, 3)  # Normal x2, COV x3 (of 4), Other x1
    row_labels = [row[0].get_ylabel() for row in axes]
    assert [text.split("\n")[0] for text in row_labels] == ["true Normal"] * 2 + ["true COV"] * 3 + ["true Other"]
    assert "pred COV" in row_labels[2] and "lung focus" in row_labels[0]
    assert [axis.get_title() for axis in axes[0]] == ["original", "heatmap", "overlay"]
    matplotlib.pyplot.close(figure)
    with pytest.raises(CovidctError, match="7 images but 6 heatmaps"):
        contact_sheet(images, heatmaps[:6])


def test_comparison_grid_columns_are_the_heatmap_sets():
    images = np.zeros((2, 8, 8), np.uint8)
    sets = {"gradcam": np.zeros((2, 8, 8)), "guided": np.ones((2, 8, 8))}
    figure = comparison_grid(images, sets, row_labels=["a", "b"], alpha=1.0, cmap="gray")
    axes = np.array(figure.axes).reshape(2, 3)
    assert [axis.get_title() for axis in axes[0]] == ["original", "gradcam", "guided"]
    assert axes[1, 0].get_ylabel() == "b"
    assert axes[0, 2].images[0].get_array().min() == 255  # alpha 1: the guided column is the heatmap (all ones)
    matplotlib.pyplot.close(figure)
    with pytest.raises(CovidctError, match="'guided' has 1 maps for 2 images"):
        comparison_grid(images, {"guided": np.ones((1, 8, 8))})


def test_feature_maps_show_the_strongest_channels(known_answer):
    build, image_fn, _ = known_answer
    model = build()
    image = image_fn()[0] * 0.5 + 127.5  # x' = x / 127.5 - 1 in [0, 1]: features (x', 2 x'), channel 1 strongest
    scaled = image[..., 0] / 127.5 - 1
    assert list(top_channels(np.stack([scaled, 2 * scaled], axis=-1), 2)) == [1, 0]
    figure = feature_maps(model, image, "features", max_maps=1)
    shown = [axis for axis in figure.axes if axis.images]
    assert len(shown) == 1 and shown[0].get_title().startswith("#1 ")
    np.testing.assert_allclose(shown[0].images[0].get_array(), 2 * scaled, atol=1e-5)
    matplotlib.pyplot.close(figure)
    figure = feature_maps(model, image, "features", max_maps=16)
    assert len([axis for axis in figure.axes if axis.images]) == 2  # only 2 channels exist
    matplotlib.pyplot.close(figure)
