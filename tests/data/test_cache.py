"""Cache: memmaps aligned with the manifest, reuse, resume, parallel == serial, bad files skipped."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from covidct.cli import main
from covidct.data.cache import Cache, build_cache
from covidct.data.manifest import make_manifest
from covidct.data.windows import to_display
from covidct.errors import CovidctError
from covidct.preprocess.stages import STAGES, StageOutput, get_stage, register_stage

CALLS: list[str] = []
INTERRUPT_AFTER: list[int] = []


def _resize(image, size):
    return cv2.resize(to_display(image), (size, size), interpolation=cv2.INTER_AREA)


def gray_stage(image, size):
    """Test stage: display image resized, mask = pixels above 127."""
    CALLS.append(image.path)
    if INTERRUPT_AFTER and len(CALLS) > INTERRUPT_AFTER[0]:
        raise KeyboardInterrupt
    resized = _resize(image, size)
    return [StageOutput(resized[..., None], (resized > 127).astype(np.uint8))]


def variable_stage(image, size):
    """Test stage with a variable count: dark images give one sample, bright ones two halves."""
    resized = _resize(image, size)
    mask = np.zeros((size, size), np.uint8)
    if resized.mean() < 128:
        return [StageOutput(np.repeat(resized[..., None], 2, axis=2), mask)]
    return [StageOutput(np.stack([resized, 255 - resized], axis=2), mask, suffix) for suffix in ("left", "right")]


for _name, _fn in (("test-data-gray", gray_stage), ("test-data-variable", variable_stage)):
    if _name not in STAGES:
        register_stage(_name)(_fn)


def dataset(tmp_path: Path, n: int = 12, bad: bool = False):
    rows = []
    for k in range(n):
        label = ("COV", "Normal")[k % 2]
        path = tmp_path / "img" / f"{label}_{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        value = 40 + 15 * k
        cv2.imwrite(str(path), np.full((20, 30), value, np.uint8))
        rows.append({"path": str(path), "label": label, "group": f"g{k // 2}", "split": ("train", "val", "test")[k % 3],
                     "source": "t"})
    if bad:
        truncated = tmp_path / "img" / "cut.png"
        truncated.write_bytes(cv2.imencode(".png", np.eye(64, dtype=np.uint8))[1].tobytes()[:60])
        empty = tmp_path / "img" / "empty.png"
        empty.write_bytes(b"")
        rows += [{"path": str(truncated), "label": "COV", "group": "gx", "split": "train", "source": "t"},
                 {"path": str(empty), "label": "Normal", "group": "gy", "split": "test", "source": "t"}]
    return make_manifest(rows)


def test_cache_matches_stage_and_manifest(tmp_path):
    manifest = dataset(tmp_path)
    cache = build_cache(manifest, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=1, progress=False, chunk_size=5)
    assert cache.images.shape == (12, 16, 16, 1) and cache.images.dtype == np.uint8
    assert cache.masks.shape == (12, 16, 16)
    # A constant image stays constant through INTER_AREA resizing.
    np.testing.assert_array_equal(cache.images[:, 0, 0, 0], [40 + 15 * k for k in range(12)])
    np.testing.assert_array_equal(cache.masks[:, 3, 3], [int(40 + 15 * k > 127) for k in range(12)])
    assert cache.manifest["path"].tolist() == manifest["path"].tolist()
    np.testing.assert_array_equal(cache.indices("val"), [1, 4, 7, 10])
    with pytest.raises(CovidctError, match="Did you mean: test"):
        cache.indices("tset")
    reopened = Cache.open(cache.path)
    np.testing.assert_array_equal(reopened.images, cache.images)
    assert json.loads((cache.path / "meta.json").read_text())["counts"] == {"COV": 6, "Normal": 6}


def test_unchanged_inputs_reuse_and_changed_inputs_rebuild(tmp_path):
    manifest = dataset(tmp_path)
    first = build_cache(manifest, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=1, progress=False)
    CALLS.clear()
    again = build_cache(manifest, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=1, progress=False)
    assert again.path == first.path and CALLS == []
    changed = manifest.assign(label=manifest["label"].replace({"COV": "NonCOV"}))
    assert build_cache(changed, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=1, progress=False).path != first.path
    assert build_cache(manifest, get_stage("test-data-gray"), 24, tmp_path / "cache", workers=1, progress=False).path != first.path


def test_interrupted_build_resumes_without_redoing_chunks(tmp_path):
    manifest = dataset(tmp_path)
    CALLS.clear()
    INTERRUPT_AFTER[:] = [9]  # two chunks of 4 finish, the third is interrupted at its second image
    try:
        with pytest.raises(KeyboardInterrupt):
            build_cache(manifest, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=1, progress=False, chunk_size=4)
    finally:
        INTERRUPT_AFTER.clear()
    CALLS.clear()
    cache = build_cache(manifest, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=1, progress=False, chunk_size=4)
    assert sorted(CALLS) == sorted(manifest["path"][8:])  # only the unfinished chunk was recomputed
    np.testing.assert_array_equal(cache.images[:, 0, 0, 0], [40 + 15 * k for k in range(12)])
    assert not (cache.path / "chunks").exists()


def test_parallel_equals_serial_with_variable_outputs(tmp_path):
    manifest = dataset(tmp_path)
    serial = build_cache(manifest, get_stage("test-data-variable"), 16, tmp_path / "a", workers=1, progress=False, chunk_size=3)
    parallel = build_cache(manifest, get_stage("test-data-variable"), 16, tmp_path / "b", workers=2, progress=False, chunk_size=3)
    bright = [40 + 15 * k >= 128 for k in range(12)]
    assert len(serial) == 12 + sum(bright) and serial.images.shape[3] == 2
    np.testing.assert_array_equal(serial.images, parallel.images)
    assert serial.manifest.equals(parallel.manifest)
    assert serial.manifest["suffix"].tolist().count("left") == sum(bright)
    assert serial.manifest["source_row"].tolist() == parallel.manifest["source_row"].tolist()


def test_corrupt_files_are_listed_and_skipped(tmp_path):
    manifest = dataset(tmp_path, bad=True)
    cache = build_cache(manifest, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=2, progress=False, chunk_size=4)
    assert len(cache) == 12
    failed = dict(zip(cache.failed["path"].map(lambda p: Path(p).name), cache.failed["error"]))
    assert sorted(failed) == ["cut.png", "empty.png"]
    assert "cannot decode" in failed["cut.png"] and "empty" in failed["empty.png"]


def test_class_with_no_usable_image_is_an_error(tmp_path):
    manifest = dataset(tmp_path, bad=True)
    only_bad_normal = manifest[(manifest["label"] == "COV") | manifest["path"].str.endswith("empty.png")]
    with pytest.raises(CovidctError, match=r"\['Normal'\] have no usable image"):
        build_cache(only_bad_normal, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=1, progress=False)


def test_volume_slices_and_target_masks(tmp_path):
    volume = np.stack([np.full((8, 8), v, np.int16) for v in (-1350, -600, 150)], axis=2)  # z last (RAS)
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    mask = tmp_path / "mask.png"
    target = np.zeros((8, 8), np.uint8)
    target[:, :4] = 255
    cv2.imwrite(str(mask), target)
    manifest = make_manifest([{"path": str(path), "label": "COV", "group": "p", "split": "", "source": "t",
                               "slice_index": k, "mask_path": str(mask)} for k in range(3)])
    cache = build_cache(manifest, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=1, progress=False)
    np.testing.assert_array_equal(cache.images[:, 5, 5, 0], [0, 128, 255])  # lung window of -1350/-600/150 HU
    assert cache.targets is not None
    np.testing.assert_array_equal(cache.targets[0, 0], [1] * 8 + [0] * 8)


def test_targets_follow_the_full_field_stage_geometry(tmp_path):
    from covidct.preprocess.pipelines import fit_to_size

    image = tmp_path / "wide.png"
    cv2.imwrite(str(image), np.full((20, 36), 90, np.uint8))
    target = np.zeros((20, 36), np.uint8)
    target[3:15, 5:30] = 255
    cv2.imwrite(str(tmp_path / "wide_mask.png"), target)
    manifest = make_manifest([{"path": str(image), "mask_path": str(tmp_path / "wide_mask.png"), "label": "COV",
                               "group": "p", "split": "", "source": "t"}])
    cache = build_cache(manifest, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=1, progress=False)
    _, expected = fit_to_size(np.zeros((20, 36), np.uint8), (target > 0).astype(np.uint8), 16)
    np.testing.assert_array_equal(cache.targets[0], expected)


def test_cli_preprocess(tmp_path, capsys):
    for k in range(12):
        label = ("COV", "Normal")[k % 2]
        path = tmp_path / "data" / label / f"p{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((10, 10), 20 * k, np.uint8))
    code = main(["preprocess", "--dataset", "folder", "--root", str(tmp_path / "data"), "--stage", "test-data-gray",
                 "--size", "8", "--cache-root", str(tmp_path / "cache"), "--workers", "1"])
    assert code == 0
    assert "12 samples (12, 8, 8, 1), 0 file(s) skipped" in capsys.readouterr().out
    assert main(["preprocess", "--dataset", "folder", "--root", str(tmp_path / "data"), "--stage", "lungz"]) == 2


def test_a_second_builder_waits_for_the_first_and_reuses_its_cache(tmp_path):
    """Two processes building one cache used to race (one removed the chunks the other was writing). Now a
    builder holds ``.build.lock`` (flock: separate opens conflict even in one process): while it is held,
    another ``build_cache`` of the same cache waits, computes nothing, and then reuses the finished cache."""
    import fcntl
    import threading

    manifest = dataset(tmp_path)
    first = build_cache(manifest, get_stage("test-data-gray"), 16, tmp_path / "cache", workers=1, progress=False, chunk_size=5)
    folder = tmp_path / "other" / first.path.name  # the same key in another cache root, not built yet
    folder.mkdir(parents=True)
    CALLS.clear()
    result = {}
    with open(folder / ".build.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # "another process" is building
        waiter = threading.Thread(target=lambda: result.update(cache=build_cache(
            manifest, get_stage("test-data-gray"), 16, tmp_path / "other", workers=1, progress=False, chunk_size=5)))
        waiter.start()
        waiter.join(timeout=1.5)
        assert waiter.is_alive() and CALLS == [] and not (folder / "chunks").exists()
        # The holder finishes: a complete cache appears in the folder, then the lock is released.
        for item in first.path.iterdir():
            if item.is_file():
                (folder / item.name).write_bytes(item.read_bytes())
        fcntl.flock(handle, fcntl.LOCK_UN)
    waiter.join(timeout=30)
    assert not waiter.is_alive() and CALLS == []  # reused, not rebuilt
    assert result["cache"].path == folder
    np.testing.assert_array_equal(result["cache"].images, first.images)


def test_stage_warnings_become_one_line_per_chunk(tmp_path, monkeypatch, caplog):
    """A volume's end slices hold no lungs: the stage's warnings are summed up per chunk, not printed per slice."""
    import logging
    import warnings

    import cv2

    from covidct.data.cache import _process_chunk
    from covidct.preprocess import stages

    image_path = tmp_path / "slice.png"
    cv2.imwrite(str(image_path), np.full((32, 32), 90, np.uint8))

    def noisy_stage(image, size):
        warnings.warn("Suspicious lung mask (classical): no lung found.", UserWarning, stacklevel=1)
        return [stages.StageOutput(np.zeros((size, size, 1), np.uint8), np.ones((size, size), np.uint8), "")]

    rows = [{"path": str(image_path), "slice_index": -1, "_row": index} for index in range(3)]
    job = {"stage": noisy_stage, "stage_name": "noisy", "size": 16, "folder": str(tmp_path), "chunk": 0, "rows": rows, "has_targets": False}
    with caplog.at_level(logging.WARNING, logger="covidct.data.cache"), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes as a raw warning
        assert _process_chunk(job) == (0, 3, 0)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["3 slice(s) of 1 file(s) with a UserWarning, e.g. Suspicious lung mask (classical): no lung found."]
