"""Writing files safely: atomic writes, removal of covidct's own folders only, and OS errors in words.

The one implementation of these rules for every writer of covidct (caches, downloads, run folders through
``covidct.runs``, reports):

- **Atomic writes.** A file is written to a temporary name beside it (``.<name>.<random>.tmp[<suffix>]``)
  and renamed over the target (``os.replace``), so a reader sees the old file or the new one, never half
  of one. A failed write removes its temporary file (``atomic_path``, ``atomic_write_text``,
  ``atomic_write_json``, ``removing_on_error``).
- **Guarded removal.** covidct deletes a folder only when it can tell that covidct made it: the folder
  holds a marker file covidct wrote there (``remove_owned_tree``), or every entry matches the names
  covidct writes. Anything else is refused with the folder named.
- **One line per OS error.** A full disk, a read-only or permission-denied folder, a path that is a
  file where a folder is needed: ``os_error_message`` turns the ``OSError`` into "<file>: <cause>. <fix>"
  (used by ``covidct.cli.main`` and by the writers here, which raise it as a ``CovidctError``).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from covidct.errors import CovidctError

#: errno -> (cause, fix) for the OS errors a user can act on.
_OS_ERRORS = {
    errno.ENOSPC: ("disk full", "free space on that disk or write to another one (e.g. --cache-root / --run-dir / "
                                "--out), then rerun; finished work is kept"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota or write to another disk, then rerun"),
    errno.EROFS: ("read-only file system", "write to a folder on a writable disk (e.g. --cache-root / --run-dir / "
                                           "--out)"),
    errno.EACCES: ("permission denied", "choose a folder you can write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you own, or fix its permissions"),
    errno.EISDIR: ("is a folder, not a file", "give a file path there"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "give a folder path there (or move the file away)"),
    errno.EEXIST: ("already exists", "move it away or choose another path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or use fewer workers"),
    errno.EIO: ("input/output error (failing disk or network share)", "check the disk, then rerun"),
}


def os_error_message(error: OSError, path: str | os.PathLike | None = None, *, name_path: bool = False) -> str:
    """One line for an ``OSError``: ``"<file>: <cause>. <fix>."``.

    Args:
        error: the error (its ``filename`` names the file when the OS gave one).
        path: the file or folder to name when ``error`` carries none.
        name_path: name ``path`` even when the error names another file (an atomic write names the file
            it writes, not its temporary name).

    Returns:
        The message, e.g. ``"/cache/x/images.u8.tmp: disk full. Free space on that disk ..."``.
    """
    where = path if (name_path and path is not None) or error.filename is None else error.filename
    cause, fix = _OS_ERRORS.get(error.errno, (error.strerror or str(error) or error.__class__.__name__, ""))
    text = f"{where}: {cause}" if where is not None else cause
    return f"{text}. {fix[0].upper() + fix[1:]}." if fix else f"{text}."


def is_disk_full(error: BaseException) -> bool:
    """True for ``ENOSPC`` / ``EDQUOT`` (no space left, quota exceeded)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def removing_on_error(*paths: str | os.PathLike, what: str | os.PathLike | None = None):
    """Remove ``paths`` (partial files) when the block raises; an ``OSError`` becomes a ``CovidctError``.

    Args:
        *paths: files the block writes; each is removed (if present) when the block fails.
        what: the file named in the message when the OS error names none (default: the first path).

    Raises:
        CovidctError: for an ``OSError`` in the block (``os_error_message``); other errors pass unchanged
            (after the partial files are removed).
    """
    try:
        yield
    except BaseException as error:
        for path in paths:
            with contextlib.suppress(OSError):
                Path(path).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CovidctError(os_error_message(error, what if what is not None else (paths[0] if paths else None))) \
                from error
        raise


def write_error(error: OSError, path: str | os.PathLike) -> CovidctError:
    """A one-line ``CovidctError`` for a failed write of ``path`` (``os_error_message`` naming ``path``)."""
    return CovidctError(os_error_message(error, path, name_path=True))


def _remove_temporary(tmp: str | os.PathLike) -> None:
    """Remove the temporary path ``atomic_path`` named (a file, or a folder a writer made there)."""
    with contextlib.suppress(OSError):
        if os.path.isdir(tmp) and Path(tmp).name.startswith("."):  # guarded: only the name mkstemp gave
            shutil.rmtree(tmp)
        else:
            os.remove(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name is ``.<name>.<random>.tmp<suffix>`` in the same folder (so ``os.replace`` is atomic).
    An ``OSError`` (full disk, read-only folder, ...) becomes a ``CovidctError`` naming ``path``; the previous
    version of the file (if any) is kept either way.

    Args:
        path: the final file.
        suffix: suffix of the temporary name (``.keras`` for Keras, which checks extensions).

    Raises:
        CovidctError: the folder cannot be created or written, or the write failed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
        os.close(handle)
        os.remove(tmp)
    except OSError as error:
        raise write_error(error, path) from error
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as error:
        _remove_temporary(tmp)
        raise write_error(error, path) from error
    except BaseException:
        _remove_temporary(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (``atomic_path``), flushed to the disk before the rename.

    Raises:
        CovidctError: the disk is full or the folder is not writable (the temporary file is removed).
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def jsonable(value):
    """``value`` with NumPy scalars/arrays, paths and non-finite floats turned into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented JSON atomically (NumPy values made plain, NaN written as null)."""
    return atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove that a file can be written in it (before any long computation).

    Raises:
        CovidctError: the folder cannot be created or written (read-only, not yours, full disk).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".covidct-write-test-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise write_error(error, folder) from error
    return folder


def remove_owned_tree(folder: str | os.PathLike, marker: str | None = None,
                      allowed: Iterable[str] | None = None, what: str = "folder") -> bool:
    """Delete ``folder`` only if covidct made it: it holds ``marker``, or every entry passes ``allowed``.

    Args:
        folder: the folder to delete (a missing folder is fine: nothing happens).
        marker: a file name covidct writes into every folder of this kind when it creates it.
        allowed: ``fnmatch`` patterns of the only names covidct writes there (checked on every entry,
            recursively, when ``marker`` is None or missing).
        what: what the folder is, for the message.

    Returns:
        True when the folder was removed, False when it did not exist.

    Raises:
        CovidctError: the path is a file or a link, or the folder holds something covidct did not write.
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return False
    if folder.is_symlink() or not folder.is_dir():
        raise CovidctError(f"{folder}: expected the {what} covidct made, found a {'link' if folder.is_symlink() else 'file'}; "
                           "covidct deletes only folders it made. Move it away by hand.")
    owned = marker is not None and (folder / marker).is_file()
    if not owned and allowed is not None:
        patterns = list(allowed)
        owned = all(any(fnmatch.fnmatch(entry.name, pattern) for pattern in patterns) for entry in folder.rglob("*"))
    if not owned:
        raise CovidctError(
            f"{folder}: this {what} holds files covidct did not write (no {marker or 'covidct layout'} found), so it is "
            "not deleted. Move it away by hand, or point covidct at another folder."
        )
    try:
        shutil.rmtree(folder)
    except OSError as error:
        raise CovidctError(os_error_message(error, folder)) from error
    return True
