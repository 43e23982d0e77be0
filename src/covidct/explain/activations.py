"""Layer activation visualisation: the feature maps of one layer for one image (covid_from_ctscan)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from covidct.errors import CovidctError
from covidct.explain.gradcam import layer_activations


def top_channels(activations: np.ndarray, max_maps: int = 16) -> np.ndarray:
    """Indices of the channels with the largest mean activation, strongest first.

    Args:
        activations: float (h, w, K) feature maps of one image.
        max_maps: how many channels to keep.

    Returns:
        int (min(max_maps, K),) channel indices.
    """
    means = np.asarray(activations, dtype=np.float64).mean(axis=(0, 1))
    # A stable sort keeps the lower channel index first among equal means.
    return np.argsort(-means, kind="stable")[: int(max_maps)]


def feature_maps(model, image, layer_name: str, max_maps: int = 16, masks=None, cmap: str = "viridis"):
    """Draw the strongest feature maps of one layer for one image.

    The channels shown are those with the largest mean activation (the ones the image drives most);
    each panel has its own colour scale and is titled with its channel index and mean.

    Args:
        model: a Keras model.
        image: one image (H, W, C) or (H, W) in the model's input range; for two-input models a tuple
            (image, mask) or pass ``masks``.
        layer_name: layer name or ``"outer/inner"`` path with a 4-D output (see ``conv_layer_names``).
        max_maps: at most this many panels.
        masks: optional second input (one mask).
        cmap: matplotlib colormap.

    Returns:
        A matplotlib Figure.
    """
    if int(max_maps) < 1:
        raise CovidctError(f"max_maps must be a positive integer, got {max_maps!r}.")
    activations = layer_activations(model, image, layer_name, masks=masks)[0]
    channels = top_channels(activations, max_maps)
    columns = min(4, len(channels))
    rows = math.ceil(len(channels) / columns)
    figure = Figure(figsize=(2.2 * columns, 2.2 * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, channel in zip(axes.ravel(), channels):
        axis.imshow(activations[..., channel], cmap=cmap)
        axis.set_title(f"#{int(channel)} mean {activations[..., channel].mean():.2g}", fontsize=8)
    figure.suptitle(f"{layer_name}: {len(channels)} of {activations.shape[-1]} feature maps", fontsize=10)
    figure.tight_layout()
    return figure
