"""Where each registered dataset is looked for, and whether it is there (``covidct data``).

The data root is ``$COVIDCT_DATA_ROOT``, else ``./data`` of the working folder (``covidct.data.datasets.data_root``);
a dataset is found in the first of its candidate folders that exists (``dataset_candidates``). This module
reports that search without loading anything, so a user can see why a notebook fell back to phantoms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from covidct.data.datasets import DATASETS, data_root, dataset_candidates

#: Registered datasets that are not looked for in the data root: synthetic ones and the generic folder loader.
SYNTHETIC = ("phantom", "phantom-volumes")
ANY_FOLDER = ("folder",)


@dataclass(frozen=True)
class DatasetLocation:
    """One registered dataset and the result of looking for it.

    Attributes:
        name: the registered dataset.
        kind: ``"real"`` (looked for under the data root), ``"synthetic"`` (generated on first use) or
            ``"folder"`` (any class/ tree, given with ``--root``).
        candidates: the folders searched, in order (empty unless ``kind`` is ``"real"``).
        found: the first candidate that exists, or None.
    """

    name: str
    kind: str
    candidates: tuple = ()
    found: Path | None = None

    @property
    def present(self) -> bool:
        return self.found is not None


def data_root_source(root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The data root in use and how it was chosen.

    Args:
        root: a folder given explicitly (``covidct data --root``); None: the default.

    Returns:
        ``(folder, reason)``, the reason being ``"--root"``, ``"$COVIDCT_DATA_ROOT"`` or ``"the default, ./data: ..."``.
    """
    if root is not None:
        return Path(root), "--root"
    if os.environ.get("COVIDCT_DATA_ROOT"):
        return data_root(), "$COVIDCT_DATA_ROOT"
    return data_root(), "the default, ./data: COVIDCT_DATA_ROOT is not set"


def locate_datasets(root: str | os.PathLike | None = None) -> list[DatasetLocation]:
    """Look for every registered dataset, in name order.

    Args:
        root: the folder holding the datasets; default: the data root (:func:`data_root_source`).

    Returns:
        One DatasetLocation per registered dataset.
    """
    located = []
    for name in sorted(DATASETS):
        if name in SYNTHETIC:
            located.append(DatasetLocation(name, "synthetic"))
        elif name in ANY_FOLDER:
            located.append(DatasetLocation(name, "folder"))
        else:
            candidates = tuple(dataset_candidates(name, root))
            found = next((c for c in candidates if c.is_dir()), None)
            located.append(DatasetLocation(name, "real", candidates, found))
    return located


def format_locations(root: str | os.PathLike | None = None) -> str:
    """The text ``covidct data`` prints: the data root, then one line per dataset (present or missing)."""
    folder, reason = data_root_source(root)
    lines = [f"Data root: {folder} ({reason}; resolved: {folder.resolve()})", ""]
    width = max(len(name) for name in DATASETS)
    located = locate_datasets(root)
    for location in located:
        if location.kind == "synthetic":
            lines.append(f"{location.name:<{width}}  synthetic  generated on first use, no download needed")
        elif location.kind == "folder":
            lines.append(f"{location.name:<{width}}  any tree   a class/ or split/class/ folder given with --root")
        elif location.present:
            lines.append(f"{location.name:<{width}}  present    {location.found}")
        else:
            looked = ", ".join(str(c) for c in location.candidates)
            lines.append(f"{location.name:<{width}}  missing    looked in {looked}")
    present = sum(location.present for location in located)
    lines += ["", f"{present} real dataset(s) present. Set COVIDCT_DATA_ROOT (or --root) to the folder that holds "
              "them; data/README.md says how to get each one."]
    return "\n".join(lines)
