"""The data of the generalization ablation: lung-containing slices of the external set, exported bundles.

The external check (``covid-ct-md``: COVID-19 vs CAP + Normal) keeps only lung-containing slices: both
lungs together (``covidct.preprocess.lungs.lung_mask``, without labels) cover at least
``MIN_LUNG_FRACTION`` of the slice. ``export_bundle`` writes the preprocessed arrays for a machine
without the raw data; ``bundle_data`` reads them there.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from covidct.config import load_config
from covidct.data.cache import build_cache
from covidct.data.datasets import load_dataset
from covidct.data.io import CTImage, read_image
from covidct.data.phantom import make_dataset
from covidct.data.splits import assign_splits
from covidct.data.windows import window_hu
from covidct.errors import CovidctError
from covidct.preprocess import get_stage
from covidct.preprocess.lungs import lung_mask
from covidct.train.data import apply_label_map, data_from_arrays

#: The recipe arms' configs (``configs/robust/<arm>.yaml``).
CONFIG_DIR = Path(str(resources.files("covidct") / "configs" / "robust"))
EXTERNAL = "covid-ct-md"
#: covid-ct-md's labels onto sars-cov-2-ct's classes: COVID-19 vs (CAP + Normal).
EXTERNAL_LABEL_MAP = {"COV": "COV", "OtherPneumonia": "NonCOV", "Normal": "NonCOV"}
#: A slice counts as lung-containing when both lungs together cover at least this fraction of it.
MIN_LUNG_FRACTION = 0.05


def lung_fractions(manifest: pd.DataFrame, cache_root: str) -> np.ndarray:
    """Lung-mask area fraction of every (path, slice_index) row of a volume manifest (cached as CSV)."""
    cache = Path(cache_root) / "bench_generalization_lung_fractions.csv"
    known = pd.read_csv(cache) if cache.is_file() else pd.DataFrame(columns=["path", "slice_index", "fraction"])
    key = manifest["path"].astype(str) + "#" + manifest["slice_index"].astype(int).astype(str)
    table = dict(zip(known["path"].astype(str) + "#" + known["slice_index"].astype(int).astype(str), known["fraction"]))
    missing = sorted(set(manifest.loc[~key.isin(table.keys()), "path"].astype(str)))
    for path in missing:
        volume = read_image(path)
        for k in range(volume.array.shape[0]):
            labels = lung_mask(CTImage(volume.array[k], volume.unit, path), warn=False)
            table[f"{path}#{k}"] = float((labels > 0).mean())
    if missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"path": k.rsplit("#", 1)[0], "slice_index": int(k.rsplit("#", 1)[1]), "fraction": v} for k, v in table.items()]
        pd.DataFrame(rows).to_csv(cache, index=False)
    return np.array([table[k] for k in key], dtype=float)


def external_data(stage: str, size: int, class_names: list, cache_root: str, root: str | None = None):
    """covid-ct-md mapped to the run's classes, preprocessed with the run's stage, lung-containing slices only."""
    manifest = apply_label_map(load_dataset(EXTERNAL, root=root), EXTERNAL_LABEL_MAP, source=EXTERNAL)
    manifest = manifest.assign(split="test")
    cache = build_cache(manifest, stage=get_stage(stage), size=size, cache_root=cache_root, progress=False)
    rows = cache.manifest.reset_index(drop=True)
    keep = np.flatnonzero(lung_fractions(rows, cache_root) >= MIN_LUNG_FRACTION)
    images = np.asarray(cache.images[keep])
    return data_from_arrays(images, rows.iloc[keep].assign(split="test"), classes=class_names, source=EXTERNAL)


def smoke_external_data(stage: str, size: int, class_names: list, seed: int = 99):
    """Smoke stand-in for another hospital: phantoms shown through another window and blurred."""


    phantoms = make_dataset(n=24, size=64, seed=seed, slices_per_patient=4)
    stage_fn = get_stage(stage)
    images = []
    for image_hu in phantoms.images_hu:
        display = ndimage.gaussian_filter(window_hu(image_hu, -500, 1800) * 255.0, 1.0).astype(np.float32)
        images.append(stage_fn(CTImage(display, "display"), size)[0].image)
    labels = ["COV" if label == "COV" else "NonCOV" for label in phantoms.labels]
    manifest = pd.DataFrame({"path": [f"shifted/{i}" for i in range(len(labels))], "label": labels,
                             "group": phantoms.groups, "split": "test", "source": "phantom-shifted"})
    return data_from_arrays(np.stack(images), manifest, classes=class_names, source="phantom-shifted")


def export_bundle(out_dir, stages, size: int, cache_root: str = ".cache/covidct") -> list[Path]:
    """Write preprocessed arrays for a machine without the raw data (e.g. a GPU box): per stage
    ``internal-<stage>-<size>.npz`` (images, compressed) + ``.csv`` (manifest with the grouped split) and
    ``external-<stage>-<size>`` likewise, plus ``lung_fractions.csv``. Built with the same code as a
    normal run (dataset loader, grouped split, ``build_cache``), so ``--data-dir`` runs the same data.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d = load_config(CONFIG_DIR / "robust.yaml").data
    internal = assign_splits(load_dataset(d.dataset, root=d.root), fractions=tuple(d.split_fractions), seed=d.seed,
                             keep_official=d.keep_official_splits)
    external = apply_label_map(load_dataset(EXTERNAL), EXTERNAL_LABEL_MAP, source=EXTERNAL).assign(split="test")
    written = []
    for stage in stages:
        for kind, manifest in (("internal", internal), ("external", external)):
            cache = build_cache(manifest, stage=get_stage(stage), size=size, cache_root=cache_root, progress=False)
            stem = out_dir / f"{kind}-{stage}-{size}"
            np.savez_compressed(f"{stem}.npz", images=np.asarray(cache.images))
            cache.manifest.to_csv(f"{stem}.csv", index=False)
            written += [Path(f"{stem}.npz"), Path(f"{stem}.csv")]
    rows = external.reset_index(drop=True)
    rows.assign(fraction=lung_fractions(rows, cache_root))[["path", "slice_index", "fraction"]].to_csv(
        out_dir / "lung_fractions.csv", index=False)
    written.append(out_dir / "lung_fractions.csv")
    return written


def bundle_data(data_dir, kind: str, stage: str, size: int, class_names=None):
    """TrainingData from an exported bundle (see ``export_bundle``); external rows are lung-containing only."""
    stem = Path(data_dir) / f"{kind}-{stage}-{size}"
    if not Path(f"{stem}.npz").is_file():

        raise CovidctError(f"{stem}.npz is missing: export it with --export-data (stage {stage!r}, size {size}).")
    images = np.load(f"{stem}.npz")["images"]
    manifest = pd.read_csv(f"{stem}.csv", keep_default_na=False)
    if kind == "external":
        fractions = pd.read_csv(Path(data_dir) / "lung_fractions.csv")
        table = dict(zip(fractions["path"] + "#" + fractions["slice_index"].astype(str), fractions["fraction"]))
        key = manifest["path"] + "#" + manifest["slice_index"].astype(int).astype(str)
        keep = np.flatnonzero(key.map(table).to_numpy(dtype=float) >= MIN_LUNG_FRACTION)
        images, manifest = images[keep], manifest.iloc[keep].assign(split="test")
    return data_from_arrays(images, manifest, classes=class_names, source=f"{kind}-{stage}")
