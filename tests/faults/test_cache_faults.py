"""Cache faults: a full disk at every write site, a killed builder, concurrent builders, damaged and stale caches.

What may fail, and what then:

- the disk fills while a cache is built: the build stops with one ``CovidctError`` naming the file and "disk
  full", no partial (``*.tmp*``) file is left, no ``meta.json`` is written, and a rerun finishes the cache with
  the same bytes as an uninterrupted build;
- the builder is killed (SIGKILL) at any point, and an input file is repaired before the rerun: the rerun gives
  the bytes of an uninterrupted build of the repaired files (no chunk of the old file is reused);
- two processes build one cache at once: each image is computed once, both get the same cache;
- ``meta.json`` empty, cut or foreign, ``images.u8`` truncated, ``manifest.csv`` cut: never trusted (rebuilt
  by ``build_cache``, refused by name by ``Cache.open``);
- an input file is replaced after the build: the cache is rebuilt (a warning names the file);
- a ``chunks/`` folder holding a file covidct did not write is not deleted.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from covidct.data.cache import Cache, build_cache
from covidct.data.manifest import make_manifest
from covidct.data.volumes import build_volume_cache, write_phantom_volumes
from covidct.data.windows import to_display
from covidct.errors import CovidctError
from covidct.preprocess.stages import STAGES, StageOutput, get_stage, register_stage

SRC = Path(__file__).resolve().parents[2] / "src"
CALLS: list[str] = []


def faults_gray_stage(image, size):
    """Test stage: the display image resized; mask = pixels above 127."""
    CALLS.append(image.path)
    resized = cv2.resize(to_display(image), (size, size), interpolation=cv2.INTER_AREA)
    return [StageOutput(resized[..., None], (resized > 127).astype(np.uint8))]


if "test-faults-gray" not in STAGES:
    register_stage("test-faults-gray")(faults_gray_stage)


def pictures(folder: Path, n: int = 8) -> list[Path]:
    """``n`` small PNGs of two classes, each a ramp with its own offset (so every image differs)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"img_{k}.png"
        cv2.imwrite(str(path), (np.add.outer(np.arange(12), np.arange(16)) * 5 + 9 * k).astype(np.uint8))
        paths.append(path)
    return paths


def manifest_of(paths) -> object:
    return make_manifest([{"path": str(p), "label": ("COV", "Normal")[k % 2], "group": f"g{k}",
                           "split": ("train", "val", "test")[k % 3], "source": "t"} for k, p in enumerate(paths)])


def build(manifest, root: Path, **kwargs) -> Cache:
    return build_cache(manifest, get_stage("test-faults-gray"), 16, root, workers=1, progress=False, chunk_size=3, **kwargs)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


# ------------------------------------------------------------------------------------------- disk full
class DiskFull:
    """Fail the ``nth`` file opened for writing whose name contains ``part``: write a few bytes (a real
    write fails part-way), then raise ENOSPC, as a full disk does."""

    def __init__(self, part: str, nth: int = 1):
        self.part, self.nth, self.seen, self.failed = part, nth, 0, None
        self.real_open = builtins.open

    def __call__(self, file, mode="r", *args, **kwargs):
        name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
        if isinstance(name, str) and any(c in mode for c in "wax") and self.part in Path(name).name:
            self.seen += 1
            if self.seen == self.nth:
                with self.real_open(name, "wb") as handle:
                    handle.write(b"partial")
                self.failed = name
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        return self.real_open(file, mode, *args, **kwargs)


@pytest.mark.parametrize("part, nth", [
    ("images.tmp.npy", 1),   # a chunk's array (np.save)
    ("masks.tmp.npy", 2),    # the second chunk's mask array
    ("rows.tmp.csv", 1),     # a chunk's table (pandas)
    (".done.", 2),           # a chunk's done marker (atomic write)
    ("inputs.json", 1),      # the chunk folder's record of the input files
    ("images.u8.tmp", 1),    # the final image array
    ("masks.u8.tmp", 1),     # the final mask array
    ("manifest.csv.", 1),    # the cache's manifest
    ("inputs.csv.", 1),      # the cache's record of the input files
    ("meta.json.", 1),       # meta.json, written last
])
def test_disk_full_at_each_write_site_leaves_no_partial_file_and_a_rerun_finishes(tmp_path, monkeypatch, part, nth):
    manifest = manifest_of(pictures(tmp_path / "img"))
    reference = build(manifest, tmp_path / "reference")
    full = DiskFull(part, nth)
    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(CovidctError) as caught:
        build(manifest, tmp_path / "cache")
    monkeypatch.undo()
    assert full.failed is not None, f"no write to a file named *{part}* happened"
    message = str(caught.value)
    failed = Path(full.failed).name  # an atomic write (".<name>.<random>.tmp") is named by the file it writes
    named = failed[1:].rsplit(".", 2)[0] if failed.startswith(".") and failed.endswith(".tmp") else failed
    assert f"{named}: disk full" in message and "rerun" in message
    folder = tmp_path / "cache" / reference.path.name
    assert leftovers(folder) == [] and not (folder / "meta.json").exists()
    again = build(manifest, tmp_path / "cache")
    assert (again.path / "images.u8").read_bytes() == (reference.path / "images.u8").read_bytes()
    assert (again.path / "masks.u8").read_bytes() == (reference.path / "masks.u8").read_bytes()


def test_disk_full_in_a_worker_process_is_the_same_named_error(tmp_path, monkeypatch):
    manifest = manifest_of(pictures(tmp_path / "img"))
    monkeypatch.setattr(builtins, "open", DiskFull("masks.tmp.npy", 1))  # forked workers inherit the fault
    with pytest.raises(CovidctError, match=r"chunk_\d{5}\.masks\.tmp\.npy: disk full"):
        build_cache(manifest, get_stage("test-faults-gray"), 16, tmp_path / "cache", workers=2, progress=False, chunk_size=3)
    monkeypatch.undo()
    assert leftovers(next((tmp_path / "cache").iterdir())) == []


def test_disk_full_when_a_chunk_file_is_renamed_into_place(tmp_path, monkeypatch):
    manifest = manifest_of(pictures(tmp_path / "img"))
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if str(source).endswith("chunk_00001.images.tmp.npy"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CovidctError, match=r"chunk_00001\.images\.npy: disk full"):
        build(manifest, tmp_path / "cache")
    monkeypatch.undo()
    folder = next((tmp_path / "cache").iterdir())
    assert leftovers(folder) == []
    assert sorted(p.name for p in (folder / "chunks").glob("*.done")) == ["chunk_00000.done"]  # finished work kept
    CALLS.clear()
    build(manifest, tmp_path / "cache")
    assert len(CALLS) == len(manifest) - 3  # the first chunk was not recomputed


def test_volume_cache_disk_full_is_one_named_error(tmp_path, monkeypatch):
    manifest = write_phantom_volumes(tmp_path / "vol", n=3, shape=(4, 32, 32))
    real = os.posix_fallocate

    def fallocate(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    with pytest.raises(CovidctError, match=r"images\.u8\.tmp: disk full"):
        build_volume_cache(manifest, (4, 32, 32), tmp_path / "cache", progress=False)
    monkeypatch.setattr(os, "posix_fallocate", real)
    folder = next((tmp_path / "cache").iterdir())
    assert leftovers(folder) == []
    cache = build_volume_cache(manifest, (4, 32, 32), tmp_path / "cache", progress=False)
    assert cache.images.shape == (3, 4, 32, 32, 1)


# ------------------------------------------------------------------------------------ killed and concurrent
STAGE_MODULE = """
import time

import cv2
import numpy as np

from covidct.data.windows import to_display
from covidct.preprocess.stages import STAGES, StageOutput, get_stage, register_stage


def slow_gray(image, size):
    with open({calls!r}, "a") as log:
        log.write(image.path + "\\n")
    time.sleep(0.03)
    resized = cv2.resize(to_display(image), (size, size), interpolation=cv2.INTER_AREA)
    return [StageOutput(resized[..., None], (resized > 127).astype(np.uint8))]


if {name!r} not in STAGES:
    register_stage({name!r})(slow_gray)
"""
BUILD_SCRIPT = """
import os
import sys
import time
sys.path[:0] = [{src!r}, {folder!r}]
import pandas as pd
import {module}
from covidct.data.cache import build_cache
from covidct.data.manifest import make_manifest
from covidct.preprocess import get_stage

manifest = make_manifest(pd.read_csv(sys.argv[1], keep_default_na=False).to_dict("records"))
print("ready", flush=True)
while len(sys.argv) > 3 and not os.path.exists(sys.argv[3]):  # a start line shared with another builder
    time.sleep(0.005)
cache = build_cache(manifest, get_stage({name!r}), 16, sys.argv[2], workers=1, progress=False, chunk_size=2)
print(cache.path, flush=True)
"""


def _stage_and_script(tmp_path: Path) -> tuple[str, Path]:
    """A slow stage in a module file (same source, so same cache key, here and in a child process) and a
    script that builds the cache with it; returns (stage name, script)."""
    import importlib.util

    name = f"test-faults-slow-{tmp_path.name}"
    module = f"faults_stage_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{module}.py").write_text(STAGE_MODULE.format(calls=str(tmp_path / "calls.txt"), name=name))
    spec = importlib.util.spec_from_file_location(module, tmp_path / f"{module}.py")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module] = loaded
    spec.loader.exec_module(loaded)
    script = tmp_path / "build_script.py"
    script.write_text(BUILD_SCRIPT.format(src=str(SRC), folder=str(tmp_path), module=module, name=name))
    return name, script


def _start(script: Path, manifest_csv: Path, root: Path, *extra: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.Popen([sys.executable, str(script), str(manifest_csv), str(root), *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _together(script: Path, manifest_csv: Path, root: Path, go: Path) -> list[tuple[int, str, str]]:
    """Two builders of one cache, released at the same moment once both are ready: (code, out, err) each."""
    processes = [_start(script, manifest_csv, root, go) for _ in range(2)]
    for process in processes:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
    go.write_text("go")
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        results.append((process.returncode, out, err))
    return results


def _build_here(manifest, stage: str, root: Path) -> Path:
    return build_cache(manifest, get_stage(stage), 16, root, workers=1, progress=False, chunk_size=2).path


def test_killed_build_then_repaired_file_rebuilds_the_bytes_of_an_uninterrupted_build(tmp_path):
    paths = pictures(tmp_path / "img", n=10)
    manifest = manifest_of(paths)
    manifest_csv = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_csv, index=False)
    stage, script = _stage_and_script(tmp_path)
    seed = int(time.time())
    rng = random.Random(seed)
    process = _start(script, manifest_csv, tmp_path / "cache")
    assert process.stdout.readline().strip() == "ready"
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:  # the first chunk is done: kill at a random point
        chunks = next((tmp_path / "cache").glob("*/chunks"), None)
        if chunks is not None and (chunks / "chunk_00000.done").exists():
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    # The first image (in the finished first chunk) is repaired: new pixels, new size.
    cv2.imwrite(str(paths[0]), np.full((12, 16), 200, np.uint8))
    rebuilt = _build_here(manifest, stage, tmp_path / "cache")
    reference = _build_here(manifest, stage, tmp_path / "reference")
    assert rebuilt.name == reference.name
    assert (rebuilt / "images.u8").read_bytes() == (reference / "images.u8").read_bytes(), f"kill seed {seed}"
    assert (rebuilt / "masks.u8").read_bytes() == (reference / "masks.u8").read_bytes(), f"kill seed {seed}"
    assert np.memmap(rebuilt / "images.u8", np.uint8, "r")[: 16 * 16].max() == 200
    assert leftovers(rebuilt) == [] and not (rebuilt / "chunks").exists()


def test_two_processes_building_one_cache_compute_each_image_once(tmp_path):
    paths = pictures(tmp_path / "img", n=8)
    manifest = manifest_of(paths)
    manifest_csv = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_csv, index=False)
    stage, script = _stage_and_script(tmp_path)
    results = _together(script, manifest_csv, tmp_path / "cache", tmp_path / "go")
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    folders = {out.split()[-1] for _, out, _ in results}
    assert len(folders) == 1
    calls = (tmp_path / "calls.txt").read_text().split()
    assert sorted(calls) == sorted(str(p) for p in paths)  # each image once, by one of the two
    reference = _build_here(manifest, stage, tmp_path / "reference")
    assert (Path(folders.pop()) / "images.u8").read_bytes() == (reference / "images.u8").read_bytes()


VOLUME_SCRIPT = """
import os, sys, time
sys.path.insert(0, {src!r})
import pandas as pd
import covidct.data.volumes as volumes
from covidct.data.manifest import make_manifest

original = volumes.preprocess_volume

def counted(path, shape, spacing=None):
    with open({calls!r}, "a") as log:
        log.write(str(path) + "\\n")
    time.sleep(0.2)
    return original(path, shape, spacing)

volumes.preprocess_volume = counted
manifest = make_manifest(pd.read_csv(sys.argv[1], keep_default_na=False, dtype={{"group": str}}).to_dict("records"))
print("ready", flush=True)
while not os.path.exists(sys.argv[3]):  # a start line shared with another builder
    time.sleep(0.005)
cache = volumes.build_volume_cache(manifest, (4, 32, 32), sys.argv[2], progress=False)
print(cache.path, flush=True)
"""


def test_two_processes_building_one_volume_cache_compute_each_volume_once(tmp_path):
    manifest = write_phantom_volumes(tmp_path / "vol", n=4, shape=(4, 32, 32))
    manifest_csv = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_csv, index=False)
    script = tmp_path / "volume_script.py"
    script.write_text(textwrap.dedent(VOLUME_SCRIPT.format(src=str(SRC), calls=str(tmp_path / "calls.txt"))))
    results = _together(script, manifest_csv, tmp_path / "cache", tmp_path / "go")
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert len({out.split()[-1] for _, out, _ in results}) == 1
    assert sorted((tmp_path / "calls.txt").read_text().split()) == sorted(manifest["path"])


# --------------------------------------------------------------------------------------- damaged caches
def _damage_meta_empty(folder: Path) -> str:
    (folder / "meta.json").write_text("")
    return "meta.json: empty or corrupt"


def _damage_meta_cut(folder: Path) -> str:
    text = (folder / "meta.json").read_text()
    (folder / "meta.json").write_text(text[: len(text) // 2])
    return "meta.json: empty or corrupt"


def _damage_meta_foreign(folder: Path) -> str:
    (folder / "meta.json").write_text(json.dumps({"name": "some other tool"}))
    return "meta.json: not covidct cache metadata"


def _damage_images_truncated(folder: Path) -> str:
    data = (folder / "images.u8").read_bytes()
    (folder / "images.u8").write_bytes(data[:-100])
    return "images.u8: 1948 bytes, but meta.json says 2048 (truncated)"


def _damage_masks_missing(folder: Path) -> str:
    (folder / "masks.u8").unlink()
    return "masks.u8: missing"


@pytest.mark.parametrize("damage", [_damage_meta_empty, _damage_meta_cut, _damage_meta_foreign,
                                    _damage_images_truncated, _damage_masks_missing])
def test_a_damaged_cache_is_refused_by_open_and_rebuilt_by_build(tmp_path, caplog, damage):
    manifest = manifest_of(pictures(tmp_path / "img"))
    first = build(manifest, tmp_path / "cache")
    expected = (first.path / "images.u8").read_bytes()
    del first
    folder = next((tmp_path / "cache").iterdir())
    reason = damage(folder)
    with pytest.raises(CovidctError, match="rebuild") as caught:
        Cache.open(folder)
    assert reason in str(caught.value)
    CALLS.clear()
    with caplog.at_level(logging.WARNING, logger="covidct.data.cache"):
        again = build(manifest, tmp_path / "cache")
    assert len(CALLS) == len(manifest)
    assert any("rebuilding cache" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert (again.path / "images.u8").read_bytes() == expected


def test_a_cut_manifest_csv_is_refused(tmp_path):
    manifest = manifest_of(pictures(tmp_path / "img"))
    folder = build(manifest, tmp_path / "cache").path
    lines = (folder / "manifest.csv").read_text().splitlines()
    (folder / "manifest.csv").write_text("\n".join(lines[:4]) + "\n")
    with pytest.raises(CovidctError, match=r"manifest\.csv: 3 rows, but meta\.json says 8"):
        Cache.open(folder)


def test_a_truncated_volume_cache_is_rebuilt(tmp_path, caplog):
    manifest = write_phantom_volumes(tmp_path / "vol", n=3, shape=(4, 32, 32))
    cache = build_volume_cache(manifest, (4, 32, 32), tmp_path / "cache", progress=False)
    folder, expected = cache.path, (cache.path / "images.u8").read_bytes()
    del cache
    (folder / "images.u8").write_bytes(expected[:1000])
    with caplog.at_level(logging.WARNING, logger="covidct.data.volumes"):
        again = build_volume_cache(manifest, (4, 32, 32), tmp_path / "cache", progress=False)
    assert any("images.u8: 1000 bytes" in r.getMessage() for r in caplog.records)
    assert (again.path / "images.u8").read_bytes() == expected


# ----------------------------------------------------------------------------------------- stale caches
def test_a_replaced_input_file_rebuilds_the_cache_and_says_which(tmp_path, caplog):
    paths = pictures(tmp_path / "img")
    manifest = manifest_of(paths)
    first = build(manifest, tmp_path / "cache")
    assert first.images[2, 0, 0, 0] != 77
    cv2.imwrite(str(paths[2]), np.full((12, 16), 77, np.uint8))  # repaired: other pixels, other size
    CALLS.clear()
    with caplog.at_level(logging.WARNING, logger="covidct.data.cache"):
        again = build(manifest, tmp_path / "cache")
    assert again.path == first.path and len(CALLS) == len(manifest)
    message = next(r.getMessage() for r in caplog.records if "rebuilding cache" in r.getMessage())
    assert "1 input file(s) changed" in message and str(paths[2]) in message
    assert again.images[2, 0, 0, 0] == 77


def test_same_size_new_modification_time_also_rebuilds(tmp_path):
    paths = pictures(tmp_path / "img")
    manifest = manifest_of(paths)
    build(manifest, tmp_path / "cache")
    data = bytearray(paths[1].read_bytes())
    stat = paths[1].stat()
    paths[1].write_bytes(bytes(data))  # same bytes, same size, a new modification time
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    CALLS.clear()
    build(manifest, tmp_path / "cache")
    assert len(CALLS) == len(manifest)


def test_rebuild_flag_recomputes_an_up_to_date_cache(tmp_path):
    manifest = manifest_of(pictures(tmp_path / "img"))
    first = build(manifest, tmp_path / "cache")
    CALLS.clear()
    build(manifest, tmp_path / "cache")
    assert CALLS == []
    again = build(manifest, tmp_path / "cache", rebuild=True)
    assert len(CALLS) == len(manifest) and again.path == first.path
    np.testing.assert_array_equal(again.images, first.images)


def test_unfinished_chunks_of_changed_files_are_discarded(tmp_path, monkeypatch):
    paths = pictures(tmp_path / "img")
    manifest = manifest_of(paths)
    real = os.replace

    def stop_at_assembly(source, target, *args, **kwargs):
        if str(source).endswith("images.u8.tmp"):
            raise KeyboardInterrupt
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", stop_at_assembly)
    with pytest.raises(KeyboardInterrupt):
        build(manifest, tmp_path / "cache")  # every chunk done, the cache not finished
    monkeypatch.undo()
    cv2.imwrite(str(paths[0]), np.full((12, 16), 33, np.uint8))
    CALLS.clear()
    cache = build(manifest, tmp_path / "cache")
    assert len(CALLS) == len(manifest) and cache.images[0, 0, 0, 0] == 33


def test_a_foreign_file_in_the_chunk_folder_is_never_deleted(tmp_path):
    manifest = manifest_of(pictures(tmp_path / "img"))
    folder = build(manifest, tmp_path / "cache").path
    (folder / "chunks").mkdir()
    (folder / "chunks" / "thesis.txt").write_text("mine")
    with pytest.raises(CovidctError, match=r"chunks: this cache chunk folder holds files covidct did not write"):
        build(manifest, tmp_path / "cache", rebuild=True)
    assert (folder / "chunks" / "thesis.txt").read_text() == "mine"
