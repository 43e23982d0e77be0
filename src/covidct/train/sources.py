"""Extra training sources (``data.extra_sources``): other datasets whose rows join the training split only.

Each entry ``{dataset, label | label_map, options, root}`` (checked at load time by
``covidct.config.sources``) is loaded through the dataset registry, labelled (``label``: every row gets that
class; ``label_map``: ``covidct.train.samples.apply_label_map``), put in the ``train`` split (never validation
or test, so every reported number stays on the primary dataset), its groups prefixed with the dataset name
(``medseg:medseg_block00``: no group can be shared with the primary dataset), and preprocessed into its own
slice cache at the run's stage and size (``covidct.data.cache.build_cache``: reused like any cache). The images
are then appended after the primary dataset's, and the manifest's ``source`` column (the dataset name, set by
every loader) tells the sources apart, e.g. for ``training.sampler: source_balanced``
(``covidct.train.sampling``).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from covidct.data.cache import build_cache
from covidct.data.datasets import load_dataset
from covidct.errors import CovidctError, did_you_mean
from covidct.preprocess import get_stage
from covidct.train.samples import apply_label_map

log = logging.getLogger(__name__)


def extra_source_manifest(entry: dict, index: int = 0) -> pd.DataFrame:
    """The Manifest of one ``data.extra_sources`` entry: labelled, all ``train``, groups prefixed.

    Args:
        entry: ``{dataset, label | label_map, options, root}``.
        index: the entry's position, for messages.

    Returns:
        The rows with ``label``, ``split="train"``, ``group="<dataset>:<group>"`` and ``source=<dataset>``.
    """
    name = str(entry["dataset"])
    where = f"data.extra_sources[{index}] ({name})"
    manifest = load_dataset(name, root=entry.get("root"), **dict(entry.get("options") or {}))
    if entry.get("label") is not None:
        manifest = manifest.assign(original_label=manifest["label"].astype(str), label=str(entry["label"]))
    else:
        manifest = apply_label_map(manifest, entry.get("label_map"), source=where)
    if manifest.empty:
        raise CovidctError(f"{where}: no rows left after its label map; the source adds nothing to training.")
    return manifest.assign(split="train", source=name,
                           group=name + ":" + manifest["group"].astype(str)).reset_index(drop=True)


def add_extra_sources(images, manifest: pd.DataFrame, entries, stage: str, size: int, cache_root: str,
                      classes=None, progress: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """Append the slices of each extra source to the primary dataset's images and manifest.

    Args:
        images: the primary dataset's uint8 images (N, size, size, C) (its cache's memmap).
        manifest: the primary dataset's manifest, aligned with ``images``, with its splits.
        entries: ``data.extra_sources``.
        stage: the run's preprocessing stage name; each source is cached at this stage and ``size``.
        size: the run's input size.
        cache_root: folder of the preprocessed caches.
        classes: ``data.classes`` (None: the primary dataset's labels): every extra label must be one of them.
        progress: show the caches' progress bars.

    Returns:
        (images, manifest): a new in-memory array with the extra rows after the primary ones, and the
        manifest with the primary's columns (plus ``source``) over all rows.

    Raises:
        CovidctError: a label that is not a class of the run (did-you-mean), or a source that left no image.
    """
    known = [str(c) for c in classes] if classes else sorted(set(manifest["label"].astype(str)))
    columns = list(dict.fromkeys([*manifest.columns, "source"]))
    parts_images, parts_frames = [np.asarray(images)], [manifest.reindex(columns=columns)]
    for index, entry in enumerate(entries or ()):
        extra = extra_source_manifest(entry, index)
        where = f"data.extra_sources[{index}] ({entry['dataset']})"
        unknown = sorted(set(extra["label"].astype(str)) - set(known))
        if unknown:
            raise CovidctError(f"{where}: label(s) {unknown} are not classes of this run {known}."
                               f"{did_you_mean(unknown[0], known)} Set its label (or label_map) to one of them.")
        cache = build_cache(extra, stage=get_stage(stage), size=size, cache_root=cache_root, progress=progress)
        if cache.failed is not None and len(cache.failed):
            warnings.warn(f"{where}: {len(cache.failed)} image(s) failed preprocessing and were skipped "
                          f"(see {cache.path}).", stacklevel=2)
        if len(cache.manifest) == 0:
            raise CovidctError(f"{where}: every image failed the {stage!r} stage (see {cache.path}); remove the source.")
        if tuple(cache.images.shape[1:]) != tuple(parts_images[0].shape[1:]):
            raise CovidctError(f"{where}: its slices are {tuple(cache.images.shape[1:])}, the run's "
                               f"{tuple(parts_images[0].shape[1:])}; a source must give the run's channels.")
        frame = cache.manifest.assign(split="train").reindex(columns=columns)
        for column in columns:  # columns the source lacks: empty text, not NaN (they reach the CSV files)
            if frame[column].isna().all() and column not in ("slice_index",):
                frame[column] = ""
        parts_images.append(np.asarray(cache.images))
        parts_frames.append(frame)
        log.info("%s: %d training slices added from %s.", where, len(frame), cache.path)
    return np.concatenate(parts_images), pd.concat(parts_frames, ignore_index=True)
