"""CLI faults: the file system says no, bad destinations, incomplete audits.

What may fail, and what then:

- an ``OSError`` from the operating system reaches ``covidct``'s top level (disk full, read-only file system,
  permission denied, a folder where a file belongs or the reverse): one line ``covidct <cmd>: error: <file>:
  <cause>. <fix>.`` and exit code 2, no traceback; an ``OSError`` without an errno (raised by a library, a
  bug) keeps its traceback;
- ``covidct preprocess`` meets a full disk or an unwritable cache folder: one line naming the file;
- ``covidct download --dest`` names a file: one line, nothing downloaded;
- ``covidct audit --strict`` could not read some files: exit 1 (the audit is incomplete), the verdict says so.
"""

from __future__ import annotations

import builtins
import errno
import os
import re
import sys

import cv2
import numpy as np
import pytest

import covidct.data.cache
from covidct.cli import main


@pytest.mark.parametrize("code, cause, fix", [
    (errno.ENOSPC, "disk full", "Free space on that disk"),
    (errno.EROFS, "read-only file system", "Write to a folder on a writable disk"),
    (errno.EACCES, "permission denied", "Choose a folder you can write to"),
    (errno.EISDIR, "is a folder, not a file", "Give a file path there"),
    (errno.ENOTDIR, "a part of the path is a file, not a folder", "Give a folder path there"),
])
def test_os_errors_at_the_top_level_are_one_line_and_exit_2(monkeypatch, capsys, tmp_path, code, cause, fix):
    target = tmp_path / "cache" / "images.u8.tmp"

    def failing(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(covidct.data.cache, "preprocess_dataset", failing)
    assert main(["preprocess", "--dataset", "phantom", "--cache-root", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"covidct preprocess: error: {target}: {cause}. {fix}")


def test_an_os_error_without_errno_is_a_bug_and_keeps_its_traceback(monkeypatch, tmp_path):
    def failing(*args, **kwargs):
        raise OSError("library said no")

    monkeypatch.setattr(covidct.data.cache, "preprocess_dataset", failing)
    with pytest.raises(OSError, match="library said no"):
        main(["preprocess", "--dataset", "phantom", "--cache-root", str(tmp_path / "cache")])


def test_os_error_message_without_a_file_name():
    from covidct.data.writes import os_error_message

    assert os_error_message(OSError(errno.ENOSPC, "No space left on device"), "/data/x") == (
        "/data/x: disk full. Free space on that disk or write to another one (e.g. --cache-root / --run-dir / --out), "
        "then rerun; finished work is kept.")
    assert os_error_message(OSError(errno.ENOSPC, "No space left on device")).startswith("disk full. Free space")


def _tree(root, n=6):
    for k in range(n):
        path = root / ("COV", "Normal")[k % 2] / f"p{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((10, 10), 20 * k + 5, np.uint8))


@pytest.mark.filterwarnings("ignore:No body found")
def test_cli_preprocess_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    _tree(tmp_path / "data")
    real_open = builtins.open

    def full(file, mode="r", *args, **kwargs):
        if "w" in mode and str(file).endswith(".images.tmp.npy"):
            with real_open(file, "wb") as handle:
                handle.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    args = ["preprocess", "--dataset", "folder", "--root", str(tmp_path / "data"), "--stage", "original", "--size", "8",
            "--cache-root", str(tmp_path / "cache"), "--workers", "1"]
    assert main(args) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err  # also holds the progress bar
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("covidct preprocess:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("covidct preprocess: error: ")
    assert "chunk_00000.images.tmp.npy: disk full. Free space on that disk" in lines[0]
    assert [p.name for p in (tmp_path / "cache").rglob("*.tmp*")] == []
    assert main(args) == 0 and main([*args, "--rebuild"]) == 0  # room again: finishes; --rebuild recomputes


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_cli_preprocess_into_a_read_only_cache_folder(tmp_path, capsys):
    _tree(tmp_path / "data")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o555)
    try:
        assert main(["preprocess", "--dataset", "folder", "--root", str(tmp_path / "data"), "--stage", "original",
                     "--size", "8", "--cache-root", str(tmp_path / "cache"), "--workers", "1"]) == 2
    finally:
        (tmp_path / "cache").chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith(f"covidct preprocess: error: cannot write the cache: {tmp_path / 'cache'}")
    assert "permission denied" in err


@pytest.mark.filterwarnings("ignore:No body found")
def test_cli_preprocess_into_an_unwritable_cache_folder_injected(tmp_path, monkeypatch, capsys):
    """The same as above where the tests run as root: the folder cannot be made (EROFS injected)."""
    _tree(tmp_path / "data")
    real_mkdir = type(tmp_path).mkdir

    def mkdir(self, *args, **kwargs):
        if "cache" in self.parts:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "mkdir", mkdir)
    assert main(["preprocess", "--dataset", "folder", "--root", str(tmp_path / "data"), "--stage", "original",
                 "--size", "8", "--cache-root", str(tmp_path / "cache"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"covidct preprocess: error: cannot write the cache: {tmp_path / 'cache'}")
    assert "read-only file system. Write to a folder on a writable disk" in err


def test_cli_download_dest_that_is_a_file(tmp_path, capsys):
    dest = tmp_path / "notes.txt"
    dest.write_text("mine")
    assert main(["download", "covid-ct", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err == (f"covidct download: error: {dest} is a file, not a folder; --dest is the parent folder of the "
                   "datasets (the data goes to DEST/<dataset>). Give a folder, e.g. --dest data/raw.\n")
    assert dest.read_text() == "mine"
    assert main(["download", "covid-ct", "--dest", str(dest / "sub")]) == 2
    assert f"{dest} (a part of {dest / 'sub'}) is a file, not a folder" in capsys.readouterr().err


def test_cli_audit_strict_fails_when_files_are_unreadable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(5)
    for k in range(8):
        path = tmp_path / "d" / ("COV", "Normal")[k % 2] / f"p{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (32, 32), dtype=np.uint8))
    args = ["audit", "folder", "--root", str(tmp_path / "d"), "--out", str(tmp_path / "out"), "--strict"]
    assert main(args) == 0
    (tmp_path / "d" / "COV" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "**1 file(s) could not be read**: they were not checked, so the audit is incomplete" in out
    assert main(args[:-1]) == 0  # without --strict the report is written and the exit code stays 0


if sys.platform == "win32":  # pragma: no cover
    pytest.skip("POSIX file-system semantics", allow_module_level=True)
