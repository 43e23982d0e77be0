"""Image fingerprints and the near-duplicate merge of patient-proxy groups.

A fingerprint of every row (``compute_fingerprints``) holds the nuisance features of the shortcut
probe (``covidct.data.audit``) and a 256-bit perceptual hash (``imagehash.phash`` with ``hash_size=16``
of the 8-bit display image); fingerprints are cached by the files' size and modification time.
``merge_near_duplicate_groups`` joins groups linked by near-duplicate images of one label (pHash within
``GROUP_MERGE_HAMMING`` bits): datasets without patient ids (``sars-cov-2-ct``) use it so that adjacent
slices of one patient do not land in two splits.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.data.cache_integrity import default_cache_root
from covidct.data.io import ImageLoader
from covidct.data.windows import to_display
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
