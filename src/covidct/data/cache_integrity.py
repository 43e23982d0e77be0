"""Checks that a cache can be trusted: its metadata, the sizes of its arrays, and its input files.

A cache (``covidct.data.cache``, ``covidct.data.volumes``) is reused only when

- ``meta.json`` reads as covidct cache metadata (an empty or cut file is reported, never trusted);
- every array file has exactly the byte size ``meta.json`` implies (a truncated ``images.u8`` is found
  before a memmap maps zeros or fails later), and ``manifest.csv`` has ``meta.json``'s row count;
- every input file (images and masks) still has the size and modification time (ns) recorded in the
  cache's ``inputs.csv`` when it was built (``input_stats``; ``meta.json`` holds its digest).

Each check returns what is wrong in words, naming the file, or "" when nothing is.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd

from covidct.errors import CovidctError


def default_cache_root() -> Path:
    """``$COVIDCT_CACHE`` or ``.cache/covidct``."""
    return Path(os.environ.get("COVIDCT_CACHE", ".cache/covidct"))


REBUILD_HINT = "rebuild it with `covidct preprocess ... --rebuild` (or build_cache(..., rebuild=True))"


def read_cache_meta(path: Path, required=("key", "count", "size", "channels")) -> tuple[dict, str]:
    """``(meta, problem)`` of a cache folder: problem is "" for a readable ``meta.json`` with ``required`` keys."""
    meta_file = Path(path) / "meta.json"
    if not meta_file.is_file():
        return {}, f"{path}: not a finished covidct cache (no meta.json)"
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as error:
        return {}, f"{meta_file}: empty or corrupt ({error.__class__.__name__}: {error})"
    missing = [key for key in required if not isinstance(meta, dict) or key not in meta]
    if missing:
        return {}, f"{meta_file}: not covidct cache metadata (missing {', '.join(missing)})"
    return meta, ""


def slice_arrays(meta: dict) -> dict[str, int]:
    """Expected byte size of each array file of a slice cache, from its ``meta.json``."""
    count, size, channels = int(meta["count"]), int(meta["size"]), int(meta["channels"])
    sizes = {"images.u8": count * size * size * channels, "masks.u8": count * size * size}
    if meta.get("has_targets"):
        sizes["targets.u8"] = count * size * size
    return sizes


def array_problem(path: Path, sizes: dict[str, int]) -> str:
    """"" when every array file has the size ``meta.json`` implies, else what is wrong (named)."""
    for name, expected in sizes.items():
        file = Path(path) / name
        actual = file.stat().st_size if file.is_file() else None
        if actual is None:
            return f"{file}: missing (meta.json lists it)"
        if actual != expected:
            return (f"{file}: {actual} bytes, but meta.json says {expected} "
                    f"({'truncated' if actual < expected else 'longer than written'})")
    return ""


def read_cache_tables(path: Path, count: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cache's ``manifest.csv`` (``count`` rows, checked) and ``failed.csv``."""
    manifest_file, failed_file = Path(path) / "manifest.csv", Path(path) / "failed.csv"
    try:
        manifest = pd.read_csv(manifest_file, keep_default_na=False, dtype={"group": str, "label": str})
    except (OSError, ValueError) as error:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise CovidctError(f"{manifest_file}: unreadable ({error}); {REBUILD_HINT}.") from None
    if len(manifest) != count:
        raise CovidctError(f"{manifest_file}: {len(manifest)} rows, but meta.json says {count}; {REBUILD_HINT}.")
    try:
        failed = (pd.read_csv(failed_file, keep_default_na=False) if failed_file.is_file() and failed_file.stat().st_size
                  else pd.DataFrame(columns=["path", "error"]))
    except (OSError, ValueError) as error:
        raise CovidctError(f"{failed_file}: unreadable ({error}); {REBUILD_HINT}.") from None
    return manifest, failed


def input_stats(manifest: pd.DataFrame) -> pd.DataFrame:
    """Size and modification time (ns) of every file a manifest reads (``path`` and ``mask_path``).

    Returns:
        DataFrame ``file, size, mtime_ns`` sorted by file; a missing file has size and mtime -1.
    """
    files = set(manifest["path"].astype(str))
    if "mask_path" in manifest:
        files |= {p for p in manifest["mask_path"].astype(str) if p and p != "nan"}
    rows = []
    for file in sorted(files):
        try:
            stat = os.stat(file)
            rows.append((file, int(stat.st_size), int(stat.st_mtime_ns)))
        except OSError:
            rows.append((file, -1, -1))
    return pd.DataFrame(rows, columns=["file", "size", "mtime_ns"])


def stats_digest(stats: pd.DataFrame) -> str:
    """SHA-256 of an ``input_stats`` table."""
    return hashlib.sha256(stats.to_csv(index=False).encode()).hexdigest()


def changed_inputs(folder: Path, stats: pd.DataFrame, digest: str, meta: dict) -> str:
    """"" when the files a cache was built from are unchanged, else which changed (up to 3 named)."""
    if meta.get("inputs_digest") == digest:
        return ""
    recorded_file = Path(folder) / "inputs.csv"
    if "inputs_digest" not in meta:
        return f"{folder} records no sizes and modification times of its input files (built by an older covidct)"
    try:
        recorded = pd.read_csv(recorded_file, keep_default_na=False, dtype={"file": str})
        before = {row.file: (row.size, row.mtime_ns) for row in recorded.itertuples()}
    except (OSError, ValueError):
        return f"{recorded_file}: missing or unreadable"
    now = {row.file: (row.size, row.mtime_ns) for row in stats.itertuples()}
    changed = []
    for file, (size, mtime) in now.items():
        if file not in before:
            changed.append(f"{file} (new)")
        elif size < 0:
            changed.append(f"{file} (missing now)")
        elif before[file] != (size, mtime):
            old_size, _ = before[file]
            changed.append(f"{file} ({'size ' + str(old_size) + ' -> ' + str(size) if old_size != size else 'modified'})")
    count = len(changed)
    if not count:
        return f"{recorded_file} does not match meta.json"
    return f"{count} input file(s) changed since it was built: {'; '.join(changed[:3])}{' ...' if count > 3 else ''}"
