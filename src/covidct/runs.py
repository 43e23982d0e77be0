"""Run folders: the marker that says covidct made a folder, the lock of its one writer, atomic files, status.

Every folder that ``train(cfg)`` writes a run into carries a marker file, ``.covidct-run``, written before
anything else. covidct deletes only inside folders that carry it: ``--overwrite`` on a folder without the
marker (a folder of the user's) is refused with a message naming the folder, and so is training into a
non-empty folder without it. One process at a time writes a run: ``run_lock`` holds ``.covidct-run.lock``
(host and process id) for the whole run; a second process stops at once with an error naming the owner, and
a lock left by a process of this host that no longer runs is taken over. Every file of a run is written
atomically (``atomic_path``: a temporary file in the same folder, then ``os.replace``), so a crash, a kill or
a full disk leaves the previous version or the complete new one, never half a file. The atomic writers are
the one implementation in ``covidct.data.writes``, re-exported here under the names run code uses
(``write_text_atomic``, ``write_json_atomic``). ``docs/data-safety.md``
describes the whole scheme.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path

from covidct import __version__
from covidct.data.writes import atomic_path, check_writable, jsonable, write_error  # noqa: F401 (re-exported)
from covidct.data.writes import atomic_write_json as write_json_atomic
from covidct.data.writes import atomic_write_text as write_text_atomic  # noqa: F401 (re-exported)
from covidct.errors import CovidctError

log = logging.getLogger(__name__)

MARKER_FILE = ".covidct-run"
LOCK_FILE = ".covidct-run.lock"
MODEL_FILE = "model.keras"
STATE_FILE = "train_state.npz"
RUN_FILE = "run.json"
HISTORY_FILE = "history.csv"
CONFIG_FILE = "config.yaml"

#: errno values of a write that failed for want of room or of permission (reported in words, not raised raw).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}

# ------------------------------------------------------------------------------------------------------
# Reading a run folder
# ------------------------------------------------------------------------------------------------------


def read_run_info(run_dir: str | os.PathLike) -> dict:
    """``run.json`` of a run folder as a dict (``{}`` when there is none).

    Raises:
        CovidctError: ``run.json`` exists but is not a JSON object (truncated, edited, another program's).
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        info = error
    if not isinstance(info, dict):
        cause = f"{type(info).__name__}: {info}" if isinstance(info, Exception) else f"a JSON {type(info).__name__}"
        raise CovidctError(
            f"{path} is not a readable run record ({cause}): it is truncated or was not written by covidct. "
            f"Retrain the run (covidct train ... --run-dir {Path(run_dir)} --overwrite) or restore the file."
        )
    return info


def run_status(run_dir: str | os.PathLike) -> str:
    """``"finished"``, ``"interrupted"`` (resumable state), ``"failed"`` or ``"new"``.

    A run that fits several units (segmentation folds or lung-input variants) writes ``run.json`` with
    status ``"running"`` first, so stopping between units also counts as interrupted.

    Raises:
        CovidctError: an unreadable ``run.json`` (see ``read_run_info``).
    """
    run_dir = Path(run_dir)
    status = read_run_info(run_dir).get("status", "")
    if status == "finished":
        return "finished"
    if (run_dir / STATE_FILE).is_file() or status == "running":
        return "interrupted"
    if (run_dir / RUN_FILE).is_file():
        return "failed"
    return "new"


# ------------------------------------------------------------------------------------------------------
# The marker: which folders covidct may delete in
# ------------------------------------------------------------------------------------------------------


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder that covidct created for a run (it carries ``.covidct-run``)."""
    return (Path(path) / MARKER_FILE).is_file()


def _own_file(name: str) -> bool:
    """covidct's marker and lock files (``.covidct-run``, its lock, a unit's ``.fold_<k>.lock``)."""
    return name.startswith(MARKER_FILE) or (name.startswith(".") and name.endswith(".lock"))


def check_run_folder(run_dir: str | os.PathLike) -> bool:
    """Refuse a ``run_dir`` that covidct must not write into; returns whether it holds anything yet.

    A run folder is a folder with the marker, or an empty one (created, or adopted, by the run).

    Raises:
        CovidctError: ``run_dir`` is a file, or a non-empty folder without the marker.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise CovidctError(f"Run folder {run_dir} is a file, not a folder; choose another --run-dir.")
    held = sorted(p.name for p in run_dir.iterdir() if not _own_file(p.name))
    if held and not is_run_dir(run_dir):
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise CovidctError(
            f"{run_dir} is not a covidct run folder (no {MARKER_FILE} marker) and holds {shown}: covidct never "
            "writes into, nor deletes, a folder it did not create. Choose another --run-dir (or name / output_root). "
            f"A run folder written by an older covidct can be claimed with `touch {run_dir / MARKER_FILE}`."
        )
    return bool(held)


def mark_run_dir(run_dir: str | os.PathLike) -> Path:
    """Create ``run_dir`` if needed and write its marker (kept when present).

    Raises:
        CovidctError: the folder cannot be created or written.
    """
    run_dir = Path(run_dir)
    marker = run_dir / MARKER_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno in _WRITE_ERRNOS:
            raise write_error(error, run_dir) from error
        raise
    if not marker.is_file():
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(marker, {"created_by": f"covidct {__version__}", "created": created})
    return run_dir


def _require_marker(run_dir: Path, action: str) -> None:
    if not is_run_dir(run_dir):
        raise CovidctError(
            f"Refusing to {action} {run_dir}: it has no {MARKER_FILE} marker, so covidct did not create it. "
            "Delete it yourself if it is really to go, or choose another folder."
        )


def clear_run_dir(run_dir: str | os.PathLike) -> None:
    """Empty a run folder for ``--overwrite``: remove everything in it but its marker and lock files.

    Raises:
        CovidctError: ``run_dir`` carries no marker (nothing is removed).
    """
    run_dir = Path(run_dir)
    _require_marker(run_dir, "empty")
    for entry in run_dir.iterdir():
        if entry.name in (MARKER_FILE, LOCK_FILE):
            continue
        remove_run_output(entry, run_dir)


def remove_run_output(path: str | os.PathLike, run_dir: str | os.PathLike) -> None:
    """Remove ``path`` (a file or folder) inside the marked run folder ``run_dir``; absent is fine.

    Raises:
        CovidctError: ``run_dir`` carries no marker, or ``path`` is not inside it.
    """
    path, run_dir = Path(path), Path(run_dir)
    _require_marker(run_dir, "delete in")
    if run_dir.resolve() not in path.resolve().parents:
        raise CovidctError(f"Refusing to delete {path}: it is not inside the run folder {run_dir}.")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)  # guarded above: inside a folder covidct marked as its own
    else:
        path.unlink(missing_ok=True)


def remove_run_dir(run_dir: str | os.PathLike) -> None:
    """Remove a whole marked run folder (a run that failed before saving anything, in a folder it created).

    Raises:
        CovidctError: ``run_dir`` carries no marker (nothing is removed).
    """
    run_dir = Path(run_dir)
    _require_marker(run_dir, "delete")
    shutil.rmtree(run_dir)  # guarded above: the marker says covidct created this folder


# ------------------------------------------------------------------------------------------------------
# Locks: one writer per run (and per unit of a run)
# ------------------------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (another user's process counts: signal 0 is refused, not lost)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def lock_owner(lock: str | os.PathLike) -> tuple[str, int | None] | None:
    """(host, pid) written in ``lock``, or None when there is no lock."""
    try:
        host, _, pid = Path(lock).read_text().strip().partition(" ")
    except FileNotFoundError:
        return None
    return host, int(pid) if pid.isdigit() else None


def live_owner(lock: str | os.PathLike) -> tuple[str, int | None] | None:
    """The owner of ``lock`` unless it is a process of this host that no longer runs (or there is no lock)."""
    owner = lock_owner(lock)
    if owner is None:
        return None
    host, pid = owner
    if host == socket.gethostname() and pid is not None and not pid_alive(pid):
        return None
    return owner


@contextlib.contextmanager
def run_lock(lock: str | os.PathLike, what: str, doing: str = "written"):
    """Hold the lock file ``lock`` (host and process id) while this process writes ``what``.

    A second process stops with an error naming the owner; a lock left by a process of this host that no
    longer runs is taken over with a warning. The lock is removed when the block ends.

    Args:
        lock: the lock file (``<run>/.covidct-run.lock``, or ``<run>/.fold_<k>.lock`` for one fold).
        what: what is written, for the message (``"run folder runs/x"``, ``"fold_0 of runs/x"``).
        doing: the verb of the message (``"written"``, ``"fitted"``).

    Raises:
        CovidctError: another live process holds the lock, or the folder cannot be written.
    """
    lock = Path(lock)
    host = socket.gethostname()
    while True:
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = lock_owner(lock)
            if owner is None:  # released meanwhile
                continue
            owner_host, owner_pid = owner
            if owner_host == host and owner_pid is not None and not pid_alive(owner_pid):
                log.warning("%s: process %s of this host holds no more; taking its lock over", lock, owner_pid)
                lock.unlink(missing_ok=True)
                continue
            raise CovidctError(
                f"{what} is being {doing} by process {owner_pid or '?'} on {owner_host or '?'} (lock {lock}); "
                "wait for it to finish, or delete the lock if that process is gone."
            ) from None
        except OSError as error:
            if error.errno in _WRITE_ERRNOS:
                raise write_error(error, lock.parent) from error
            raise
        with os.fdopen(handle, "w") as stream:
            stream.write(f"{host} {os.getpid()}\n")
        break
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def check_unlocked(run_dir: str | os.PathLike, allowed_pids=()) -> None:
    """Refuse to write into ``run_dir`` while another live process holds its run lock.

    Args:
        run_dir: the run folder.
        allowed_pids: process ids of this host whose lock is no obstacle (the parent that started this
            process to fit one fold of its run).

    Raises:
        CovidctError: naming the owner of the lock.
    """
    lock = Path(run_dir) / LOCK_FILE
    owner = live_owner(lock)
    if owner is None or (owner[0] == socket.gethostname() and owner[1] in {os.getpid(), *allowed_pids}):
        return
    raise CovidctError(
        f"Run folder {run_dir} is being written by process {owner[1] or '?'} on {owner[0] or '?'} (lock {lock}); "
        "wait for it to finish, or delete the lock if that process is gone."
    )


# ------------------------------------------------------------------------------------------------------
# Writing a run: marker, lock and what a failure leaves
# ------------------------------------------------------------------------------------------------------


class RunFolder:
    """The run folder being written by ``writing_run``.

    Attributes:
        path: the folder.
        fresh: whether it held nothing of an earlier run when this run started (absent, empty, or emptied by
            ``--overwrite``, which sets it): only then does a failure remove what the run wrote.
        created: whether this run created the folder (a failure then removes the folder itself).
    """

    def __init__(self, path: Path, fresh: bool, created: bool):
        self.path, self.fresh, self.created = path, fresh, created


@contextlib.contextmanager
def writing_run(run_dir: str | os.PathLike, lock: bool = True):
    """Mark ``run_dir`` as a run folder, hold its lock and clean up after a failure; yields a ``RunFolder``.

    Before anything is computed the folder is checked (``check_run_folder``), created, marked (which proves
    it writable) and locked (``run_lock``). When the block fails and the folder holds no resumable state and
    no ``run.json`` (a NaN run writes one and keeps its last good checkpoint), what the run wrote goes: the folder itself when this run created it,
    its contents but the marker when it was empty (or emptied by ``--overwrite``) — so no empty or half
    folder is left for a later run to trust. The error's message then says so; when a resumable state was
    saved it says ``--resume`` instead. A write failure (full disk, read-only folder) inside the run folder
    becomes a one-line ``CovidctError``.

    Args:
        run_dir: the run folder.
        lock: hold ``.covidct-run.lock`` (False for one fold of a run whose other folds other processes fit:
            each holds its fold's lock, and nothing is cleaned up after a failure).
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    folder = RunFolder(run_dir, fresh=not check_run_folder(run_dir), created=created)
    mark_run_dir(run_dir)
    with run_lock(run_dir / LOCK_FILE, f"Run folder {run_dir}") if lock else contextlib.nullcontext():
        try:
            yield folder
        except BaseException as error:
            replacement = _after_failure(folder, error, cleanup=lock)
            if replacement is error:
                raise
            raise replacement from error


def _inside(path, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError, TypeError):
        return False


def _after_failure(folder: RunFolder, error: BaseException, cleanup: bool) -> BaseException:
    """Clean up after a failed run (see ``writing_run``); returns the error to raise (``error`` or a clearer one)."""
    run_dir = folder.path
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS and (
        error.filename is None or _inside(error.filename, run_dir)
    ):
        error = write_error(error, error.filename or run_dir)
    if not cleanup:
        return error
    try:
        status = run_status(run_dir)
    except CovidctError:
        status = "unknown"
    note = ""
    # "new" after a failure: no resumable state and no run.json, so even a first checkpoint (model.keras of an
    # epoch whose state was never saved) is no run: it would be taken for one by evaluate.
    if status == "new" and folder.fresh:
        try:
            if folder.created:
                remove_run_dir(run_dir)
                note = f" Nothing resumable was saved; the new folder {run_dir} was removed."
            else:
                clear_run_dir(run_dir)
                note = f" Nothing resumable was saved; what the run wrote in {run_dir} was removed."
        except (OSError, CovidctError) as cleanup_error:  # a read-only folder: keep the original error
            log.warning("could not clean up %s after the failure: %s", run_dir, cleanup_error)
            note = f" Nothing resumable was saved; delete {run_dir} before rerunning."
    elif status == "interrupted":
        note = f" A resumable state was saved in {run_dir}: rerun with --resume to continue."
    if note and isinstance(error, CovidctError):
        return CovidctError(f"{error}{note}")
    if note:
        log.error("%s", note.strip())
    return error
