"""Drawing heatmaps: colour overlays and contact sheets (original | heatmap | overlay, per class).

Computing a heatmap (``covidct.explain.gradcam``) and drawing it are separate, so the same heatmaps
can be scored (``covidct.explain.focus``), saved, or drawn in several ways.
"""

from __future__ import annotations

import cv2
import matplotlib
import numpy as np
from matplotlib.figure import Figure

from covidct.errors import CovidctError, unknown_name_error


def display_rgb(image) -> np.ndarray:
    """An image as uint8 RGB (H, W, 3) for display.

    Args:
        image: (H, W) or (H, W, C). uint8 is used as is; floats with maximum <= 1 are taken as [0, 1],
            other floats as [0, 255]. One or two channels (``masked-pair``: image, mask) show channel 0
            in grey; three channels are shown as RGB; more than three show channel 0.

    Returns:
        uint8 (H, W, 3).
    """
    array = np.asarray(image)
    if array.ndim == 3:
        array = array if array.shape[-1] == 3 else array[..., 0]
    if array.ndim not in (2, 3):
        raise CovidctError(f"An image must be (H, W) or (H, W, C), got shape {array.shape}.")
    if array.dtype != np.uint8:
        array = np.nan_to_num(array.astype(np.float32))
        if array.size and array.max() <= 1.0 and array.min() >= 0.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array


def heatmap_rgb(heatmap, cmap: str = "jet", size: tuple | None = None) -> np.ndarray:
    """Colour a [0, 1] heatmap with a matplotlib colormap.

    Args:
        heatmap: float (h, w) in [0, 1] (values outside are clipped).
        cmap: matplotlib colormap name (default ``"jet"``, as the keras-io Grad-CAM example).
        size: optional (H, W) to resize the heatmap to (bilinear) before colouring.

    Returns:
        uint8 RGB (H, W, 3).
    """
    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    if heatmap.ndim != 2:
        raise CovidctError(f"A heatmap must be 2-D (H, W), got shape {heatmap.shape}.")
    if size is not None and tuple(size) != heatmap.shape:
        heatmap = cv2.resize(heatmap, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError as error:
        raise unknown_name_error("colormap", cmap, list(matplotlib.colormaps)) from error
    colours = colormap(np.clip(heatmap, 0.0, 1.0))[..., :3]
    return np.rint(colours * 255.0).astype(np.uint8)


def overlay(image, heatmap, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a coloured heatmap over an image: ``(1 - alpha) * image + alpha * colour(heatmap)``.

    Args:
        image: (H, W) or (H, W, C) image (see ``display_rgb``).
        heatmap: float (h, w) in [0, 1]; resized bilinearly to (H, W) when it differs.
        alpha: weight of the heatmap colour, in [0, 1] (0.5 as in the original study's notebook).
        cmap: matplotlib colormap name.

    Returns:
        uint8 RGB (H, W, 3).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise CovidctError(f"alpha must be in [0, 1], got {alpha!r}.")
    base = display_rgb(image).astype(np.float32)
    colours = heatmap_rgb(heatmap, cmap, size=base.shape[:2]).astype(np.float32)
    blended = (1.0 - float(alpha)) * base + float(alpha) * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _name(value, class_names) -> str:
    if value is None:
        return ""
    if class_names is not None and isinstance(value, (int, np.integer)) and 0 <= int(value) < len(class_names):
        return str(class_names[int(value)])
    return str(value)


def contact_sheet(
    images,
    heatmaps,
    labels=None,
    predictions=None,
    class_names=None,
    scores=None,
    max_per_class: int = 4,
    alpha: float = 0.5,
    cmap: str = "jet",
    title: str | None = None,
    panel_inches: float = 2.2,
):
    """A figure with one row per image: original | heatmap | overlay, grouped by class.

    Args:
        images: N images, (N, H, W) or (N, H, W, C).
        heatmaps: float (N, H, W) in [0, 1].
        labels: N true classes (names or indices), or None; rows are grouped by it (else by prediction).
        predictions: N predicted classes (names or indices), or None.
        class_names: names for integer labels/predictions.
        scores: optional N lung-focus scores shown in the row titles.
        max_per_class: at most this many rows per class (the first ones in input order).
        alpha: overlay weight of the heatmap.
        cmap: matplotlib colormap.
        title: figure title.
        panel_inches: size of one panel in inches.

    Returns:
        A matplotlib Figure.
    """
    count = len(images)
    if len(heatmaps) != count:
        raise CovidctError(f"Got {count} images but {len(heatmaps)} heatmaps.")
    for name, values in (("labels", labels), ("predictions", predictions), ("scores", scores)):
        if values is not None and len(values) != count:
            raise CovidctError(f"Got {count} images but {len(values)} {name}.")
    if count == 0:
        raise CovidctError("contact_sheet needs at least one image.")
    group_by = labels if labels is not None else predictions
    groups = [_name(value, class_names) for value in group_by] if group_by is not None else [""] * count
    order = []
    for group in sorted(set(groups), key=lambda g: (class_names.index(g) if class_names and g in class_names else 0, g)):
        order.extend([i for i in range(count) if groups[i] == group][: int(max_per_class)])

    figure = Figure(figsize=(3 * panel_inches, len(order) * panel_inches + 0.4))
    axes = figure.subplots(len(order), 3, squeeze=False)
    for row, index in enumerate(order):
        parts = []
        if labels is not None:
            parts.append(f"true {_name(labels[index], class_names)}")
        if predictions is not None:
            parts.append(f"pred {_name(predictions[index], class_names)}")
        if scores is not None and np.isfinite(scores[index]):
            parts.append(f"lung focus {float(scores[index]):.2f}")
        axes[row, 0].imshow(display_rgb(images[index]))
        axes[row, 1].imshow(np.asarray(heatmaps[index]), cmap=cmap, vmin=0.0, vmax=1.0)
        axes[row, 2].imshow(overlay(images[index], heatmaps[index], alpha=alpha, cmap=cmap))
        axes[row, 0].set_ylabel("\n".join(parts), fontsize=8)
        for column, heading in enumerate(("original", "heatmap", "overlay")):
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
            if row == 0:
                axes[row, column].set_title(heading, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def comparison_grid(
    images,
    heatmap_sets: dict,
    row_labels=None,
    alpha: float = 0.5,
    cmap: str = "jet",
    title: str | None = None,
    panel_inches: float = 2.0,
):
    """Overlays of several heatmap sets side by side: one row per image, one column per set.

    Use it to compare methods (``{"gradcam": h1, "guided": h2}``), target classes, layers or checkpoints
    on the same images.

    Args:
        images: N images, (N, H, W) or (N, H, W, C).
        heatmap_sets: ``{column title: (N, H, W) heatmaps}``, in column order.
        row_labels: optional N strings shown left of each row.
        alpha: overlay weight of the heatmap.
        cmap: matplotlib colormap.
        title: figure title.
        panel_inches: size of one panel in inches.

    Returns:
        A matplotlib Figure with columns ``original`` and one per heatmap set.
    """
    count = len(images)
    if count == 0 or not heatmap_sets:
        raise CovidctError("comparison_grid needs at least one image and one heatmap set.")
    for name, heatmaps in heatmap_sets.items():
        if len(heatmaps) != count:
            raise CovidctError(f"Heatmap set {name!r} has {len(heatmaps)} maps for {count} images.")
    if row_labels is not None and len(row_labels) != count:
        raise CovidctError(f"Got {count} images but {len(row_labels)} row labels.")
    columns = 1 + len(heatmap_sets)
    figure = Figure(figsize=(columns * panel_inches, count * panel_inches + 0.4))
    axes = figure.subplots(count, columns, squeeze=False)
    for row in range(count):
        axes[row, 0].imshow(display_rgb(images[row]))
        for column, heatmaps in enumerate(heatmap_sets.values(), start=1):
            axes[row, column].imshow(overlay(images[row], heatmaps[row], alpha=alpha, cmap=cmap))
        for column, heading in enumerate(["original", *map(str, heatmap_sets)]):
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
            if row == 0:
                axes[row, column].set_title(heading, fontsize=9)
        if row_labels is not None:
            axes[row, 0].set_ylabel(str(row_labels[row]), fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
