"""The dataset registry and the helpers every loader uses (file listing, class folders, splits).

``register_dataset`` records a loader ``loader(root, **options) -> Manifest`` under a name;
``covidct.data.datasets`` holds the loaders of the classification datasets and ``load_dataset``,
``covidct.data.mask_datasets`` those of the datasets with a mask per image.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from covidct.data.io import IMAGE_SUFFIXES
from covidct.data.manifest import make_manifest
from covidct.data.options import check_options
from covidct.errors import CovidctError, did_you_mean, unknown_name_error

PROJECT_CLASSES = ("COV", "Normal", "OtherPneumonia", "NonCOV")
BINARY_MAP = {"COV": "COV", "Normal": "NonCOV", "OtherPneumonia": "NonCOV", "NonCOV": "NonCOV"}
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader, what it holds, and where to look for it."""

    name: str
    loader: Callable
    description: str
    folders: tuple = ()
    classes: tuple = ()
    label_map: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, description: str, folders: tuple = (), label_map: dict | None = None,
                     choices: dict | None = None):
    """Decorator registering ``loader(root, **options) -> Manifest`` as dataset ``name``.

    ``choices`` maps an option to its allowed values (checked by ``check_dataset_options``, e.g. before a
    run folder is made); the other options are checked by name against the loader's signature and by type
    against their defaults.
    """

    def decorator(loader: Callable) -> Callable:
        if name in DATASETS:
            raise CovidctError(f"A dataset named {name!r} is already registered.")
        label_map_ = dict(label_map or {})
        classes = tuple(dict.fromkeys(label_map_.values()))
        DATASETS[name] = DatasetSpec(name, loader, description, tuple(folders), classes, label_map_,
                                     dict(choices or {}))
        return loader

    return decorator


def dataset_options(name: str) -> dict:
    """The options of dataset ``name``'s loader with their defaults (``root`` excluded), from its signature."""
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, DATASETS)
    parameters = inspect.signature(DATASETS[name].loader).parameters
    options = {key: p.default for key, p in parameters.items()
               if key != "root" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    # Options that load_dataset itself applies to any loader's manifest.
    return {**options, **GENERIC_OPTIONS}


#: Options of ``load_dataset`` that apply to every dataset (not passed to its loader).
GENERIC_OPTIONS = {"groups_per_class": None}


def check_dataset_options(name: str, options: dict | None, where: str = "data.options") -> dict:
    """Check loader options of dataset ``name`` by name (its signature), value (its choices) and type.

    Raises:
        CovidctError: unknown dataset, unknown option (did-you-mean) or a bad value.
    """
    known = dataset_options(name)
    return check_options(dict(options or {}), known, DATASETS[name].choices, f"dataset {name!r}", where)


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(DATASETS)


# ----------------------------------------------------------------------------------------------- helpers
def natural_key(text: str) -> list:
    """Sort key that orders 'Covid (2)' before 'Covid (10)'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text))]


def is_image_file(path: Path) -> bool:
    """True for files whose suffix covidct reads (hidden files excluded)."""
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` in natural order."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in files if is_image_file(p)), key=lambda p: natural_key(str(p.relative_to(folder))))


def subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder`` in natural order."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))),
                  key=lambda p: natural_key(p.name))


def map_class_folder(folder: Path, label_map: dict, dataset: str) -> str:
    """Map a class folder name to a project class, or raise with the closest known folder names."""
    if folder.name in label_map:
        return label_map[folder.name]
    lowered = {key.lower(): value for key, value in label_map.items()}
    if folder.name.lower() in lowered:
        return lowered[folder.name.lower()]
    raise CovidctError(
        f"{folder}: unknown class folder {folder.name!r} for dataset {dataset!r}."
        f"{did_you_mean(folder.name, label_map)} Known class folders: {', '.join(label_map)}. Rename or remove "
        "the folder (or load it with dataset 'folder' and a label_map)."
    )


def nonempty_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files of a class folder; an empty class folder is an error."""
    files = image_files(folder, recursive)
    if not files:
        raise CovidctError(
            f"{folder}: class folder {folder.name!r} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
            "add images or remove the folder."
        )
    return files


def split_of(name: str) -> str | None:
    """Canonical split name for a folder name (``Train`` -> ``train``), or None."""
    return SPLIT_ALIASES.get(name.lower())


def to_binary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Relabel a manifest to COV / NonCOV (Normal and OtherPneumonia become NonCOV)."""
    unknown = sorted(set(manifest["label"]) - set(BINARY_MAP))
    if unknown:
        raise CovidctError(f"to_binary: labels {unknown} have no binary mapping; known: {sorted(BINARY_MAP)}.")
    out = manifest.copy()
    out["label"] = out["label"].map(BINARY_MAP)
    return out


def _finish(rows: list[dict], source: str, proxy: str) -> pd.DataFrame:
    for row in rows:
        row.setdefault("source", source)
        row.setdefault("group_proxy", proxy)
    return make_manifest(rows)
