"""What ``covidct predict`` reads: folders of slice images, manifest CSVs and DICOM series folders.

Every source becomes rows of one table (``path``, ``source``), in a fixed order so that shard ``k`` of a
rerun holds the same rows: a folder's image files sorted by path (recursively), a manifest's rows in file
order, a DICOM series folder's files sorted by name (one row per slice file; ``source`` names the series).
Only the list of paths is held in memory (about 100 bytes a row); images are read a batch at a time by
the shard that owns them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from covidct.errors import CovidctError, did_you_mean

#: Slice image files a folder is searched for (NIfTI volumes go to ``covidct predict-volume``).
SLICE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".dcm", ".dicom")


def _folder_rows(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(SLICE_SUFFIXES))


def _manifest_rows(path: Path) -> list[str]:
    frame = pd.read_csv(path)
    if "path" not in frame.columns:

        raise CovidctError(f"{path}: a prediction manifest needs a 'path' column (one image file a row)."
                           f"{did_you_mean('path', [str(c) for c in frame.columns])}")
    paths = [Path(p) for p in frame["path"].astype(str)]
    return [str(p if p.is_absolute() else path.parent / p) for p in paths]


def _series_rows(folder: Path) -> list[str]:
    files = sorted(str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise CovidctError(f"{folder}: the DICOM series folder is empty.")
    return files


def list_inputs(sources=(), manifests=(), dicom_series=()) -> pd.DataFrame:
    """The rows to predict, in a fixed order.

    Args:
        sources: image files or folders (searched recursively for ``SLICE_SUFFIXES``).
        manifests: CSV files with a ``path`` column (relative paths are relative to the CSV's folder).
        dicom_series: DICOM series folders, one row per slice file.

    Returns:
        DataFrame with ``path`` and ``source`` (the folder, manifest or series a row came from).

    Raises:
        CovidctError: a source that does not exist, a manifest without ``path``, or no rows at all.
    """
    parts = []
    for kind, items in (("source", sources), ("manifest", manifests), ("series", dicom_series)):
        for item in items or ():
            path = Path(item)
            if not path.exists():
                raise CovidctError(f"{path}: no such file or folder (given as a {kind} to covidct predict).")
            if kind == "manifest":
                rows = _manifest_rows(path)
            elif kind == "series":
                if not path.is_dir():
                    raise CovidctError(f"{path}: a DICOM series is a folder of slice files, this is a file.")
                rows = _series_rows(path)
            else:
                rows = _folder_rows(path) if path.is_dir() else [str(path)]
            parts.append(pd.DataFrame({"path": rows, "source": str(path)}))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"path": [], "source": []})
    if table.empty:
        raise CovidctError("covidct predict: no images found in the given sources (slice files: "
                           f"{', '.join(SLICE_SUFFIXES)}).")
    return table


def inputs_digest(paths) -> str:
    """SHA-256 of the ordered paths: a rerun with other inputs must not reuse the shards."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(path) + b"\n")
    return digest.hexdigest()


__all__ = ["SLICE_SUFFIXES", "inputs_digest", "list_inputs"]
