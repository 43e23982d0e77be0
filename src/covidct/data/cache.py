"""Preprocessing cache: a stage computed once per image, in parallel, into memory-mapped uint8 arrays.

``build_cache(manifest, stage, size)`` runs a stage object (``covidct.data.stage.Stage``, e.g. a named
stage of ``covidct.preprocess.get_stage``, passed in by the caller) on every row and stores the results
under ``<cache_root>/<stage>-<size>-<key>/``:

- ``images.u8``: raw uint8 memmap, shape (N, size, size, C) (channels-last, C from the stage);
- ``masks.u8``: uint8 memmap (N, size, size), the lung/body mask the stage used ({0, 1});
- ``targets.u8`` (only when the manifest has ``mask_path``): the mask files (> 0), cached with their
  images. A manifest column ``mask_rot90`` (MedSeg: masks a quarter turn away from their images) turns
  each mask by ``np.rot90(mask, k)`` first. A stage with a ``target`` method puts the mask into its
  output's geometry (a crop); otherwise the mask is zero-padded to a centred square and resized to
  size x size (``covidct.data.stage.full_field_target``): the geometry of the full-field stages
  (``original``, ``nobackg``, ``lungs-nocrop``), not of cropping or halving stages;
- ``manifest.csv``: one row per sample (a stage may give several per image, e.g. ``halves``), with the
  input row's columns plus ``suffix``, ``source_row`` and the stage's per-sample ``values``;
- ``failed.csv``: files that could not be read or processed (``path, error``), skipped, never fatal;
- ``inputs.csv``: size and modification time (ns) of every input file (images and mask files) as built;
- ``meta.json``: stage, size, shape, counts, the key, the digest of ``inputs.csv`` and the code version.
  It is written last (atomically): a folder without it is an unfinished build.

The key (the folder name) is a hash of the manifest content, the stage name, the size, covidct's
version and the source code of the stage's module, so a changed manifest or stage builds a new cache.
The files themselves are checked on every use: a cache is reused only when every input file still has
the size and modification time recorded in ``inputs.csv``, and its arrays have the sizes ``meta.json``
says. Otherwise it is rebuilt in place, with a logged warning that names the cause (which files
changed, or which cache file is damaged); ``rebuild=True`` (``covidct preprocess --rebuild``) rebuilds
it in any case. Contents are not hashed: reading every image at each use would cost a good part of a
build. A file replaced by one of the same size *and* the same modification time (``cp -p``,
``rsync -a`` of an edited copy, ``touch -r``) is therefore not noticed: rebuild after such a change.

Work is done in chunks by a process pool (all cores by default); each finished chunk is written to disk
(temporary name, then rename) and marked done, so an interrupted build resumes where it stopped, unless
the input files changed meanwhile (then the chunks are discarded). Memory holds at most one chunk of
decoded images per worker. One process builds a cache at a time (``.build.lock``). A failed write (a
full disk, a read-only folder) removes its partial file and stops with a ``CovidctError`` naming the
file; finished chunks are kept for the rerun.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covidct import __version__
from covidct.data.cache_integrity import (
    REBUILD_HINT,
    array_problem,
    changed_inputs,
    input_stats,
    read_cache_meta,
    read_cache_tables,
    slice_arrays,
    stats_digest,
)
from covidct.data.datasets import load_dataset
from covidct.data.io import ImageLoader, read_image
from covidct.data.manifest import validate_manifest
from covidct.data.splits import assign_splits
from covidct.data.stage import full_field_target, stage_name
from covidct.data.writes import atomic_write_text, os_error_message, remove_owned_tree, removing_on_error
from covidct.errors import CovidctError, unknown_name_error

logger = logging.getLogger(__name__)

CACHE_FORMAT = "2"
KEY_COLUMNS = ("path", "label", "group", "split", "source", "mask_path", "slice_index", "mask_rot90")
#: The names covidct writes in a cache's ``chunks/`` folder (nothing else there is ever deleted).
CHUNK_PATTERNS = ("chunk_*.npy", "chunk_*.csv", "chunk_*.done", "inputs.json", "*.tmp")
#: The files of a finished slice cache (removed, meta.json first, before a rebuild in place).
CACHE_FILES = ("meta.json", "images.u8", "masks.u8", "targets.u8", "manifest.csv", "failed.csv", "inputs.csv")


class ManifestRows:
    """Row bookkeeping shared by the slice cache and the volume cache (``self.manifest`` aligned with rows)."""

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def class_names(self) -> list[str]:
        """Sorted class names present in the cache."""
        return sorted(set(self.manifest["label"]))

    def indices(self, split: str) -> np.ndarray:
        """Row indices of ``split`` (``train``, ``val``, ``test``)."""
        known = sorted(set(self.manifest["split"]))
        if split not in known:
            raise unknown_name_error("split", split, known)
        return np.flatnonzero(self.manifest["split"].to_numpy() == split)


@dataclass
class Cache(ManifestRows):
    """A built cache: memory-mapped arrays aligned with ``manifest`` rows.

    Attributes:
        path: the cache folder.
        key: the content key (hex).
        images: uint8 memmap (N, size, size, C).
        masks: uint8 memmap (N, size, size), the stage's lung/body mask.
        manifest: DataFrame, one row per sample (``path, label, group, split, source, suffix, ...``).
        failed: DataFrame ``path, error`` of skipped inputs.
        meta: the contents of ``meta.json``.
        targets: uint8 memmap (N, size, size) of ground-truth masks, or None.
    """

    path: Path
    key: str
    images: np.ndarray
    masks: np.ndarray
    manifest: pd.DataFrame
    failed: pd.DataFrame
    meta: dict
    targets: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | Path) -> Cache:
        """Open a finished cache folder read-only, after checking its files against ``meta.json``.

        Raises:
            CovidctError: no, empty or corrupt ``meta.json``, an array file of the wrong size (truncated),
                or a manifest with another row count; the message names the file and says to rebuild.
        """
        path = Path(path)
        meta, problem = read_cache_meta(path)
        problem = problem or array_problem(path, slice_arrays(meta))
        if problem:
            raise CovidctError(f"{problem}; {REBUILD_HINT}.")
        count, size, channels = meta["count"], meta["size"], meta["channels"]
        images = np.memmap(path / "images.u8", dtype=np.uint8, mode="r", shape=(count, size, size, channels))
        masks = np.memmap(path / "masks.u8", dtype=np.uint8, mode="r", shape=(count, size, size))
        targets = None
        if meta.get("has_targets"):
            targets = np.memmap(path / "targets.u8", dtype=np.uint8, mode="r", shape=(count, size, size))
        manifest, failed = read_cache_tables(path, count)
        return cls(path, meta["key"], images, masks, manifest, failed, meta, targets)


def cache_key(manifest: pd.DataFrame, stage: str, size: int, stage_fn=None) -> str:
    """Hash of (manifest content, stage, size, code version, stage source)."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{__version__}|{stage}|{size}\n".encode())
    columns = [c for c in KEY_COLUMNS if c in manifest.columns]
    digest.update(manifest[columns].to_csv(index=False).encode())
    if stage_fn is not None:
        try:
            module = inspect.getmodule(stage_fn)
            digest.update(inspect.getsource(module).encode() if module else b"")
        except (OSError, TypeError):
            digest.update(getattr(stage_fn, "__qualname__", repr(stage_fn)).encode())
    return digest.hexdigest()


def _read_mask(path: str, rot90: int = 0) -> np.ndarray:
    """A mask file as bool (H, W) at its own resolution (> 0 is inside), turned by ``np.rot90(mask, rot90)``."""
    mask = read_image(path).array
    if mask.ndim != 2:
        raise CovidctError(f"{path}: a mask must be a 2-D image, got shape {mask.shape}.")
    if rot90:
        mask = np.rot90(mask, rot90)
    return np.ascontiguousarray(mask > 0)


def _targets(stage, mask: np.ndarray | None, outputs: list, size: int) -> list:
    """The ground-truth mask of each output (None without a mask file), in the output's geometry."""
    if mask is None:
        return [None] * len(outputs)
    place = getattr(stage, "target", None)
    if place is None:
        target = full_field_target(mask, size)
        return [target] * len(outputs)
    return [np.asarray(place(mask, output, size), dtype=np.uint8) for output in outputs]


def _process_chunk(job: dict) -> tuple[int, int, int]:
    """Run the stage on one chunk of rows and write the chunk's arrays; returns (chunk, samples, failed)."""
    stage_fn, name = job["stage"], job["stage_name"]
    size, folder, number = job["size"], Path(job["folder"]), job["chunk"]
    loader = ImageLoader()
    images, masks, targets, rows, failed = [], [], [], [], []
    noted: dict[str, list[tuple[str, str]]] = {}  # the stage's warnings by kind: one summary line each
    for row in job["rows"]:
        path, slice_index = row["path"], int(row.get("slice_index", -1))
        try:
            image = loader.load(path, slice_index)
            if image.array.ndim != 2:
                raise CovidctError(f"{path}: a volume row needs a slice_index for a 2-D stage.")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                outputs = stage_fn(image, size)
            for warning in caught:
                noted.setdefault(warning.category.__name__, []).append((path, str(warning.message)))
            turns = row.get("mask_rot90", 0)
            turns = int(turns) if pd.notna(turns) and turns != "" else 0
            mask = _read_mask(row["mask_path"], turns) if job["has_targets"] and row.get("mask_path") else None
            row_targets = _targets(stage_fn, mask, outputs, size)
        except Exception as error:  # one bad file must not stop a batch job
            message = str(error) if isinstance(error, CovidctError) else f"{path}: {error.__class__.__name__}: {error}"
            failed.append({"path": path, "slice_index": slice_index, "error": message})
            continue
        for output, target in zip(outputs, row_targets):
            _check_output(output, size, name, path, target)
            images.append(output.image if output.image.ndim == 3 else output.image[..., None])
            masks.append(output.mask)
            targets.append(target if target is not None else np.zeros((size, size), np.uint8))
            rows.append({"source_row": row["_row"], "suffix": output.suffix, **getattr(output, "values", {})})
    # A volume's end slices legitimately hold no lungs: one line per kind of warning and chunk, not one per slice.
    for category, found in noted.items():
        files = len({path for path, _ in found})
        logger.warning("%d slice(s) of %d file(s) with a %s, e.g. %s", len(found), files, category, found[0][1])
    channels = images[0].shape[2] if images else 0
    if len({im.shape[2] for im in images}) > 1:
        raise CovidctError(f"stage {name!r} returned images with different channel counts.")
    stem = folder / f"chunk_{number:05d}"
    arrays = {"images": np.stack(images) if images else np.zeros((0, size, size, 1), np.uint8),
              "masks": np.stack(masks) if masks else np.zeros((0, size, size), np.uint8),
              "targets": np.stack(targets) if targets else np.zeros((0, size, size), np.uint8)}
    columns = list(dict.fromkeys(["source_row", "suffix"] + [key for row in rows for key in row]))
    tables = {"rows": pd.DataFrame(rows, columns=columns),
              "failed": pd.DataFrame(failed, columns=["path", "slice_index", "error"])}
    temporary = [f"{stem}.{part}.tmp.npy" for part in arrays] + [f"{stem}.{part}.tmp.csv" for part in tables]
    # A failed write (disk full, read-only folder) leaves no partial file behind and names the file.
    with removing_on_error(*temporary):
        for part, array in arrays.items():
            np.save(f"{stem}.{part}.tmp.npy", array)
        for part, table in tables.items():
            table.to_csv(f"{stem}.{part}.tmp.csv", index=False)
        for part in arrays:
            os.replace(f"{stem}.{part}.tmp.npy", f"{stem}.{part}.npy")
        for part in tables:
            os.replace(f"{stem}.{part}.tmp.csv", f"{stem}.{part}.csv")
    atomic_write_text(f"{stem}.done", json.dumps({"samples": len(rows), "failed": len(failed), "channels": channels}))
    return number, len(rows), len(failed)


def _check_output(output, size: int, stage: str, path: str, target: np.ndarray | None = None) -> None:
    image, mask = np.asarray(output.image), np.asarray(output.mask)
    if target is not None and target.shape != (size, size):
        raise CovidctError(
            f"stage {stage!r} placed the mask of {path} into shape {target.shape}; expected ({size}, {size})."
        )
    if image.dtype != np.uint8 or image.shape[:2] != (size, size) or image.ndim not in (2, 3):
        raise CovidctError(
            f"stage {stage!r} returned an image of {image.dtype} {image.shape} for {path}; "
            f"expected uint8 ({size}, {size}, C)."
        )
    if mask.shape != (size, size):
        raise CovidctError(f"stage {stage!r} returned a mask of shape {mask.shape} for {path}; expected ({size}, {size}).")


def _mp_context():
    import multiprocessing

    # fork keeps stages registered at run time (tests, notebooks) visible in the workers.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return multiprocessing.get_context(method)


def build_cache(
    manifest: pd.DataFrame,
    stage,
    size: int = 224,
    cache_root: str | Path = ".cache/covidct",
    workers: int | None = None,
    progress: bool = True,
    chunk_size: int = 128,
    rebuild: bool = False,
) -> Cache:
    """Compute ``stage`` at ``size`` for every manifest row once, into a memory-mapped cache.

    Args:
        manifest: a Manifest (rows with ``slice_index`` >= 0 read that slice of a volume file).
        stage: a stage object (``covidct.data.stage.Stage``), e.g. ``covidct.preprocess.get_stage("original")``;
            its ``stage_name`` names the cache folder.
        size: output side length in pixels.
        cache_root: folder holding caches.
        workers: processes (default: all cores; 1 runs in this process).
        progress: show a tqdm progress bar.
        chunk_size: rows per chunk (the unit of parallel work, of resuming and of peak memory).
        rebuild: rebuild the cache even when a finished one with the same key and unchanged files exists.

    Returns:
        The ``Cache``: reused when a finished cache with the same key exists, its input files are
        unchanged (size and modification time) and its files are intact; otherwise (re)built, with a
        logged warning saying why an existing one was not reused.

    Raises:
        CovidctError: a stage name instead of a stage object, a stage returning bad arrays, a class left with no samples
            (e.g. every file of a class failed), or a cache folder that cannot be written (disk full,
            read-only), naming the file.
    """
    name = stage_name(stage)
    validate_manifest(manifest)
    if int(size) < 8:
        raise CovidctError(f"cache size must be at least 8 pixels, got {size}.")
    manifest = manifest.reset_index(drop=True)
    key = cache_key(manifest, name, size, stage)
    folder = Path(cache_root) / f"{name}-{size}-{key[:16]}"
    stats = input_stats(manifest)
    digest = stats_digest(stats)
    return reuse_or_build(
        folder, rebuild, "cache", lambda: _reuse_problem(folder, key, stats, digest), lambda: Cache.open(folder),
        lambda: _build(manifest, stage, name, size, folder, key, workers, progress, chunk_size, stats, digest),
        CACHE_FILES,
    )


def reuse_or_build(folder: Path, rebuild: bool, kind: str, problem_of, open_cache, build, files):
    """Open a finished, intact cache or (re)build it, one builder at a time (slice and volume caches).

    Args:
        folder: the cache folder.
        rebuild: build even when the existing cache passes every check.
        kind: what to call it in the log ("cache", "volume cache").
        problem_of: returns why the existing cache cannot be reused ("" when it can).
        open_cache: opens the existing cache.
        build: builds it and returns the opened cache.
        files: the cache's own file names, removed before a rebuild.
    """
    if not rebuild and not problem_of():
        logger.info("reusing %s %s", kind, folder)
        return open_cache()
    make_cache_folder(folder)
    with build_lock(folder):  # another process building this cache: wait for it, then reuse what it built
        problem = problem_of()
        if not problem and not rebuild:
            logger.info("reusing %s %s (built by another process meanwhile)", kind, folder)
            return open_cache()
        if rebuild or (folder / "meta.json").exists():
            logger.warning("rebuilding %s %s: %s", kind, folder, "rebuild requested" if rebuild else problem)
            clear_cache_folder(folder, files)
        return build()


def _reuse_problem(folder: Path, key: str, stats: pd.DataFrame, digest: str) -> str:
    """Why the cache in ``folder`` cannot be reused ("" when it can): unfinished, damaged or stale."""
    meta, problem = read_cache_meta(folder)
    if problem:
        return problem
    if meta["key"] != key:
        return f"{folder / 'meta.json'}: holds key {str(meta['key'])[:16]}..., not this cache's {key[:16]}..."
    return array_problem(folder, slice_arrays(meta)) or changed_inputs(folder, stats, digest, meta)


def make_cache_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".build.lock").touch()
    except OSError as error:
        raise CovidctError(f"cannot write the cache: {os_error_message(error, folder)}") from None


def clear_cache_folder(folder: Path, files) -> None:
    """Remove a cache's files before a rebuild in place: ``chunks/`` (only if it holds covidct's chunk files
    alone, else nothing is removed), then ``meta.json`` (nothing trusts a half-removed cache), then the rest."""
    remove_owned_tree(folder / "chunks", allowed=CHUNK_PATTERNS, what="cache chunk folder")
    try:
        for name in files:
            (folder / name).unlink(missing_ok=True)
        for leftover in folder.glob("*.tmp"):
            leftover.unlink()
    except OSError as error:
        raise CovidctError(f"cannot rebuild the cache: {os_error_message(error, folder)}") from None


@contextlib.contextmanager
def build_lock(folder: Path):
    """An exclusive lock on ``folder/.build.lock`` while one process builds the cache (POSIX ``flock``; where
    ``fcntl`` is missing, e.g. Windows, no lock: build a cache from one process at a time there)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(folder / ".build.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process building %s", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(manifest: pd.DataFrame, stage, name: str, size: int, folder: Path, key: str, workers: int | None,
           progress: bool, chunk_size: int, stats: pd.DataFrame, digest: str) -> Cache:
    """``build_cache``'s work, under the folder's build lock: chunks (resumable), then the final memmaps."""
    chunks_dir = folder / "chunks"
    inputs_file = chunks_dir / "inputs.json"
    if chunks_dir.is_dir():
        try:
            resumable = json.loads(inputs_file.read_text()).get("inputs_digest") == digest
        except (OSError, ValueError, AttributeError):
            resumable = False
        if not resumable:  # chunks of files that changed since (or of unknown files): never mixed in
            logger.warning("discarding the unfinished chunks in %s: the input files changed since they were made",
                           chunks_dir)
            remove_owned_tree(chunks_dir, allowed=CHUNK_PATTERNS, what="cache chunk folder")
    try:
        chunks_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CovidctError(f"cannot write the cache: {os_error_message(error, chunks_dir)}") from None
    if not inputs_file.is_file():
        atomic_write_text(inputs_file, json.dumps({"inputs_digest": digest}))
    has_targets = "mask_path" in manifest and (manifest["mask_path"].astype(str) != "").any()
    records = manifest.assign(_row=np.arange(len(manifest))).to_dict("records")
    for record in records:
        record["slice_index"] = int(record.get("slice_index", -1))
    jobs = [
        {"stage": stage, "stage_name": name, "size": int(size), "folder": str(chunks_dir), "chunk": k // chunk_size,
         "rows": records[k : k + chunk_size], "has_targets": has_targets}
        for k in range(0, len(records), chunk_size)
    ]
    pending = [job for job in jobs if not (chunks_dir / f"chunk_{job['chunk']:05d}.done").is_file()]
    started = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(records), initial=len(records) - sum(len(j["rows"]) for j in pending),
               desc=f"cache {name}@{size}", unit="img", disable=not progress)
    workers = workers or os.cpu_count() or 1
    try:  # the bar is closed on failure too, so an error message starts on a line of its own
        if workers == 1 or len(pending) <= 1:
            for job in pending:
                _process_chunk(job)
                bar.update(len(job["rows"]))
        else:
            sizes = {job["chunk"]: len(job["rows"]) for job in pending}
            with ProcessPoolExecutor(min(workers, len(pending)), mp_context=_mp_context()) as pool:
                futures = {pool.submit(_process_chunk, job) for job in pending}
                try:
                    while futures:
                        done, futures = wait(futures, return_when=FIRST_COMPLETED)
                        for future in done:
                            number, _, _ = future.result()
                            bar.update(sizes[number])
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return _assemble(folder, manifest, jobs, name, size, key, has_targets, stats, digest, started)


def _assemble(folder: Path, manifest: pd.DataFrame, jobs: list, stage: str, size: int, key: str,
              has_targets: bool, stats: pd.DataFrame, digest: str, started: float) -> Cache:
    """Concatenate finished chunks into the final memmaps, one chunk in memory at a time; ``meta.json`` last."""
    chunks_dir = folder / "chunks"
    stems = [chunks_dir / f"chunk_{job['chunk']:05d}" for job in jobs]
    infos = [json.loads(Path(f"{stem}.done").read_text()) for stem in stems]
    total = sum(info["samples"] for info in infos)
    channels = next((info["channels"] for info in infos if info["samples"]), 0)
    rows = pd.concat([pd.read_csv(f"{stem}.rows.csv", keep_default_na=False) for stem in stems], ignore_index=True)
    failed = pd.concat([pd.read_csv(f"{stem}.failed.csv", keep_default_na=False) for stem in stems], ignore_index=True)
    for path, error in zip(failed["path"], failed["error"]):
        logger.warning("skipped %s: %s", path, error)
    out = manifest.iloc[rows["source_row"].to_numpy()].reset_index(drop=True)
    out["suffix"] = rows["suffix"].astype(str).replace("nan", "").to_numpy()
    out["source_row"] = rows["source_row"].to_numpy()
    for column in rows.columns.drop(["source_row", "suffix"]):  # the stage's per-sample values
        out[column] = rows[column].to_numpy()
    produced = set(out["label"])
    empty = sorted(set(manifest["label"]) - produced)
    if empty:
        raise CovidctError(
            f"class(es) {empty} have no usable image after preprocessing ({len(failed)} file(s) failed, e.g. "
            f"{failed['error'].iloc[0] if len(failed) else 'none'}); fix or remove them before caching."
        )
    if total == 0:
        raise CovidctError("no sample was produced: every file failed.")
    arrays = {"images": (total, size, size, channels), "masks": (total, size, size)}
    if has_targets:
        arrays["targets"] = (total, size, size)
    for name, shape in arrays.items():
        # Plain sequential writes (not a writable memmap): written memmap pages would count towards
        # this process's resident memory, and only one chunk should ever be held.
        written = 0
        temporary = folder / f"{name}.u8.tmp"
        with removing_on_error(temporary):
            with open(temporary, "wb") as handle:
                for stem, info in zip(stems, infos):
                    if info["samples"]:
                        part = np.load(f"{stem}.{name}.npy")
                        handle.write(np.ascontiguousarray(part, dtype=np.uint8).tobytes())
                        written += part.size
                        del part
            if written != int(np.prod(shape)):
                raise CovidctError(f"{folder}: chunk files hold {written} bytes of {name}, expected {int(np.prod(shape))}.")
            os.replace(temporary, folder / f"{name}.u8")
    for name, table in (("manifest.csv", out), ("failed.csv", failed), ("inputs.csv", stats)):
        atomic_write_text(folder / name, table.to_csv(index=False))
    meta = {
        "key": key,
        "stage": stage,
        "size": int(size),
        "channels": int(channels),
        "count": int(total),
        "inputs": int(len(manifest)),
        "failed": int(len(failed)),
        "has_targets": bool(has_targets),
        "counts": {str(k): int(v) for k, v in out["label"].value_counts().sort_index().items()},
        "sources": sorted(set(manifest["source"].astype(str))),
        "inputs_digest": digest,
        "covidct_version": __version__,
        "cache_format": CACHE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2))  # the cache is finished from here on
    try:
        remove_owned_tree(chunks_dir, allowed=CHUNK_PATTERNS, what="cache chunk folder")
    except CovidctError as error:  # the cache is complete; only the clean-up is refused
        logger.warning("%s", error)
    return Cache.open(folder)


def preprocess_dataset(
    dataset: str,
    stage,
    size: int = 224,
    root: str | Path | None = None,
    cache_root: str | Path = ".cache/covidct",
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    rebuild: bool = False,
) -> Cache:
    """Load a registered dataset, assign its splits (official kept) and build its cache.

    Args:
        dataset: a registered dataset name.
        stage: a stage object (``covidct.preprocess.get_stage(name)``).
        size: output size in pixels.
        root: the dataset folder (default places otherwise).
        cache_root: folder holding caches.
        workers: processes (default: all cores).
        seed: split seed when the dataset has no official split.
        progress: show a progress bar.
        rebuild: rebuild the cache even when an up-to-date one exists.

    Returns:
        The ``Cache``.
    """
    manifest = assign_splits(load_dataset(dataset, root=root), seed=seed)
    return build_cache(manifest, stage=stage, size=size, cache_root=cache_root, workers=workers, progress=progress,
                       rebuild=rebuild)
