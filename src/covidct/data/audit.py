"""Leakage audit: duplicates, near-duplicates, group overlap across splits and a shortcut probe.

Run it before training (``covidct audit DATASET``). It reports:

- **Exact duplicates**: rows whose content is byte-identical (SHA-256 of the file; of the decoded
  slice for rows that are slices of a volume), within and across classes and splits.
- **Near-duplicates**: pairs whose 256-bit perceptual hash (``imagehash.phash`` with
  ``hash_size=16`` of the 8-bit display image) differs in at most ``NEAR_DUP_HAMMING`` = 16 bits
  (6 % of the bits). Why 256 bits and 16: the usual 64-bit pHash is too coarse for CT lung crops. On
  the SARS-CoV-2 CT-scan set (2,481 slices) 64-bit pHash already pairs 23 images of *different*
  classes at 2 bits and chains many patients into one cluster above 4 bits (measured with plain
  baselines), while 256-bit pHash within 16 bits finds 11 pairs, none across classes (the first
  cross-class pair appears at 40 bits): the 2 byte-identical pairs and the 3 near-identical pairs
  named in the dataset's PROVENANCE.md, plus adjacent slices.
- **Group overlap**: groups (patients or their proxy) that appear in more than one split.
- **Shortcut probe**: how well a logistic regression predicts the class from nuisance features only
  (file format, width, height, bit depth, mean and std intensity, fraction of black pixels, border
  brightness, variance of the Laplacian = sharpness, JPEG blockiness), as cross-validated one-vs-rest
  AUC, once with image-level folds and once with folds grouped by ``group``. An AUC far above 0.5 means
  a model can score well without looking at the lungs; headline numbers should be read next to it.

``audit_dataset`` returns an ``AuditReport`` that writes JSON and a readable Markdown report.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.data.datasets import load_dataset, natural_key
from covidct.data.groups import (  # noqa: F401  (re-exported: their old home)
    FORMATS,
    GROUP_MERGE_HAMMING,
    NEAR_DUP_HAMMING,
    NUMERIC_FEATURES,
    PHASH_SIZE,
    compute_fingerprints,
    image_features,
    jpeg_blockiness,
    merge_near_duplicate_groups,
    near_duplicate_pairs,
    perceptual_hash,
    phash_bits,
)
from covidct.data.io import ImageLoader
from covidct.data.splits import assign_splits
from covidct.data.windows import to_display
from covidct.errors import CovidctError

logger = logging.getLogger(__name__)


# Fingerprints, pHash and the near-duplicate group merge live in covidct.data.groups (datasets use them too).


# ----------------------------------------------------------------------------------------------- probe
def nuisance_matrix(prints: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Feature matrix of the shortcut probe: one-hot format + numeric nuisance features."""
    columns, names = [], []
    for fmt in FORMATS:
        columns.append((prints["format"] == fmt).astype(float).to_numpy())
        names.append(f"format={fmt}")
    for feature in NUMERIC_FEATURES:
        values = pd.to_numeric(prints[feature], errors="coerce").to_numpy(dtype=float)
        if feature == "laplacian_var":
            values = np.log1p(values)
        columns.append(values)
        names.append(feature)
    return np.stack(columns, axis=1), names


def shortcut_probe(
    features: np.ndarray, labels, groups=None, folds: int = 5, seed: int = 0
) -> dict:
    """Cross-validated AUC of a logistic regression predicting the class from nuisance features.

    Args:
        features: (N, F) nuisance features.
        labels: N class names.
        groups: N group names for the grouped cross-validation (skipped when None).
        folds: number of folds (reduced when a class has fewer groups).
        seed: shuffling seed.

    Returns:
        dict with ``auc_cv`` (image-level folds), ``auc_grouped_cv`` (folds by group, or None),
        ``folds`` and ``model``. AUC is one-vs-rest macro for more than two classes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    result = {"model": "StandardScaler + LogisticRegression(max_iter=2000)", "classes": classes.tolist(),
              "auc_cv": None, "auc_grouped_cv": None, "folds": None, "grouped_folds": None}
    if len(classes) < 2:
        result["note"] = "one class only: no probe"
        return result
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    features = np.nan_to_num(features.astype(float))

    def auc(proba: np.ndarray) -> float:
        from sklearn.metrics import roc_auc_score

        if len(classes) == 2:
            return float(roc_auc_score(labels == classes[1], proba[:, 1]))
        return float(roc_auc_score(labels, proba, multi_class="ovr", average="macro", labels=classes))

    k = int(min(folds, counts.min()))
    if k >= 2:
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
        result["auc_cv"] = auc(cross_val_predict(model, features, labels, cv=splitter, method="predict_proba"))
        result["folds"] = k
    if groups is not None:
        groups = np.asarray(groups)
        per_class = min(len(set(groups[labels == c])) for c in classes)
        k = int(min(folds, per_class))
        if k >= 2:
            splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
            proba = cross_val_predict(model, features, labels, groups=groups, cv=splitter, method="predict_proba")
            result["auc_grouped_cv"] = auc(proba)
            result["grouped_folds"] = k
    return result


# ---------------------------------------------------------------------------------------------- report
@dataclass
class AuditReport:
    """The audit's findings (``data``, JSON-ready) with writers for JSON and Markdown."""

    data: dict

    @property
    def leakage(self) -> bool:
        """True when duplicates or groups cross splits, or duplicates cross classes."""
        return bool(self.data["problems"])

    @property
    def unreadable(self) -> int:
        """Number of rows whose file could not be read (not checked for duplicates: the audit is incomplete)."""
        return len(self.data.get("failed", []))

    @property
    def passed(self) -> bool:
        """The strict verdict: nothing leaks and every file was read (``covidct audit --strict`` exits 0)."""
        return not self.leakage and not self.unreadable

    def to_json(self, path: str | Path) -> Path:
        """Write the report as JSON and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.data, indent=2, default=str))
        return path

    def to_markdown(self, path: str | Path | None = None) -> str:
        """Render a readable report; write it to ``path`` when given."""
        d = self.data
        lines = [f"# Leakage audit: {d['dataset']}", ""]
        lines.append(f"{d['n_rows']} rows, {d['n_groups']} groups ({d['group_proxy']}); splits: {d['split_source']}.")
        lines += ["", "| class | " + " | ".join(d["split_names"]) + " | total |",
                  "|---|" + "---|" * (len(d["split_names"]) + 1)]
        for label, row in d["counts"].items():
            lines.append(f"| {label} | " + " | ".join(str(row.get(s, 0)) for s in d["split_names"]) + f" | {sum(row.values())} |")
        lines += ["", "## Verdict", ""]
        lines += [f"- **{p}**" for p in d["problems"]] or ["- No duplicates or groups cross splits or classes."]
        if d.get("failed"):
            lines.append(f"- **{len(d['failed'])} file(s) could not be read**: they were not checked, so the audit is "
                         "incomplete (see Unreadable files below); fix or remove them.")
        exact = d["exact_duplicates"]
        lines += ["", f"## Exact duplicates (SHA-256): {len(exact)} set(s)", ""]
        for entry in exact[:50]:
            where = ", ".join(f"{Path(p).name} [{lab}/{sp or '-'}]" for p, lab, sp in zip(entry["paths"], entry["labels"], entry["splits"]))
            lines.append(f"- {where}")
        near = d["near_duplicates"]
        lines += ["", f"## Near-duplicates (pHash, Hamming <= {near['hamming']} bits): {near['n_pairs']} pair(s), "
                  f"{near['n_cross_split']} across splits, {near['n_cross_class']} across classes", ""]
        for pair in near["pairs"][:50]:
            lines.append(f"- {Path(pair['a']).name} ~ {Path(pair['b']).name}: {pair['distance']} bits "
                         f"[{pair['labels'][0]}/{pair['splits'][0] or '-'} vs {pair['labels'][1]}/{pair['splits'][1] or '-'}]")
        overlap = d["group_overlap"]
        lines += ["", f"## Groups in more than one split: {len(overlap)}", ""]
        lines += [f"- {g['group']}: {', '.join(g['splits'])}" for g in overlap[:50]]
        probe = d["shortcut_probe"]
        lines += ["", "## Shortcut probe (nuisance features only)", "",
                  f"Model: {probe.get('model')}. Features: {', '.join(d['probe_features'])}.", "",
                  f"- cross-validated AUC (image-level folds): {_fmt(probe.get('auc_cv'))}",
                  f"- cross-validated AUC (folds grouped by {d['group_proxy']}): {_fmt(probe.get('auc_grouped_cv'))}",
                  "", "An AUC well above 0.5 means file format, size or intensity statistics alone predict the class:"
                  " read any model's score next to it."]
        if d["failed"]:
            lines += ["", f"## Unreadable files: {len(d['failed'])}", ""]
            lines += [f"- {f['error']}" for f in d["failed"][:50]]
        text = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def audit_dataset(
    manifest: pd.DataFrame,
    dataset: str = "",
    hamming: int = NEAR_DUP_HAMMING,
    probe: bool = True,
    cache_root: str | Path | None = None,
    workers: int | None = None,
    progress: bool = False,
    seed: int = 0,
) -> AuditReport:
    """Audit a manifest for duplicates, near-duplicates, group overlap and nuisance shortcuts.

    Args:
        manifest: a Manifest (splits as assigned; empty splits are treated as one pool).
        dataset: name shown in the report.
        hamming: near-duplicate threshold in bits of the 256-bit pHash (default ``NEAR_DUP_HAMMING`` = 16).
        probe: run the shortcut probe.
        cache_root: fingerprint cache folder.
        workers: processes for fingerprinting.
        progress: show progress bars.
        seed: cross-validation seed of the probe.

    Returns:
        ``AuditReport``; ``report.leakage`` is True when anything crosses splits or classes.
    """
    if len(manifest) == 0:
        raise CovidctError("audit: the manifest has no rows.")
    manifest = manifest.reset_index(drop=True)
    prints = compute_fingerprints(manifest, cache_root=cache_root, workers=workers, progress=progress)
    ok = (prints["error"] == "").to_numpy()
    paths = manifest["path"].astype(str).to_numpy()
    labels = manifest["label"].astype(str).to_numpy()
    splits = manifest["split"].astype(str).to_numpy()
    names = [p if s < 0 else f"{p}#slice{s}" for p, s in zip(paths, manifest.get("slice_index", pd.Series(-1, index=manifest.index)))]
    problems = []

    exact = []
    good = prints[ok]
    for _, rows in good.groupby("sha256").groups.items():
        rows = list(rows)
        if len(rows) > 1:
            entry = {"paths": [names[i] for i in rows], "labels": [labels[i] for i in rows],
                     "splits": [splits[i] for i in rows]}
            entry["cross_class"] = len(set(entry["labels"])) > 1
            entry["cross_split"] = len(set(entry["splits"])) > 1
            exact.append(entry)
    exact.sort(key=lambda e: natural(e["paths"][0]))
    if any(e["cross_split"] for e in exact):
        problems.append(f"{sum(e['cross_split'] for e in exact)} exact-duplicate set(s) cross splits")
    if any(e["cross_class"] for e in exact):
        problems.append(f"{sum(e['cross_class'] for e in exact)} exact-duplicate set(s) carry different labels")

    index_ok = np.flatnonzero(ok)
    hashes = phash_bits(prints["phash"].to_numpy()[index_ok])
    sha = prints["sha256"].to_numpy()
    pairs = []
    for a, b, distance in near_duplicate_pairs(hashes, hamming):
        i, j = int(index_ok[a]), int(index_ok[b])
        if sha[i] == sha[j]:
            continue
        pairs.append({"a": names[i], "b": names[j], "distance": int(distance), "labels": [labels[i], labels[j]],
                      "splits": [splits[i], splits[j]], "cross_class": labels[i] != labels[j],
                      "cross_split": splits[i] != splits[j]})
    pairs.sort(key=lambda p: (p["distance"], natural(p["a"])))
    near = {"hamming": hamming, "n_pairs": len(pairs), "n_cross_split": sum(p["cross_split"] for p in pairs),
            "n_cross_class": sum(p["cross_class"] for p in pairs), "pairs": pairs}
    if near["n_cross_split"]:
        problems.append(f"{near['n_cross_split']} near-duplicate pair(s) cross splits")
    if near["n_cross_class"]:
        problems.append(f"{near['n_cross_class']} near-duplicate pair(s) carry different labels")

    overlap = []
    for group, rows in manifest.groupby("group")["split"]:
        used = sorted(set(rows) - {""})
        if len(used) > 1:
            overlap.append({"group": str(group), "splits": used})
    if overlap:
        problems.append(f"{len(overlap)} group(s) appear in more than one split")

    features, feature_names = nuisance_matrix(prints[ok].reset_index(drop=True))
    probe_result = (shortcut_probe(features, labels[ok], manifest["group"].to_numpy()[ok], seed=seed)
                    if probe else {"note": "skipped"})

    split_names = [s for s in ("train", "val", "test", "") if (splits == s).any()]
    counts = {label: {s: int(((labels == label) & (splits == s)).sum()) for s in split_names} for label in sorted(set(labels))}
    assigned = (splits != "").any()
    proxy = manifest["group_proxy"].iloc[0] if "group_proxy" in manifest and len(set(manifest["group_proxy"])) == 1 else "group"
    data = {
        "dataset": dataset,
        "n_rows": int(len(manifest)),
        "n_groups": int(manifest["group"].nunique()),
        "group_proxy": str(proxy),
        "split_source": str(manifest.attrs.get("split_source", "as given" if assigned else "none (one pool)")),
        "split_names": [s or "(none)" for s in split_names],
        "counts": {k: {(s or "(none)"): v for s, v in row.items()} for k, row in counts.items()},
        "problems": problems,
        "exact_duplicates": exact,
        "near_duplicates": near,
        "group_overlap": overlap,
        "probe_features": feature_names,
        "shortcut_probe": probe_result,
        "failed": [{"path": p, "error": e} for p, e in zip(prints["path"], prints["error"]) if e],
    }
    return AuditReport(data)


def natural(text: str) -> list:
    """Natural sort key (numbers compared as numbers)."""

    return natural_key(text)


def audit_named_dataset(
    dataset: str,
    root: str | Path | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    **options,
) -> tuple[AuditReport, Path, Path]:
    """Load a registered dataset, split it as training would, audit it and write the reports.

    Args:
        dataset: a registered dataset name.
        root: the dataset folder (default places otherwise).
        out_dir: where ``audit_<dataset>.json`` and ``.md`` go (default ``runs/audit``).
        seed: split and probe seed.
        progress: show progress bars.
        **options: loader options.

    Returns:
        (report, json_path, markdown_path).
    """

    manifest = load_dataset(dataset, root=root, **options)
    try:
        manifest = assign_splits(manifest, seed=seed)
    except CovidctError as error:
        # Official splits that put one group in two splits are exactly what the audit reports.
        logger.warning("%s; auditing the splits as given", error)
        manifest.attrs["split_source"] = "official (groups cross splits)"
    report = audit_dataset(manifest, dataset=dataset, progress=progress, seed=seed)
    out_dir = Path(out_dir or Path("runs") / "audit")
    json_path = report.to_json(out_dir / f"audit_{dataset}.json")
    markdown_path = out_dir / f"audit_{dataset}.md"
    report.to_markdown(markdown_path)
    return report, json_path, markdown_path


# --------------------------------------------------------------------------------------------- figures
def plot_counts(manifest: pd.DataFrame):
    """Bar charts: images per class and split, and the distribution of images per group.

    Args:
        manifest: a Manifest.

    Returns:
        matplotlib Figure.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 3.5))
    left, right = figure.subplots(1, 2)
    table = manifest.assign(split=manifest["split"].replace("", "(none)")).pivot_table(
        index="label", columns="split", values="path", aggfunc="count", fill_value=0
    )
    table.plot.bar(ax=left, rot=0)
    left.set_title("images per class and split")
    left.set_ylabel("images")
    for label, rows in manifest.groupby("label"):
        right.hist(rows.groupby("group").size(), bins=20, alpha=0.6, label=f"{label} ({rows['group'].nunique()} groups)")
    right.set_title("images per group")
    right.set_xlabel("images in the group")
    right.legend()
    figure.tight_layout()
    return figure


def _displays(manifest: pd.DataFrame, count: int, seed: int) -> list[tuple[str, np.ndarray]]:

    loader = ImageLoader()
    rows = manifest.sample(min(count, len(manifest)), random_state=seed).sort_values(["path", "slice_index"])
    return [(row.label, to_display(loader.load(row.path, int(row.slice_index)))) for row in rows.itertuples()]


def plot_examples(manifest: pd.DataFrame, per_class: int = 4, seed: int = 0):
    """A grid of random slices, one row per class (HU images in the lung window).

    Args:
        manifest: a Manifest.
        per_class: slices shown per class.
        seed: sampling seed.

    Returns:
        matplotlib Figure.
    """
    from matplotlib.figure import Figure

    labels = sorted(set(manifest["label"]))
    figure = Figure(figsize=(2.2 * per_class, 2.3 * len(labels)))
    axes = figure.subplots(len(labels), per_class, squeeze=False)
    for row, label in enumerate(labels):
        shown = _displays(manifest[manifest["label"] == label], per_class, seed)
        for column in range(per_class):
            axis = axes[row, column]
            axis.axis("off")
            if column < len(shown):
                axis.imshow(shown[column][1], cmap="gray", vmin=0, vmax=255)
                axis.set_title(label if column == 0 else "", loc="left")
    figure.tight_layout()
    return figure


def plot_intensity_histograms(manifest: pd.DataFrame, per_class: int = 50, seed: int = 0):
    """Grey-level histograms per class (display 0-255; HU images through the lung window).

    Different curves for different classes in regions without anatomy (e.g. the background peak)
    hint at acquisition or export differences a model can exploit.

    Args:
        manifest: a Manifest.
        per_class: images sampled per class.
        seed: sampling seed.

    Returns:
        matplotlib Figure.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.5))
    axis = figure.subplots()
    bins = np.arange(257)
    for label in sorted(set(manifest["label"])):
        pixels = [image.ravel() for _, image in _displays(manifest[manifest["label"] == label], per_class, seed)]
        histogram, _ = np.histogram(np.concatenate(pixels), bins=bins, density=True)
        axis.plot(bins[:-1], histogram, label=label)
    axis.set_yscale("log")
    axis.set_xlabel("grey level (lung window for HU data)")
    axis.set_ylabel("density")
    axis.set_title("intensity histograms per class")
    axis.legend()
    figure.tight_layout()
    return figure
