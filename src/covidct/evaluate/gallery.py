"""The README's gallery: figures drawn from recorded results, never from training.

Two kinds of functions:

- **readers** turn one recorded result (a ``benchmarks/results/*.json`` file already parsed, or a run's
  ``metrics_<tag>.json``) into plain rows: ``generalization_row``, ``evaluation_row``, ``cv_rows``;
- **plots** draw such rows and return a matplotlib Figure; they never select a backend or show anything:
  ``plot_internal_vs_external`` (the headline: scores on the own test split vs another hospital),
  ``plot_score_bars`` (macro-F1 and AUC side by side per model, recipe or stage, the original study's
  F1-score view) and ``plot_stages`` (what each preprocessing stage makes of one slice).

Every interval is the one recorded with the result (95% bootstrap over patients or groups); nothing is
recomputed here. ``benchmarks/make_figures.py`` (``make figures``) picks the files and saves the PNGs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from covidct.errors import CovidctError, unknown_name_error
from covidct.preprocess import get_stage

#: Columns of the rows ``plot_internal_vs_external`` draws.
GENERALIZATION_COLUMNS = (
    "label", "internal", "internal low", "internal high", "external", "external low", "external high",
)
#: Vertical shift of the internal (up) and external (down) point of a row in ``plot_internal_vs_external``.
ROW_OFFSET = 0.15
#: Metrics ``plot_score_bars`` can draw: column → axis text.
SCORE_METRICS = {"macro_f1": "macro-F1", "auc": "AUC"}


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _interval(pair) -> tuple[float, float]:
    """(low, high) of a recorded ``[low, high]`` list or ``{"low", "high"}`` dict; NaN when absent."""
    if isinstance(pair, dict):
        return _number(pair.get("low")), _number(pair.get("high"))
    if isinstance(pair, (list, tuple)) and len(pair) == 2:
        return _number(pair[0]), _number(pair[1])
    return math.nan, math.nan


def generalization_row(result: dict, arm: str, label: str) -> dict:
    """Internal test AUC and external slice AUC of one arm of a ``bench_generalization.py`` result.

    The seeds' ensemble (their averaged probabilities) when the result has one, else its only seed.

    Args:
        result: the parsed ``generalization_*.json``.
        arm: the arm (``standardize``, ``lungs``, ``robust`` ...).
        label: the row's text in the figure.

    Returns:
        A dict with the ``GENERALIZATION_COLUMNS`` plus ``seeds`` (how many seeds the numbers pool) and
        ``internal macro_f1`` with ``internal macro_f1 low`` / ``high`` (NaN when the result has none).

    Raises:
        CovidctError: the arm is missing, or it has several seeds but no ensemble.
    """
    arms = result.get("arms") or {}
    if arm not in arms:
        raise unknown_name_error("arm", arm, arms)
    entry = arms[arm]
    seeds = entry.get("seeds") or []
    block = entry.get("ensemble")
    if not block:
        if len(seeds) != 1:
            raise CovidctError(f"arm {arm!r} has {len(seeds)} seeds and no ensemble; pick a result with one seed "
                               "or with an ensemble row.")
        block = seeds[0]
    external = block.get("external") or {}
    internal_low, internal_high = _interval(block.get("internal_test_auc_ci"))
    external_low, external_high = _interval(external.get("slice_auc_ci"))
    f1_low, f1_high = _interval(block.get("internal_test_macro_f1_ci"))
    return {
        "label": label,
        "internal": _number(block.get("internal_test_auc")), "internal low": internal_low,
        "internal high": internal_high,
        "external": _number(external.get("slice_auc")), "external low": external_low,
        "external high": external_high,
        "seeds": len(seeds),
        "internal macro_f1": _number(block.get("internal_test_macro_f1")),
        "internal macro_f1 low": f1_low, "internal macro_f1 high": f1_high,
    }


def evaluation_row(internal: dict, external: dict, label: str, metric: str = "auc_macro_ovr") -> dict:
    """Internal vs external row from two evaluations in the ``metrics_<tag>.json`` format (slice level).

    Args:
        internal: the test-split evaluation (``{"slice": {metric: ..., "ci": {metric: {"low", "high"}}}}``).
        external: the evaluation on another dataset, same format.
        label: the row's text.
        metric: the key of the score in the ``slice`` block.

    Returns:
        A dict with the ``GENERALIZATION_COLUMNS``.
    """
    row = {"label": label}
    for name, evaluation in (("internal", internal), ("external", external)):
        block = evaluation.get("slice") or {}
        row[name] = _number(block.get(metric))
        row[f"{name} low"], row[f"{name} high"] = _interval((block.get("ci") or {}).get(metric))
    return row


def cv_rows(result: dict, labels: dict[str, str] | None = None) -> list[dict]:
    """Pooled out-of-fold macro-F1 and AUC of each candidate of a ``bench_recipe_cv.py`` result.

    Args:
        result: the parsed ``recipe_cv_*.json``.
        labels: candidate name → text; candidates not named keep their name.

    Returns:
        One dict per candidate in the recorded order: ``label``, ``candidate``, ``macro_f1``, ``macro_f1 low``,
        ``macro_f1 high``, ``auc``, ``auc low``, ``auc high``.
    """
    labels = labels or {}
    rows = []
    for name, candidate in (result.get("candidates") or {}).items():
        row = {"label": labels.get(name, name), "candidate": name}
        for metric in SCORE_METRICS:
            row[metric] = _number(candidate.get(f"oof_{metric}"))
            row[f"{metric} low"], row[f"{metric} high"] = _interval(candidate.get(f"oof_{metric}_ci"))
        rows.append(row)
    return rows


def _require(frame: pd.DataFrame, columns, what: str) -> pd.DataFrame:
    frame = pd.DataFrame(frame)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CovidctError(f"{what}: the rows lack the columns {missing}.")
    if not len(frame):
        raise CovidctError(f"{what}: no rows to draw.")
    return frame.reset_index(drop=True)


def _whiskers(values, lows, highs) -> np.ndarray:
    """(2, N) whisker lengths below/above each value (0 where the interval or the value is unknown)."""
    values, lows, highs = (np.asarray(a, dtype=float) for a in (values, lows, highs))
    with np.errstate(invalid="ignore"):
        below, above = values - lows, highs - values
    if np.any(below < -1e-12) or np.any(above < -1e-12):
        raise CovidctError("a value lies outside its recorded interval; check the result file.")
    return np.nan_to_num(np.vstack([below, above]), nan=0.0).clip(min=0.0)


def plot_internal_vs_external(
    rows, title: str | None = None, internal_name: str = "own test split", external_name: str = "other hospital",
) -> Figure:
    """The generalisation gap: each recipe's AUC on its own test split beside its AUC on another hospital.

    One row per recipe, top to bottom in the given order: a filled circle for the internal score, a square
    for the external one, each with its recorded 95% interval, joined by a grey line; a dashed line marks
    chance (AUC 0.5).

    Args:
        rows: a DataFrame (or list of dicts) with the ``GENERALIZATION_COLUMNS``.
        title: figure title.
        internal_name, external_name: legend texts of the two scores.

    Returns:
        The Figure. Its axes hold two errorbar containers, internal first: ``ax.containers[k].lines[0]``
        has the points (x = score; y = the row's position, the first row at the top at ``len(rows) - 1``,
        plus ``ROW_OFFSET`` for the internal score and minus it for the external one).
    """
    frame = _require(rows, GENERALIZATION_COLUMNS, "plot_internal_vs_external")
    n = len(frame)
    y = np.arange(n, dtype=float)[::-1]
    fig = Figure(figsize=(8.5, 0.55 * n + 1.8))
    ax = fig.add_subplot()
    for left, right, row_y in zip(frame["internal"], frame["external"], y):
        ax.plot([left, right], [row_y + ROW_OFFSET, row_y - ROW_OFFSET], color="lightgrey", linewidth=1.5, zorder=1)
    series = (("internal", internal_name, "o", "tab:blue", ROW_OFFSET), ("external", external_name, "s", "tab:red",
                                                                        -ROW_OFFSET))
    lowest = 0.2
    for key, name, marker, colour, shift in series:
        values = frame[key].to_numpy(dtype=float)
        lows = frame[f"{key} low"].to_numpy(dtype=float)
        ax.errorbar(values, y + shift, xerr=_whiskers(values, lows, frame[f"{key} high"]), fmt=marker,
                    color=colour, capsize=3, label=name, zorder=3, markersize=5)
        for value, row_y in zip(values, y + shift):
            if not math.isnan(value):
                ax.annotate(f"{value:.2f}", (value, row_y), textcoords="offset points", xytext=(0, 3.5),
                            ha="center", fontsize=7, color=colour)
        if np.isfinite(lows).any():
            lowest = min(lowest, float(np.nanmin(lows)))
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (AUC 0.5)")
    ax.set_yticks(y, frame["label"], fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlim(math.floor(lowest * 10) / 10, 1.02)
    ax.set_xlabel("AUC, 95% interval by bootstrap over patients (groups)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09 - 0.5 / (n + 2)), ncol=3, fontsize=8, frameon=False)
    ax.set_title(title or "AUC on the own test split vs on another hospital", fontsize=10)
    fig.tight_layout()
    return fig


def plot_score_bars(rows, metrics=("macro_f1", "auc"), title: str | None = None, xlabel: str = "score") -> Figure:
    """Horizontal bars of several scores per row (model, recipe or stage), with 95% interval whiskers.

    The original study's F1-score view, with AUC beside it. Rows run top to bottom in the given order; a
    missing score (NaN) draws no bar and is written ``n/a``; a missing interval draws no whisker.

    Args:
        rows: a DataFrame (or list of dicts) with ``label`` and, per metric, ``<metric>``, ``<metric> low``,
            ``<metric> high``.
        metrics: keys of ``SCORE_METRICS``, one bar each per row.
        title: figure title.
        xlabel: what the scores are (e.g. "test split" or "pooled out-of-fold").

    Returns:
        The Figure. Its axes hold one bar container per metric, in ``metrics`` order: ``ax.containers[2k]``
        (bars; NaN scores as zero-width bars) and ``ax.containers[2k + 1]`` (its whiskers).
    """
    metrics = list(metrics)
    for metric in metrics:
        if metric not in SCORE_METRICS:
            raise unknown_name_error("metric", metric, SCORE_METRICS)
    columns = ["label"] + [f"{m}{s}" for m in metrics for s in ("", " low", " high")]
    frame = _require(rows, columns, "plot_score_bars")
    n, height = len(frame), 0.8 / len(metrics)
    y = np.arange(n, dtype=float)[::-1]
    fig = Figure(figsize=(8.5, 0.28 * n * len(metrics) + 1.6))
    ax = fig.add_subplot()
    for k, metric in enumerate(metrics):
        values = frame[metric].to_numpy(dtype=float)
        positions = y + 0.4 - height * (k + 0.5)
        ax.barh(positions, np.nan_to_num(values, nan=0.0), height=height * 0.9, color=f"C{k}",
                label=SCORE_METRICS[metric])
        ax.errorbar(np.nan_to_num(values, nan=0.0), positions,
                    xerr=_whiskers(values, frame[f"{metric} low"], frame[f"{metric} high"]), fmt="none",
                    ecolor="black", capsize=2, linewidth=1)
        for value, position in zip(values, positions):
            ax.annotate("n/a" if math.isnan(value) else f"{value:.3f}", (0.0, position), textcoords="offset points",
                        xytext=(3, 0), va="center", ha="left", fontsize=7,
                        color="black" if math.isnan(value) else "white")
    ax.set_yticks(y, frame["label"], fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(f"{xlabel} (95% interval; n/a: not recorded)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06 - 0.6 / (n * len(metrics) + 4)), ncol=len(metrics),
              fontsize=8, frameon=False)
    ax.set_title(title or "macro-F1 and AUC per row", fontsize=10)
    fig.tight_layout()
    return fig


def plot_stages(image, stages, size: int = 128, columns: int = 5, title: str | None = None) -> Figure:
    """One slice through each named preprocessing stage, side by side (grey levels as the model sees them).

    A stage that returns several samples (``halves``) gets one panel per sample; a three-channel stage is
    shown in colour, a two-channel one (``masked-pair``) by its first channel (the image; the second is
    the lung mask).

    Args:
        image: a ``covidct.data.io.CTImage`` (HU or display grey levels).
        stages: registered stage names (``covidct.preprocess.STAGES``), in panel order.
        size: the stages' output side in pixels.
        columns: panels per row.
        title: figure title.

    Returns:
        The Figure; panel k (``fig.axes[k]``) shows its sample as ``fig.axes[k].images[0]``.
    """
    panels = []
    for name in stages:
        outputs = get_stage(name)(image, size)
        for output in outputs:
            pixels = output.image
            if pixels.shape[-1] == 1 or pixels.shape[-1] == 2:
                pixels = pixels[..., 0]
            panels.append((f"{name} ({output.suffix})" if output.suffix else name, pixels))
    if not panels:
        raise CovidctError("plot_stages: no stage named; pass names from covidct.preprocess.STAGES.")
    columns = max(1, min(len(panels), columns))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(1.9 * columns, 2.05 * rows + 0.4))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, pixels) in zip(axes, panels):
        if pixels.ndim == 2:
            ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(pixels)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.axis("off")
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    fig.suptitle(title or f"preprocessing stages at {size} px", fontsize=10)
    fig.tight_layout()
    return fig
