"""Dataset registry: each loader turns a folder of a public CT dataset into a Manifest.

``load_dataset(name, root=None, **options)`` returns a Manifest (see ``covidct.data.manifest``): one row
per image (or per slice of a volume, or per volume), with the project's class name in ``label``, the
patient (or the best available proxy for one) in ``group``, the official split where the dataset has
one, the dataset name in ``source`` and, in ``group_proxy``, how ``group`` was obtained.

Project classes: ``COV`` (COVID-19), ``Normal``, ``OtherPneumonia`` and ``NonCOV`` (not COVID-19 but of
unknown kind: binary datasets whose negative class mixes healthy and diseased lungs). Each loader has a
label map from the dataset's folder names to these classes; an unknown class folder stops with the
closest known names. ``to_binary`` maps any manifest to COV / NonCOV for cross-dataset evaluation.

When ``root`` is omitted, the loader looks in ``<data root>/<name>`` and ``<data root>/<folder>`` (the data
root is ``$COVIDCT_DATA_ROOT``, else ``./data``), then in ``data/raw/<name>`` (where ``covidct download``
puts data by default).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from covidct.data import phantom
from covidct.data.groups import GROUP_MERGE_HAMMING, merge_near_duplicate_groups
from covidct.data.io import IMAGE_SUFFIXES, nifti_depth
from covidct.data.manifest import make_manifest
from covidct.data.options import check_options
from covidct.data.splits import sample_groups
from covidct.errors import CovidctError, did_you_mean, unknown_name_error

logger = logging.getLogger(__name__)

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


def load_dataset(
    name: str, root: str | Path | None = None, groups_per_class: int | None = None, **options
) -> pd.DataFrame:
    """Load a registered dataset as a Manifest.

    Args:
        name: a registered dataset (see ``list_datasets()``).
        root: the dataset folder; default: ``data/raw/<name>`` or ``$COVIDCT_DATA_ROOT/<folder>``.
        groups_per_class: keep only this many whole groups (patients) of each class, chosen with seed 0
            (``covidct.data.splits.sample_groups``): a small, still grouped subset for smoke runs
            (``data.options={groups_per_class: 6}`` in a config). None: every row.
        **options: loader options (e.g. ``classes="binary"`` for ``mosmeddata``).

    Returns:
        The Manifest (pandas DataFrame).

    Raises:
        CovidctError: unknown dataset (close matches suggested), missing folder, unknown or empty
            class folders, broken split lists.
    """
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, DATASETS)
    spec = DATASETS[name]
    check_dataset_options(name, options, where=f"load_dataset({name!r}) options")
    if name in ("phantom", "phantom-volumes"):  # synthetic: written on first use, no folder to find
        manifest = spec.loader(root, **options)
    else:
        manifest = spec.loader(resolve_root(name, root), **options)
    if groups_per_class is not None:
        if int(groups_per_class) < 1:
            raise CovidctError(f"groups_per_class must be a positive integer, got {groups_per_class!r}.")
        manifest = sample_groups(manifest, int(groups_per_class), seed=0)
    return manifest


def data_root() -> Path:
    """The folder that holds the datasets: ``$COVIDCT_DATA_ROOT``, else ``./data`` of the working folder.

    Each dataset is looked for in ``<data root>/<name>`` or one of its registered folder names (e.g.
    ``sars-cov-2-ct-scan``), then in ``data/raw/<name>`` where ``covidct download`` puts it by default.
    """
    env = os.environ.get("COVIDCT_DATA_ROOT")
    return Path(env) if env else Path("data")


def dataset_candidates(name: str, root_of_datasets: str | Path | None = None) -> list[Path]:
    """Every folder where dataset ``name`` is looked for, in order.

    Args:
        name: a registered dataset.
        root_of_datasets: the folder that holds the datasets; default :func:`data_root`.
    """
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, DATASETS)
    spec = DATASETS[name]
    base = Path(root_of_datasets) if root_of_datasets is not None else data_root()
    folders = [base / folder for folder in dict.fromkeys((name,) + spec.folders)]
    return folders + [Path("data") / "raw" / name]


@dataclass(frozen=True)
class DataChoice:
    """Which data a notebook or workflow runs on: a real dataset folder, or synthetic phantoms instead.

    Attributes:
        dataset: the registered dataset that will be loaded (``phantom`` when the real one is missing).
        root: its folder (None for phantoms, which are generated on first use).
        requested: the dataset that was asked for.
        looked_in: the folders searched for it.
    """

    dataset: str
    root: Path | None
    requested: str
    looked_in: tuple = ()

    @property
    def is_real(self) -> bool:
        return self.root is not None

    def __str__(self) -> str:
        if self.is_real:
            return f"Data: real dataset {self.dataset!r} from {self.root}"
        places = ", ".join(str(p) for p in self.looked_in)
        return (
            f"Data: synthetic phantoms ({self.dataset!r}), because {self.requested!r} was not found "
            f"(looked in {places}); set DATA_ROOT / COVIDCT_DATA_ROOT to the folder that holds it."
        )


def choose_data(
    dataset: str, root_of_datasets: str | Path | None = None, fallback: str = "phantom"
) -> DataChoice:
    """The real dataset when its folder exists, else the synthetic ``fallback`` (never an error).

    Args:
        dataset: the registered dataset wanted (e.g. ``"sars-cov-2-ct"``); ``"phantom"`` asks for phantoms.
        root_of_datasets: the folder holding the datasets (a notebook's ``DATA_ROOT``); default
            :func:`data_root`.
        fallback: the synthetic dataset used when ``dataset`` is not found.

    Returns:
        A DataChoice whose ``str()`` is the one line a notebook prints first.
    """
    if dataset in ("phantom", "phantom-volumes"):
        return DataChoice(dataset, None, dataset)
    candidates = dataset_candidates(dataset, root_of_datasets)
    for candidate in candidates:
        if candidate.is_dir():
            return DataChoice(dataset, candidate, dataset, tuple(candidates))
    return DataChoice(fallback, None, dataset, tuple(candidates))


def load_choice(data: DataChoice, fast: bool = False, groups_per_class: int | None = None, **phantom_options) -> pd.DataFrame:
    """The manifest of a :func:`choose_data` result: the real dataset from its folder, or the phantoms.

    Args:
        data: the data choice.
        fast: skip a loader's slow optional work (``sars-cov-2-ct``: group by file-number blocks only, without
            merging near-duplicate clusters); for smoke runs.
        groups_per_class: keep this many whole groups per class (see :func:`load_dataset`); None: all.
        **phantom_options: loader options used only when the choice is synthetic (e.g. ``n``, ``size``, ``seed``).

    Returns:
        The Manifest.
    """
    options = dict(phantom_options) if not data.is_real else {}
    if data.is_real and fast and data.dataset == "sars-cov-2-ct":
        options["group_proxy"] = "blocks"
    return load_dataset(data.dataset, root=data.root, groups_per_class=groups_per_class, **options)


def resolve_root(name: str, root: str | Path | None) -> Path:
    """Find the folder of dataset ``name``: ``root`` when given, else the default places."""
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise CovidctError(f"{root}: dataset folder for {name!r} does not exist.")
        return root
    candidates = dataset_candidates(name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise CovidctError(
        f"Dataset {name!r} not found (looked in {tried}). Pass root=... (--root), set COVIDCT_DATA_ROOT, "
        f"or run `covidct download {name} --dest data/raw` where a download exists."
    )


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


# ----------------------------------------------------------------------------------------------- loaders
@register_dataset("phantom", "synthetic CT slices with lungs and lesions (COV / Normal / OtherPneumonia)")
def load_phantom(root: str | Path | None = None, n: int = 120, size: int = 64, seed: int = 0) -> pd.DataFrame:
    """Synthetic phantom slices written once to ``data/phantom/n<n>-s<size>-seed<seed>`` (or ``root``).

    Args:
        root: where to write/read the files; default ``data/phantom/n{n}-s{size}-seed{seed}``.
        n: number of slices.
        size: slice size in pixels.
        seed: random seed.

    Returns:
        Manifest with ``.npy`` HU slices, lung-mask paths and patient groups.
    """
    root = Path(root) if root is not None else Path("data") / "phantom" / f"n{n}-s{size}-seed{seed}"
    manifest_file = root / "manifest.csv"
    if manifest_file.is_file():
        frame = pd.read_csv(manifest_file, keep_default_na=False)
        if all(Path(p).is_file() for p in frame["path"]):
            return make_manifest(frame.to_dict("records"))
    root.mkdir(parents=True, exist_ok=True)
    frame = phantom.write_dataset(root, n=n, size=size, seed=seed).copy()
    frame["path"] = [str(Path(p).resolve()) for p in frame["path"]]
    if "mask_path" in frame:
        frame["mask_path"] = [str(Path(p).resolve()) if p else "" for p in frame["mask_path"].fillna("")]
    frame["source"] = "phantom"
    frame["group_proxy"] = "patient"
    manifest = make_manifest(frame.to_dict("records"))
    manifest.to_csv(manifest_file, index=False)
    return manifest


@register_dataset("phantom-volumes", "synthetic CT volumes with lungs and 3D lesions (COV / Normal / OtherPneumonia)")
def load_phantom_volumes(
    root: str | Path | None = None, n: int = 36, shape: tuple | list = (32, 64, 64), seed: int = 0
) -> pd.DataFrame:
    """Synthetic phantom volumes written once to ``data/phantom-volumes/n<n>-<D>x<H>x<W>-seed<seed>``.

    Volume ``i`` has class ``CLASSES[i % 3]`` (``covidct.data.phantom.write_phantom_volumes``), so the
    classes are balanced; use ``data.label_map`` (``OtherPneumonia: drop``) for COV vs Normal.

    Args:
        root: where to write/read the files; default ``data/phantom-volumes/n{n}-{D}x{H}x{W}-seed{seed}``.
        n: number of volumes (each is its own patient).
        shape: (D, H, W) of each volume in voxels (D >= 4, H and W >= 32).
        seed: random seed.

    Returns:
        Manifest with one row per ``.npy`` HU volume (``slice_index`` -1, group = patient).
    """
    shape = tuple(int(s) for s in shape)
    tag = "x".join(str(s) for s in shape)
    root = Path(root) if root is not None else Path("data") / "phantom-volumes" / f"n{n}-{tag}-seed{seed}"
    manifest_file = root / "manifest.csv"
    if manifest_file.is_file():
        frame = pd.read_csv(manifest_file, keep_default_na=False, dtype={"group": str, "label": str})
        if all(Path(p).is_file() for p in frame["path"]):
            return make_manifest(frame.to_dict("records"))
    frame = phantom.write_phantom_volumes(root, n=n, shape=shape, seed=seed).copy()
    frame["source"] = "phantom-volumes"
    frame["group_proxy"] = "patient"
    manifest = make_manifest(frame.to_dict("records"))
    manifest.to_csv(manifest_file, index=False)
    return manifest


FOLDER_GROUPS = ("subfolder", "image")


@register_dataset("folder", "any class/ or split/class/ tree of images (labels = folder names)",
                  choices={"groups": FOLDER_GROUPS})
def load_folder(
    root: Path, label_map: dict | None = None, source: str = "folder", groups: str = "subfolder"
) -> pd.DataFrame:
    """Any ``class/`` or ``split/class/`` tree.

    Args:
        root: the tree's top folder.
        label_map: folder name -> class; when given, other class folders are an error.
        source: the value of the ``source`` column.
        groups: ``"subfolder"`` (the first folder below the class folder is the group; images directly
            in the class folder are their own group) or ``"image"`` (every image its own group).

    Returns:
        Manifest; ``split`` is set when the top level holds train/val/test folders.
    """
    if groups not in FOLDER_GROUPS:
        raise unknown_name_error("folder group mode", groups, FOLDER_GROUPS)
    root = Path(root)
    top = subfolders(root)
    if not top:
        raise CovidctError(f"{root}: no class folders found (expected {root}/<class>/ or {root}/<split>/<class>/).")
    split_layout = all(split_of(p.name) for p in top)
    pairs = [(split_of(s.name), c) for s in top for c in subfolders(s)] if split_layout else [("", c) for c in top]
    rows = []
    for split, class_folder in pairs:
        label = map_class_folder(class_folder, label_map, source) if label_map else class_folder.name
        for file in nonempty_images(class_folder):
            relative = file.relative_to(class_folder)
            if groups == "subfolder" and len(relative.parts) > 1:
                group = f"{label}/{relative.parts[0]}"
            else:
                group = f"{label}/{relative.with_suffix('')}" if not split else f"{split}/{label}/{relative.with_suffix('')}"
            rows.append({"path": str(file.resolve()), "label": label, "group": group, "split": split})
    proxy = "first sub-folder below the class folder, else the image" if groups == "subfolder" else "image"
    return _finish(rows, source, proxy)


CT_COV19_LABELS = {"COV": "COV", "Normal": "Normal", "OtherPneumonia": "OtherPneumonia"}


@register_dataset("ct-cov19", "CT-COV19 (Train/Val/Test x COV/Normal/OtherPneumonia)", ("ct-cov19", "CT-COV19"),
                  CT_COV19_LABELS)
def load_ct_cov19(root: Path) -> pd.DataFrame:
    """CT-COV19: ``Train|Val|Test/COV|Normal|OtherPneumonia``; official split kept.

    COV images sit in numbered case folders (``COV/01/...``) that are used as groups (``COV-01``).
    Normal and OtherPneumonia have no patient ids: each image is its own group (a weak proxy, stated in
    ``group_proxy``).
    """
    root = Path(root)
    split_folders = [p for p in subfolders(root) if split_of(p.name)]
    if not split_folders:
        raise CovidctError(f"{root}: expected Train/, Val/ and Test/ folders for dataset 'ct-cov19'.")
    rows = []
    for split_folder in split_folders:
        split = split_of(split_folder.name)
        for class_folder in subfolders(split_folder):
            label = map_class_folder(class_folder, CT_COV19_LABELS, "ct-cov19")
            for file in nonempty_images(class_folder):
                relative = file.relative_to(class_folder)
                if label == "COV" and len(relative.parts) > 1:
                    group, proxy = f"COV-{relative.parts[0]}", "COV case folder"
                else:
                    group, proxy = f"{split}/{label}/{relative.with_suffix('')}", "image (no patient ids)"
                rows.append({"path": str(file.resolve()), "label": label, "group": group, "split": split,
                             "group_proxy": proxy})
    return _finish(rows, "ct-cov19", "")


COVID_CT_LABELS = {"CT_COVID": "COV", "CT_NonCOVID": "NonCOV"}


def _covid_ct_patients(root: Path) -> dict[str, str]:
    """File name -> patient id from COVID-CT-MetaInfo.xlsx (all sheets), when the workbook exists."""
    workbooks = list(root.glob("COVID-CT-MetaInfo.xlsx")) + list(root.glob("*/COVID-CT-MetaInfo.xlsx"))
    if not workbooks:
        return {}
    sheets = pd.read_excel(workbooks[0], sheet_name=None)
    patients: dict[str, str] = {}
    for frame in sheets.values():
        normalised = {re.sub(r"[^a-z]", "", str(c).lower()): c for c in frame.columns}
        file_column, patient_column = normalised.get("filename"), normalised.get("patientid")
        if file_column is None or patient_column is None:
            continue
        for file_name, patient in zip(frame[file_column], frame[patient_column]):
            if pd.notna(file_name) and pd.notna(patient):
                patients[str(file_name).strip()] = str(patient).strip()
    return patients


@register_dataset("covid-ct", "UCSD COVID-CT (CT_COVID / CT_NonCOVID, official Data-split lists)", ("covid-ct", "COVID-CT"),
                  COVID_CT_LABELS)
def load_covid_ct(root: Path, official_split: bool = True) -> pd.DataFrame:
    """UCSD-AI4H COVID-CT: ``CT_COVID/``, ``CT_NonCOVID/`` (also under ``Images-processed/``).

    The official patient-disjoint lists ``Data-split/{COVID,NonCOVID}/{train,val,test}CT_{...}.txt`` set
    ``split`` (a listed file that does not exist is an error naming the list and the file). Patient ids
    come from ``COVID-CT-MetaInfo.xlsx`` (columns "File name", "Patient ID") when present; otherwise
    each image is its own group.
    """
    root = Path(root)
    base = root / "Images-processed" if (root / "Images-processed").is_dir() else root
    class_folders = [p for p in subfolders(base) if p.name in COVID_CT_LABELS or p.name.lower().startswith("ct_")]
    if not class_folders:
        raise CovidctError(f"{root}: expected CT_COVID/ and CT_NonCOVID/ folders for dataset 'covid-ct'.")
    patients = _covid_ct_patients(root)
    rows, by_name = [], {}
    for class_folder in class_folders:
        label = map_class_folder(class_folder, COVID_CT_LABELS, "covid-ct")
        for file in nonempty_images(class_folder):
            patient = patients.get(file.name)
            group = f"{label}/{patient}" if patient else f"{label}/{file.stem}"
            row = {"path": str(file.resolve()), "label": label, "group": group, "split": "",
                   "group_proxy": "patient id (MetaInfo)" if patient else "image (no patient id)"}
            rows.append(row)
            by_name[(class_folder.name, file.name)] = row
    split_root = root / "Data-split"
    if official_split and split_root.is_dir():
        for kind, class_name in (("COVID", "CT_COVID"), ("NonCOVID", "CT_NonCOVID")):
            for split in ("train", "val", "test"):
                listing = split_root / kind / f"{split}{class_name}.txt"
                if not listing.is_file():
                    raise CovidctError(f"{listing}: official split list is missing; restore it or pass official_split=False.")
                names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
                known = [n for (c, n) in by_name if c == class_name]
                for name in names:
                    row = by_name.get((class_name, name))
                    if row is None:
                        raise CovidctError(
                            f"{listing}: lists {name!r}, which is not in {base / class_name}.{did_you_mean(name, known)}"
                        )
                    row["split"] = split
        unlisted = sum(1 for row in rows if not row["split"])
        if unlisted:
            warnings.warn(f"{root}: {unlisted} image(s) are in no official split list (split left empty).", stacklevel=2)
    return _finish(rows, "covid-ct", "")


SARS_LABELS = {"COVID": "COV", "non-COVID": "NonCOV"}
SARS_BLOCK = 20


SARS_GROUP_PROXIES = ("blocks+phash", "blocks", "image")


@register_dataset("sars-cov-2-ct", "SARS-CoV-2 CT-scan (COVID / non-COVID PNG slices, no patient ids)",
                  ("sars-cov-2-ct-scan",), SARS_LABELS, choices={"group_proxy": SARS_GROUP_PROXIES})
def load_sars_cov_2_ct(
    root: Path,
    group_proxy: str = "blocks+phash",
    block: int = SARS_BLOCK,
    hamming: int | None = None,
    cache_root: str | Path | None = None,
) -> pd.DataFrame:
    """SARS-CoV-2 CT-scan (Soares et al. 2020): ``COVID/``, ``non-COVID/``, no patient ids.

    Groups are a patient proxy: file numbers follow patient and slice
    order, so blocks of ``block`` consecutive file numbers approximate patients (20 gives ~63 + 62
    groups, close to the ~60 + 60 patients of the paper); near-duplicate clusters (perceptual hash
    within ``hamming`` of 256 bits, same class) that straddle block borders are merged into one group.

    Args:
        root: the dataset folder.
        group_proxy: ``"blocks+phash"`` (default), ``"blocks"`` or ``"image"``.
        block: file numbers per block.
        hamming: pHash threshold in bits (default ``covidct.data.audit.GROUP_MERGE_HAMMING`` = 32).
        cache_root: where the perceptual hashes are cached (default ``.cache/covidct``).

    Returns:
        Manifest with ``group_proxy`` naming the proxy used.
    """
    root = Path(root)
    if group_proxy not in SARS_GROUP_PROXIES:
        raise unknown_name_error("group proxy", group_proxy, SARS_GROUP_PROXIES)
    rows = []
    for class_folder in subfolders(root):
        label = map_class_folder(class_folder, SARS_LABELS, "sars-cov-2-ct")
        for file in nonempty_images(class_folder, recursive=False):
            match = re.search(r"(\d+)", file.stem)
            number = int(match.group(1)) if match else 0
            if group_proxy == "image" or not match:
                group = f"{label}/{file.stem}"
            else:
                group = f"{label}/block{(number - 1) // block:03d}"
            rows.append({"path": str(file.resolve()), "label": label, "group": group, "split": ""})
    proxy = {"image": "image", "blocks": f"blocks of {block} file numbers"}.get(group_proxy, "")
    manifest = _finish(rows, "sars-cov-2-ct", proxy)
    if group_proxy == "blocks+phash":
        threshold = GROUP_MERGE_HAMMING if hamming is None else hamming
        manifest = merge_near_duplicate_groups(manifest, hamming=threshold, cache_root=cache_root)
        manifest["group_proxy"] = f"blocks of {block} file numbers merged with 256-bit pHash<={threshold} clusters"
    return manifest


COVID_CT_MD_LABELS = {"COVID-19": "COV", "CAP": "OtherPneumonia", "Normal": "Normal"}


@register_dataset("covid-ct-md", "COVID-CT-MD NIfTI volumes (COVID-19 / CAP / Normal), slices grouped by patient",
                  ("covid-ct-md-sample", "covid-ct-md"), COVID_CT_MD_LABELS)
def load_covid_ct_md(root: Path, volumes: bool = False) -> pd.DataFrame:
    """COVID-CT-MD: ``COVID-19|CAP|Normal/<patient>.nii.gz``.

    Args:
        root: the dataset folder.
        volumes: one row per volume (``slice_index`` -1) instead of one row per axial slice.

    Returns:
        Manifest grouped by patient; ``slice_index`` counts axial slices inferior to superior (the
        ``read_image`` volume convention).
    """
    root = Path(root)
    rows = []
    for class_folder in subfolders(root):
        if class_folder.name == "labels":
            continue
        label = map_class_folder(class_folder, COVID_CT_MD_LABELS, "covid-ct-md")
        for file in nonempty_images(class_folder, recursive=False):
            patient = file.name.split(".")[0]
            base = {"path": str(file.resolve()), "label": label, "group": patient, "split": ""}
            if volumes:
                rows.append(dict(base, slice_index=-1))
            else:
                rows.extend(dict(base, slice_index=k) for k in range(nifti_depth(file)))
    return _finish(rows, "covid-ct-md", "patient")


MOSMED_MODES = {
    "binary": {"CT-0": "Normal", "CT-1": "COV", "CT-2": "COV", "CT-3": "COV", "CT-4": "COV", "CT-23": "COV"},
    "keras-io": {"CT-0": "Normal", "CT-2": "COV", "CT-3": "COV", "CT-23": "COV", "CT-1": None, "CT-4": None},
    "severity": {f"CT-{k}": f"CT-{k}" for k in range(5)},
}


@register_dataset("mosmeddata", "MosMedData chest CT volumes CT-0..CT-4 (binary, keras-io or 5-class severity)",
                  ("mosmeddata", "MosMedData"), MOSMED_MODES["binary"], choices={"classes": tuple(MOSMED_MODES)})
def load_mosmeddata(root: Path, classes: str = "binary") -> pd.DataFrame:
    """MosMedData: ``CT-0 … CT-4/study_XXXX.nii.gz`` (also under ``studies/``), one row per volume.

    Args:
        root: the dataset folder.
        classes: ``"binary"`` (CT-0 Normal, CT-1..4 COV), ``"keras-io"`` (CT-0 vs CT-2/3, the Keras 3D
            example; CT-1 and CT-4 dropped) or ``"severity"`` (labels CT-0..CT-4). The mirror's
            ``CT-23`` folder (CT-2 and CT-3 together) is COV in the binary modes.

    Returns:
        Manifest, group = study id, ``mask_path`` from ``masks/<study>_mask.nii.gz`` when present.
    """
    if classes not in MOSMED_MODES:
        raise unknown_name_error("MosMedData class mode", classes, MOSMED_MODES)
    label_map = MOSMED_MODES[classes]
    root = Path(root)
    base = next((b for b in (root, root / "studies", root / "MosMedData") if b.is_dir() and
                 any(p.name.upper().startswith("CT-") for p in subfolders(b))), root)
    masks = {p.name.split("_mask")[0]: p for p in (root / "masks").glob("*.nii*")} if (root / "masks").is_dir() else {}
    rows = []
    for class_folder in subfolders(base):
        if class_folder.name in ("masks",):
            continue
        if class_folder.name not in label_map:
            raise CovidctError(
                f"{class_folder}: unknown class folder {class_folder.name!r} for dataset 'mosmeddata' "
                f"(classes={classes!r}).{did_you_mean(class_folder.name, label_map)} Known: {', '.join(label_map)}."
            )
        label = label_map[class_folder.name]
        files = nonempty_images(class_folder, recursive=False)
        if label is None:
            continue
        for file in files:
            study = file.name.split(".")[0]
            mask = masks.get(study)
            rows.append({"path": str(file.resolve()), "label": label, "group": study, "split": "",
                         "mask_path": str(mask.resolve()) if mask else "", "severity": class_folder.name})
    if not rows:
        raise CovidctError(f"{base}: no MosMedData studies found for classes={classes!r}.")
    return _finish(rows, "mosmeddata", "study")


def _paired(images_folder: Path, masks_folder: Path) -> list[tuple[Path, Path]]:
    """Pair images with masks by file name, or by the last number in the name (tr_im_z001 / tr_mask_z001)."""
    images = nonempty_images(images_folder, recursive=False)
    masks = image_files(masks_folder, recursive=False) if masks_folder.is_dir() else []
    by_name = {m.name: m for m in masks}
    by_number = {}
    for mask in masks:
        numbers = re.findall(r"\d+", mask.stem)
        if numbers:
            by_number[int(numbers[-1])] = mask
    pairs = []
    for image in images:
        mask = by_name.get(image.name)
        if mask is None:
            numbers = re.findall(r"\d+", image.stem)
            mask = by_number.get(int(numbers[-1])) if numbers else None
        if mask is None:
            raise CovidctError(f"{image}: no mask with the same name or number in {masks_folder}.")
        pairs.append((image, mask))
    return pairs


MEDSEG_BLOCK = 5
MEDSEG_PROXY = f"blocks of {MEDSEG_BLOCK} consecutive slice numbers (no patient ids; a patient's slices are consecutive)"
# Bump when the orientation criterion below changes: cached decisions are then recomputed.
MEDSEG_ORIENTATION_VERSION = "1"


def medseg_group(path: str | Path, fallback: int = 0) -> str:
    """Group of a MedSeg slice: its block of ``MEDSEG_BLOCK`` consecutive slice numbers (z001-z005 -> block00)."""
    numbers = re.findall(r"\d+", Path(path).stem)
    index = int(numbers[-1]) if numbers else fallback
    return f"medseg_block{(index - 1) // MEDSEG_BLOCK:02d}"


_LUNG_MASK: list = []


def register_lung_mask(lung_mask: Callable) -> None:
    """Register the classical lung mask ``lung_mask(image_u8, warn=False)`` the MedSeg orientation check uses.

    ``covidct.preprocess.lungs`` registers its ``lung_mask`` when it is imported (``import covidct.preprocess``):
    the data layer does not import the preprocessing layer above it.
    """
    _LUNG_MASK[:] = [lung_mask]


def _lung_mask() -> Callable:
    if not _LUNG_MASK:
        raise CovidctError(
            "MedSeg's mask orientation needs the classical lung mask: `import covidct.preprocess` first "
            "(it registers covidct.preprocess.lungs.lung_mask with covidct.data.datasets.register_lung_mask)."
        )
    return _LUNG_MASK[0]


def medseg_mask_rot90(image, mask) -> int:
    """Quarter turns ``k`` (0 or -1) that align a MedSeg mask with its image: ``np.rot90(mask, k)``.

    In the staged MedSeg PNGs most infection masks (91 of the 99 with infection) are a quarter turn
    (``np.rot90(mask, -1)``) away from their image; a few (e.g. z010, z090) are aligned as they are. The
    PROVENANCE note ("images and masks are consistent") is wrong for them. The orientation whose
    infection lies more inside the classical lung mask of the image wins; when both are within 0.05
    (small central lesions) the majority orientation (a quarter turn) is used.

    Args:
        image: (H, W) uint8 display image.
        mask: (H, W) mask (> 0 is infection), same square size.

    Returns:
        -1 (turn the mask a quarter turn clockwise) or 0 (keep it). Empty or non-square masks give 0.
    """
    mask = np.asarray(mask) > 0
    if not mask.any() or mask.shape[0] != mask.shape[1] or np.shape(image) != mask.shape:
        return 0
    lungs = _lung_mask()(np.asarray(image), warn=False) > 0
    as_is, quarter = lungs[mask].mean(), lungs[np.rot90(mask, -1)].mean()
    return 0 if as_is > quarter + 0.05 else -1


def _medseg_turns(pairs: list[tuple[Path, Path]], cache_root: str | Path | None | bool) -> list[int]:
    """``medseg_mask_rot90`` of every pair, cached in ``<cache_root>/medseg_mask_rot90.json`` by content hash."""
    import cv2

    # The decision depends on the lung-mask code too: a change there recomputes it.
    lung_code = inspect.getsource(inspect.getmodule(_lung_mask()))
    version = MEDSEG_ORIENTATION_VERSION + hashlib.sha256(lung_code.encode()).hexdigest()
    keys = []
    for image, mask in pairs:
        digest = hashlib.sha256(version.encode())
        digest.update(image.read_bytes())
        digest.update(mask.read_bytes())
        keys.append(digest.hexdigest())
    cache_file = None
    known: dict = {}
    if cache_root is not False:
        root = Path(cache_root) if cache_root else Path(os.environ.get("COVIDCT_CACHE", ".cache/covidct"))
        cache_file = root / "medseg_mask_rot90.json"
        if cache_file.is_file():
            try:
                known = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                known = {}
    missing = [i for i, key in enumerate(keys) if key not in known]
    for i in missing:
        image, mask = pairs[i]
        pixels = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
        labels = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        if pixels is None or labels is None:
            raise CovidctError(f"{image if pixels is None else mask}: cannot read the MedSeg image/mask (corrupt?).")
        known[keys[i]] = medseg_mask_rot90(pixels, labels)
    if missing and cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, cache_file)
    return [int(known[key]) for key in keys]


@register_dataset("medseg", "MedSeg COVID-19 CT segmentation (images/ + infection masks/)", ("medseg-covid19-100", "medseg"))
def load_medseg(root: Path, cache_root: str | Path | None | bool = None) -> pd.DataFrame:
    """MedSeg: ``images/tr_im_zNNN.png`` + ``masks/tr_mask_zNNN.png`` (infection = mask > 0), all COV.

    No patient ids are published (100 slices of >40 patients). A patient's slices are consecutive, so
    blocks of ``MEDSEG_BLOCK`` consecutive slice numbers are the group proxy (20 groups).

    Most staged masks are a quarter turn away from their image: the column ``mask_rot90`` holds, per
    row, the quarter turns ``k`` that align the mask (``np.rot90(mask, k)``, k in {0, -1}; see
    ``medseg_mask_rot90``). Every reader of MedSeg masks applies it (``covidct.data.cache`` targets,
    ``covidct.segment.data``). The decision needs a lung mask per slice (~0.1 s), so it is computed
    once and cached by the files' content hashes.

    Args:
        root: the dataset folder.
        cache_root: where the orientation decisions are cached (default ``$COVIDCT_CACHE`` or
            ``.cache/covidct``; ``False``: no cache).

    Returns:
        Manifest with ``mask_rot90`` and ``group_proxy`` columns.
    """
    root = Path(root)
    pairs = _paired(root / "images", root / "masks")
    turns = _medseg_turns(pairs, cache_root)
    rows = [{"path": str(i.resolve()), "mask_path": str(m.resolve()), "label": "COV", "group": medseg_group(i, n + 1),
             "split": "", "mask_rot90": k} for n, ((i, m), k) in enumerate(zip(pairs, turns))]
    return _finish(rows, "medseg", MEDSEG_PROXY)


@register_dataset("kaggle-lungs", "Kaggle 'Finding lungs in CT data' (images + lung masks)", ("kaggle-lungs-ct-64px",))
def load_kaggle_lungs(root: Path) -> pd.DataFrame:
    """Kaggle lungs: ``train|test/images`` + ``train|test/masks`` (or the original ``2d_images``/``2d_masks``).

    The label is ``unlabelled`` (a segmentation set); the train/test split of the source is kept.
    """
    root = Path(root)
    rows = []
    if (root / "2d_images").is_dir():
        layouts = [("", root / "2d_images", root / "2d_masks")]
    else:
        layouts = [(split_of(s.name) or "", s / "images", s / "masks") for s in subfolders(root) if (s / "images").is_dir()]
    if not layouts:
        raise CovidctError(f"{root}: expected train/images + train/masks (or 2d_images + 2d_masks) for 'kaggle-lungs'.")
    for split, images, masks in layouts:
        for image, mask in _paired(images, masks):
            rows.append({"path": str(image.resolve()), "mask_path": str(mask.resolve()), "label": "unlabelled",
                         "group": f"{split}/{image.stem}", "split": split})
    return _finish(rows, "kaggle-lungs", "image (no patient ids)")
