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

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.data.cache import default_cache_root
from covidct.errors import CovidctError

logger = logging.getLogger(__name__)

NEAR_DUP_HAMMING = 16
# Adjacent slices of one patient link at a looser threshold; on SARS-CoV-2 CT-scan 32 of 256 bits still
# links no images of different classes. Used to merge patient-proxy groups, not to report duplicates.
GROUP_MERGE_HAMMING = 32
PHASH_SIZE = 16  # 16 x 16 = 256-bit hashes
FINGERPRINT_VERSION = "3"
FORMATS = ("png", "jpeg", "bmp", "tiff", "dicom", "nifti", "npy")
NUMERIC_FEATURES = (
    "width",
    "height",
    "bit_depth",
    "mean",
    "std",
    "black_fraction",
    "border_mean",
    "laplacian_var",
    "jpeg_blockiness",
)


# ------------------------------------------------------------------------------------------ fingerprints
def jpeg_blockiness(image_u8: np.ndarray) -> float:
    """Mean jump across 8-pixel block borders over the mean jump elsewhere, each + 1 grey level (1 = no blocks)."""
    image = image_u8.astype(np.int16)
    if min(image.shape) < 17:
        return 1.0
    dx = np.abs(np.diff(image, axis=1))
    dy = np.abs(np.diff(image, axis=0))
    across_x = dx[:, 7::8]
    across_y = dy[7::8, :]
    inside_x = (dx.sum(dtype=np.int64) - across_x.sum(dtype=np.int64)) / (dx.size - across_x.size)
    inside_y = (dy.sum(dtype=np.int64) - across_y.sum(dtype=np.int64)) / (dy.size - across_y.size)
    across = across_x.mean() + across_y.mean()
    return float((across + 1.0) / (inside_x + inside_y + 1.0))


def image_features(display_u8: np.ndarray) -> dict:
    """Nuisance features of an 8-bit display image (no anatomy, no label)."""
    import cv2

    height, width = display_u8.shape
    band = max(1, int(round(0.05 * min(height, width))))
    border_sum = (
        float(display_u8[:band].sum(dtype=np.int64)) + float(display_u8[-band:].sum(dtype=np.int64))
        + float(display_u8[:, :band].sum(dtype=np.int64)) + float(display_u8[:, -band:].sum(dtype=np.int64))
    )
    mean, std = cv2.meanStdDev(display_u8)
    _, laplacian_std = cv2.meanStdDev(cv2.Laplacian(display_u8, cv2.CV_32F))
    return {
        "width": width,
        "height": height,
        "mean": float(mean[0, 0]),
        "std": float(std[0, 0]),
        "black_fraction": float(np.count_nonzero(display_u8 < 10)) / display_u8.size,
        "border_mean": border_sum / (2 * band * width + 2 * band * height),
        "laplacian_var": float(laplacian_std[0, 0]) ** 2,
        "jpeg_blockiness": jpeg_blockiness(display_u8),
    }


def perceptual_hash(display_u8: np.ndarray) -> str:
    """256-bit pHash (hex) of an 8-bit image: ``imagehash.phash(hash_size=16)`` after an area resize.

    The image is first reduced to the 64 x 64 grid pHash works on with OpenCV's area interpolation,
    which is several times faster than PIL's Lanczos on full slices and gives the same hashes up to
    a few bits.
    """
    import cv2
    import imagehash
    from PIL import Image

    side = 4 * PHASH_SIZE
    small = cv2.resize(display_u8, (side, side), interpolation=cv2.INTER_AREA)
    return str(imagehash.phash(Image.fromarray(small), hash_size=PHASH_SIZE))


def _fingerprint_chunk(items: list[tuple[str, int]]) -> list[dict]:
    """Fingerprint (path, slice_index) items; errors are recorded, never raised."""
    from covidct.data.io import ImageLoader
    from covidct.data.windows import to_display

    loader = ImageLoader()
    out = []
    for path, slice_index in items:
        record = {"path": path, "slice_index": slice_index, "error": ""}
        try:
            image = loader.load(path, slice_index)
            if image.array.ndim != 2:
                raise CovidctError(f"{path}: a volume row needs a slice_index to be audited.")
            display = to_display(image, "lung")
            if slice_index is None or slice_index < 0:
                record["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                record["sha256"] = hashlib.sha256(image.array.tobytes()).hexdigest()
            record["phash"] = perceptual_hash(display)
            record["format"] = image.meta.get("format", "")
            record["bit_depth"] = int(image.meta.get("bit_depth", 8))
            record.update(image_features(display))
        except Exception as error:  # a corrupt file must not stop the audit
            record["error"] = str(error) if isinstance(error, CovidctError) else f"{path}: {error!r}"
        out.append(record)
    return out


def _stat_key(items: list[tuple[str, int]]) -> str:
    digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
    for path, slice_index in items:
        try:
            stat = os.stat(path)
            digest.update(f"{path}|{slice_index}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|{slice_index}|missing\n".encode())
    return digest.hexdigest()[:20]


def compute_fingerprints(
    manifest: pd.DataFrame,
    cache_root: str | Path | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Content hash, perceptual hash and nuisance features for every row of a manifest.

    Results are cached in ``<cache_root>/fingerprints/<key>.csv`` keyed by the paths, slice indices,
    sizes and modification times, so repeated audits and loaders reuse them.

    Args:
        manifest: rows with ``path`` (and optionally ``slice_index``).
        cache_root: cache folder (default ``$COVIDCT_CACHE`` or ``.cache/covidct``); ``False`` disables.
        workers: processes (default: all cores).
        progress: show a tqdm bar.

    Returns:
        DataFrame aligned with ``manifest`` rows: ``sha256, phash, format, bit_depth`` + features +
        ``error`` (non-empty for unreadable files).
    """
    slice_indices = manifest["slice_index"] if "slice_index" in manifest else pd.Series(-1, index=manifest.index)
    items = [(str(p), int(s)) for p, s in zip(manifest["path"], slice_indices)]
    unique = sorted(set(items))
    cache_file = None
    if cache_root is not False:
        cache_file = Path(cache_root or default_cache_root()) / "fingerprints" / f"{_stat_key(unique)}.csv"
        if cache_file.is_file():
            table = pd.read_csv(cache_file, keep_default_na=False, dtype={"phash": str, "sha256": str})
            return _align(table, items)
    workers = workers or os.cpu_count() or 1
    chunk = max(16, min(256, len(unique) // (workers * 4) + 1))
    chunks = [unique[i : i + chunk] for i in range(0, len(unique), chunk)]
    from tqdm.auto import tqdm

    records: list[dict] = []
    bar = tqdm(total=len(unique), desc="fingerprints", unit="img", disable=not progress)
    if workers == 1 or len(chunks) == 1:
        for part in chunks:
            records.extend(_fingerprint_chunk(part))
            bar.update(len(part))
    else:
        with ProcessPoolExecutor(workers, mp_context=_mp_context()) as pool:
            for part, result in zip(chunks, pool.map(_fingerprint_chunk, chunks)):
                records.extend(result)
                bar.update(len(part))
    bar.close()
    table = pd.DataFrame.from_records(records)
    for column in ("sha256", "phash", "format"):
        table[column] = table.get(column, pd.Series("", index=table.index)).fillna("")
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(".tmp")
        table.to_csv(temporary, index=False)
        temporary.replace(cache_file)
    return _align(table, items)


def _align(table: pd.DataFrame, items: list[tuple[str, int]]) -> pd.DataFrame:
    table = table.copy()
    table["path"] = table["path"].astype(str)
    table["slice_index"] = table["slice_index"].astype(int)
    keyed = table.set_index(["path", "slice_index"])
    aligned = keyed.loc[items].reset_index()
    return aligned


def _mp_context():
    import multiprocessing

    # fork keeps stages and loaders registered at run time (tests, notebooks) visible in the workers.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return multiprocessing.get_context(method)


# ------------------------------------------------------------------------------------------- duplicates
def phash_bits(hex_hashes) -> np.ndarray:
    """Perceptual hashes (hex strings of equal length) as an (N, words) uint64 array; '' becomes 0."""
    hex_hashes = [str(h) for h in hex_hashes]
    width = max((len(h) for h in hex_hashes), default=16)
    words = max(1, -(-width // 16))
    out = np.zeros((len(hex_hashes), words), dtype=np.uint64)
    for row, text in enumerate(hex_hashes):
        text = text.rjust(words * 16, "0") if text else "0" * words * 16
        out[row] = [int(text[k * 16 : (k + 1) * 16], 16) for k in range(words)]
    return out


def near_duplicate_pairs(hashes: np.ndarray, hamming: int, block: int | None = None) -> np.ndarray:
    """All pairs (i < j) whose hashes differ in at most ``hamming`` bits.

    Args:
        hashes: (N, words) uint64 array (or (N,) for 64-bit hashes).
        hamming: maximum number of differing bits.
        block: rows compared at once (default: about 32 MB of XORed words at a time).

    Returns:
        int array (P, 3) of (i, j, distance).
    """
    hashes = hashes.reshape(len(hashes), -1)
    found = []
    count = len(hashes)
    block = block or max(16, 4_000_000 // max(1, count * hashes.shape[1]))
    for start in range(0, count, block):
        rows = hashes[start : start + block]
        distance = np.bitwise_count(rows[:, None, :] ^ hashes[None, :, :]).sum(axis=2, dtype=np.int64)
        i, j = np.nonzero(distance <= hamming)
        i = i + start
        keep = j > i
        found.append(np.stack([i[keep], j[keep], distance[i[keep] - start, j[keep]]], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 3), np.int64)


def _union_find(count: int, pairs) -> np.ndarray:
    parent = np.arange(count)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(count)])


def merge_near_duplicate_groups(
    manifest: pd.DataFrame, hamming: int = GROUP_MERGE_HAMMING, cache_root: str | Path | None = None
) -> pd.DataFrame:
    """Merge groups linked by near-duplicate images of the same label (pHash within ``hamming`` bits).

    Args:
        manifest: a Manifest whose groups are a first proxy (e.g. file-number blocks).
        hamming: near-duplicate threshold in bits.
        cache_root: fingerprint cache folder.

    Returns:
        A copy with merged groups named ``<first group>+<k>`` (k other groups merged into it).
    """
    prints = compute_fingerprints(manifest, cache_root=cache_root)
    pairs = near_duplicate_pairs(phash_bits(prints["phash"]), hamming)
    labels = manifest["label"].to_numpy()
    group_names = sorted(set(manifest["group"]))
    index = {g: k for k, g in enumerate(group_names)}
    group_ids = manifest["group"].map(index).to_numpy()
    links = [(group_ids[i], group_ids[j]) for i, j, _ in pairs if labels[i] == labels[j] and prints["error"][i] == ""
             and prints["error"][j] == ""]
    roots = _union_find(len(group_names), links)
    members: dict[int, list[str]] = {}
    for k, root in enumerate(roots):
        members.setdefault(int(root), []).append(group_names[k])
    rename = {}
    for names in members.values():
        merged = names[0] if len(names) == 1 else f"{names[0]}+{len(names) - 1}"
        rename.update({name: merged for name in names})
    out = manifest.copy()
    out["group"] = out["group"].map(rename)
    return out


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
    from covidct.data.datasets import natural_key

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
    from covidct.data.datasets import load_dataset
    from covidct.data.splits import assign_splits

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
    from covidct.data.io import ImageLoader
    from covidct.data.windows import to_display

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
