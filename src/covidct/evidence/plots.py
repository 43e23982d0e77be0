"""What the lesion evidence looks like: lesion maps of example slices and lesion burden along each patient's slices.

``example_slices`` picks, per label, one patient and that patient's mid-lung slice with the largest lesion area
(from an evidence run's ``features_<dataset>.csv``); ``lesion_maps`` applies a segmenter run to those slices
exactly as ``covidct evidence`` does (classical lung mask, ``covidct.evidence.extract.lesion_probabilities``);
``plot_lesion_maps`` and ``plot_burden_curves`` return matplotlib Figures (no backend selected, nothing shown).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from covidct.errors import CovidctError
from covidct.evidence.extract import LESION_THRESHOLD, display_slices, lesion_probabilities, load_segmenters
from covidct.evidence.run import MIN_LUNG_FRACTION
from covidct.preprocess.lungs import lung_mask

#: Label order of the examples and the curves (COVID-CT-MD's and the phantoms' labels).
LABEL_ORDER = ("COV", "OtherPneumonia", "Normal")


@dataclass
class LesionMap:
    """One slice (display grey levels), its classical lung labels and the segmenter's lesion probability map."""

    image: np.ndarray
    lungs: np.ndarray
    probability: np.ndarray
    title: str


def example_slices(features: pd.DataFrame, labels=LABEL_ORDER, min_lung_fraction: float = MIN_LUNG_FRACTION,
                   central: float = 0.75) -> pd.DataFrame:
    """Per label, the first patient (by group name) and its mid-lung slice with the largest lesion area.

    Candidates are the patient's slices whose lung area is at least ``central`` times its largest one (the
    mid-thorax): at the bases and apices a sliver of lung, or a classical mask that strayed into the abdomen,
    makes a few marked pixels look like a heavy burden. Among them, the largest lesion area (burden x lung
    fraction) wins.

    Args:
        features: an evidence run's ``features_<dataset>.csv`` (path, label, group, slice_index, lung_fraction, burden).
        labels: the labels wanted, in order; absent ones are skipped.
        min_lung_fraction: slices with less lung are never candidates.
        central: share of the patient's largest lung fraction a candidate needs (0: every lung slice).

    Returns:
        One row per label found.

    Raises:
        CovidctError: none of ``labels`` has a lung-containing slice.
    """
    missing = [c for c in ("path", "label", "group", "lung_fraction", "burden") if c not in features]
    if missing:
        raise CovidctError(f"The features table lacks {missing}: pass an evidence run's features_<dataset>.csv.")
    lung = features[features["lung_fraction"] >= min_lung_fraction]
    rows = []
    for label in labels:
        part = lung[lung["label"].astype(str) == label]
        if part.empty:
            continue
        first = sorted(part["group"].astype(str).unique())[0]
        patient = part[part["group"].astype(str) == first]
        patient = patient[patient["lung_fraction"] >= central * patient["lung_fraction"].max()]
        rows.append(patient.loc[(patient["burden"] * patient["lung_fraction"]).idxmax()])
    if not rows:
        raise CovidctError(f"No lung-containing slice with a label in {list(labels)}; labels present: "
                           f"{sorted(features['label'].astype(str).unique())}.")
    return pd.DataFrame(rows).reset_index(drop=True)


def lesion_maps(segmenter, rows: pd.DataFrame) -> list[LesionMap]:
    """The segmenter run's lesion probability over each row's slice (read from its ``path`` / ``slice_index``).

    Args:
        segmenter: a segmentation run folder (or ``.keras`` file), as for ``covidct evidence --segmenter``.
        rows: manifest rows, e.g. from :func:`example_slices`.
    """
    models = load_segmenters(segmenter)
    images = [image for _, image in display_slices(rows)]
    lungs = [lung_mask(image, unit="display", warn=False) for image in images]
    maps = lesion_probabilities(models, images, lungs)
    out = []
    for (_, row), image, labels, probability in zip(rows.iterrows(), images, lungs, maps):
        where = f", slice {int(row['slice_index'])}" if int(row.get("slice_index", -1)) >= 0 else ""
        out.append(LesionMap(image, labels, probability, f"{row['label']} · {row['group']}{where}"))
    return out


def plot_lesion_maps(maps: list[LesionMap], threshold: float = LESION_THRESHOLD) -> Figure:
    """Per slice: the slice with its lung outline (top) and the lesion probability inside the lungs (bottom).

    The bottom row colours the probability only inside the classical lung mask (what the features use), with
    the ``threshold`` contour (the lesion mask) in cyan and the share of the lung above it in the title.
    """
    if not maps:
        raise CovidctError("No lesion maps to draw.")
    figure = Figure(figsize=(3.2 * len(maps), 6.6))
    axes = np.asarray(figure.subplots(2, len(maps), squeeze=False))
    image = None
    for column, item in enumerate(maps):
        inside = item.lungs > 0
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(item.image, cmap="gray", vmin=0, vmax=255)
        top.contour(inside.astype(float), levels=[0.5], colors="lime", linewidths=0.6)
        top.set_title(item.title, fontsize=9)
        bottom.imshow(item.image, cmap="gray", vmin=0, vmax=255)
        image = bottom.imshow(np.ma.masked_where(~inside, item.probability), cmap="inferno", vmin=0, vmax=1, alpha=0.75)
        if (item.probability[inside] >= threshold).any():
            bottom.contour(((item.probability >= threshold) & inside).astype(float), levels=[0.5], colors="cyan",
                           linewidths=0.6)
        burden = float((item.probability[inside] >= threshold).mean()) if inside.any() else float("nan")
        bottom.set_title(f"lesion probability in the lungs\nburden {burden:.3f} (p >= {threshold:g})", fontsize=8)
        for axis in (top, bottom):
            axis.axis("off")
    figure.colorbar(image, ax=list(axes[1]), shrink=0.8, label="lesion probability")
    return figure


def plot_burden_curves(features: pd.DataFrame, min_lung_fraction: float = MIN_LUNG_FRACTION,
                       scores: pd.DataFrame | None = None) -> Figure:
    """Lesion burden along each patient's slices (one panel per patient, ordered by label then name).

    Args:
        features: an evidence run's ``features_<dataset>.csv`` of a volume dataset (``slice_index`` per row).
        min_lung_fraction: slices with less lung (not scored) are shaded.
        scores: optionally the run's ``scores_<dataset>.csv``: its slice probability is drawn on the same axis.
    """
    if "slice_index" not in features or (features["slice_index"] < 0).all():
        raise CovidctError("Burden curves need volumes (a slice_index per row), e.g. covid-ct-md's features.")
    order = {label: rank for rank, label in enumerate(LABEL_ORDER)}
    patients = (features[["group", "label"]].drop_duplicates("group")
                .assign(rank=lambda f: f["label"].map(order).fillna(len(order)))
                .sort_values(["rank", "group"]))
    columns = min(3, len(patients))
    rows = int(np.ceil(len(patients) / columns))
    figure = Figure(figsize=(4.2 * columns, 2.6 * rows))
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False, sharey=True)).ravel()
    for axis, (_, patient) in zip(axes, patients.iterrows()):
        part = features[features["group"] == patient["group"]].sort_values("slice_index")
        x = part["slice_index"].to_numpy()
        low = part["lung_fraction"].to_numpy() < min_lung_fraction
        for index in x[low]:
            axis.axvspan(index - 0.5, index + 0.5, color="0.9", linewidth=0)
        axis.plot(x, part["burden"], color="tab:red", label="lesion burden (share of the lung)")
        if scores is not None and "probability" in scores:
            scored = scores[scores["group"] == patient["group"]].sort_values("slice_index")
            axis.plot(scored["slice_index"], scored["probability"], color="tab:blue", linewidth=0.8,
                      label="evidence model P(COV)")
        axis.set_title(f"{patient['group']} ({patient['label']})", fontsize=9)
        axis.set_xlabel("slice index")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylim(0, 1)
    for axis in axes[len(patients):]:
        axis.axis("off")
    axes[0].set_ylabel("share")
    axes[0].legend(fontsize=7, loc="upper left")
    figure.suptitle(f"grey: slices with lung < {min_lung_fraction:.0%} of the slice (not scored)", fontsize=8)
    figure.tight_layout()
    return figure


__all__ = ["LesionMap", "example_slices", "lesion_maps", "plot_burden_curves", "plot_lesion_maps"]
