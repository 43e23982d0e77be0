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

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from covidct.data import phantom
from covidct.data.groups import GROUP_MERGE_HAMMING, merge_near_duplicate_groups
from covidct.data.io import nifti_depth
from covidct.data.manifest import make_manifest
from covidct.data.mask_datasets import (  # noqa: F401  (registers medseg and kaggle-lungs; re-exported names)
    MEDSEG_BLOCK,
    MEDSEG_ORIENTATION_VERSION,
    MEDSEG_PROXY,
    load_kaggle_lungs,
    load_medseg,
    medseg_group,
    medseg_mask_rot90,
    register_lung_mask,
)
from covidct.data.registry import (  # noqa: F401  (re-exported: their old home)
    BINARY_MAP,
    DATASETS,
    GENERIC_OPTIONS,
    PROJECT_CLASSES,
    SPLIT_ALIASES,
    DatasetSpec,
    _finish,
    check_dataset_options,
    dataset_options,
    image_files,
    is_image_file,
    list_datasets,
    map_class_folder,
    natural_key,
    nonempty_images,
    register_dataset,
    split_of,
    subfolders,
    to_binary,
)
from covidct.data.splits import sample_groups
from covidct.errors import CovidctError, did_you_mean, unknown_name_error

logger = logging.getLogger(__name__)


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
