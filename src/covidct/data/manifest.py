"""The Manifest: one pandas DataFrame row per image (or volume) flowing through covidct.

Required columns: ``path, label, group, split, source``. Optional: ``mask_path`` (a mask file for the
same image), ``slice_index`` (row of a volume file; -1 or missing for 2D files).
``group`` is the patient, or the best available proxy: every split and every confidence interval is
computed over groups, never over slices. ``split`` is one of ``train``, ``val``, ``test`` or ``""``
(not yet assigned).
"""

from __future__ import annotations

import pandas as pd

from covidct.errors import CovidctError

REQUIRED_COLUMNS = ("path", "label", "group", "split", "source")
OPTIONAL_COLUMNS = ("mask_path", "slice_index")
SPLITS = ("train", "val", "test")


def make_manifest(rows: list[dict]) -> pd.DataFrame:
    """Build a Manifest from row dicts, filling optional columns and checking it."""
    frame = pd.DataFrame(rows)
    for column in REQUIRED_COLUMNS:
        if column not in frame:
            frame[column] = ""
    if "mask_path" not in frame:
        frame["mask_path"] = ""
    if "slice_index" not in frame:
        frame["slice_index"] = -1
    frame["mask_path"] = frame["mask_path"].fillna("").astype(str)
    frame["slice_index"] = frame["slice_index"].fillna(-1).astype(int)
    frame["split"] = frame["split"].fillna("").astype(str)
    frame["group"] = frame["group"].astype(str)
    frame["label"] = frame["label"].astype(str)
    frame["path"] = frame["path"].astype(str)
    ordered = list(REQUIRED_COLUMNS) + list(OPTIONAL_COLUMNS)
    frame = frame[ordered + [c for c in frame.columns if c not in ordered]]
    validate_manifest(frame)
    return frame.reset_index(drop=True)


def validate_manifest(frame: pd.DataFrame, name: str = "manifest") -> None:
    """Raise ``CovidctError`` when a Manifest lacks columns, rows, or has bad split names."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CovidctError(f"{name}: missing column(s) {missing}; required: {list(REQUIRED_COLUMNS)}.")
    if len(frame) == 0:
        raise CovidctError(f"{name}: no rows (no images were found).")
    bad = sorted(set(frame["split"].astype(str)) - set(SPLITS) - {""})
    if bad:
        raise CovidctError(f"{name}: unknown split name(s) {bad}; use one of {list(SPLITS)}.")
