"""Downloads of the public datasets: streaming, progress bar, resume, size/checksum check, unpack.

``download_dataset(name, dest)`` fetches every archive of a dataset into ``dest`` (default
``data/raw``), resuming a partial file with an HTTP ``Range`` request, checking size and SHA-256 when
they are known (and recording the SHA-256 it measured next to the archive), then unpacks it into
``dest/<name>/`` so that ``load_dataset(name, root=dest/<name>)`` finds it. Offline, it stops with a
one-line ``CovidctError`` that says where to get the files by hand.

Sources:

- ``ct-cov19``: GitHub m2dgithub/CT-COV19 at commit 598e9b8e86cb8e54179a130c3d990ee97fde5353.
- ``covid-ct``: GitHub UCSD-AI4H/COVID-CT (branch master; images are zips inside the repository
  archive, unpacked too).
- ``mosmeddata``: the official dataset (all of CT-0..CT-4) is distributed from
  https://mosmed.ai/datasets/covid19_1110 behind a form, so it cannot be fetched automatically. The
  download gets the public mirror used by the Keras 3D CT example (CT-0 and CT-23 = CT-2+CT-3 studies
  from MosMedData), enough for ``load_dataset("mosmeddata", classes="keras-io")``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from covidct.data.writes import os_error_message, remove_owned_tree
from covidct.errors import CovidctError, unknown_name_error

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
#: Written into the staging folder of an unpack; only a staging folder holding it is ever deleted.
STAGING_MARKER = ".covidct-unpacking"
#: Names of the entries covidct unpacked into a folder; only those are replaced by a later unpack.
UNPACKED_RECORD = ".covidct-unpacked"


@dataclass(frozen=True)
class DownloadSource:
    """One archive of a dataset."""

    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    unpack: bool = True
    strip_top: bool = True
    nested: tuple = ()
    manual: str = ""


SOURCES: dict[str, tuple[DownloadSource, ...]] = {
    "ct-cov19": (
        DownloadSource(
            "https://github.com/m2dgithub/CT-COV19/archive/598e9b8e86cb8e54179a130c3d990ee97fde5353.zip",
            "CT-COV19-598e9b8e.zip",
            manual="https://github.com/m2dgithub/CT-COV19",
        ),
    ),
    "covid-ct": (
        DownloadSource(
            "https://github.com/UCSD-AI4H/COVID-CT/archive/refs/heads/master.zip",
            "COVID-CT-master.zip",
            nested=("Images-processed/CT_COVID.zip", "Images-processed/CT_NonCOVID.zip"),
            manual="https://github.com/UCSD-AI4H/COVID-CT",
        ),
    ),
    "mosmeddata": (
        DownloadSource(
            "https://github.com/hasibzunair/3D-image-classification-tutorial/releases/download/v0.2/CT-0.zip",
            "CT-0.zip",
            strip_top=False,
            manual="https://mosmed.ai/datasets/covid19_1110 (official, full CT-0..CT-4)",
        ),
        DownloadSource(
            "https://github.com/hasibzunair/3D-image-classification-tutorial/releases/download/v0.2/CT-23.zip",
            "CT-23.zip",
            strip_top=False,
            manual="https://mosmed.ai/datasets/covid19_1110 (official, full CT-0..CT-4)",
        ),
    ),
}


def sha256_of(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    url: str,
    target: str | Path,
    size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout_s: float = 30.0,
    manual: str = "",
) -> Path:
    """Stream ``url`` to ``target``, resuming ``target.part`` with an HTTP Range request.

    Args:
        url: the file's URL.
        target: where the finished file goes.
        size: expected size in bytes (checked when given).
        sha256: expected SHA-256 hex digest (checked when given).
        progress: show a tqdm bar.
        timeout_s: socket timeout.
        manual: where to get the file by hand (shown in errors).

    Returns:
        ``target``. An existing complete ``target`` that passes the checks is not fetched again.

    Raises:
        CovidctError: offline or HTTP errors (one line), size or checksum mismatch.
    """
    from tqdm.auto import tqdm

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and _verify(target, size, sha256, raise_error=False):
        return target
    partial = target.with_name(target.name + ".part")
    offset = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "covidct-downloader"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    where = manual or url
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part file is already complete
            partial.replace(target)
            _verify(target, size, sha256)
            return target
        raise CovidctError(f"download of {url} failed: HTTP {error.code} {error.reason}; get it by hand from {where}.") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        host = urlparse(url).netloc
        raise CovidctError(
            f"cannot reach {host} ({reason}); check the network or download {url} by hand into {target.parent}."
        ) from None
    with response:
        resumed = response.status == 206
        if offset and not resumed:
            offset = 0  # the server ignored the Range header: start again
        length = response.headers.get("Content-Length")
        total = (int(length) + offset) if length is not None else size
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=target.name, disable=not progress)
        try:
            with open(partial, "ab" if resumed else "wb") as handle:
                for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(block)
                    bar.update(len(block))
        except OSError as error:
            raise CovidctError(f"download of {url} interrupted ({error}); rerun to resume.") from None
        finally:
            bar.close()
    partial.replace(target)
    _verify(target, size, sha256)
    target.with_name(target.name + ".sha256").write_text(f"{sha256_of(target)}  {target.name}\n")
    return target


def _verify(path: Path, size: int | None, sha256: str | None, raise_error: bool = True) -> bool:
    actual_size = path.stat().st_size
    problem = ""
    if size is not None and actual_size != size:
        problem = f"size {actual_size} bytes, expected {size}"
    elif sha256 is not None and sha256_of(path) != sha256.lower():
        problem = "SHA-256 checksum mismatch"
    if not problem:
        return True
    if raise_error:
        broken = path.with_name(path.name + ".bad")
        path.replace(broken)
        raise CovidctError(f"{path}: {problem}; the file was moved to {broken.name}, rerun to download it again.")
    return False


def unpack(archive: str | Path, dest: str | Path, strip_top: bool = True) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``dest`` safely (no paths outside ``dest``).

    Args:
        archive: the archive file.
        dest: the folder to unpack into.
        strip_top: when the archive holds one top-level folder, move its content up into ``dest``.

    Returns:
        ``dest``.

    Raises:
        CovidctError: a damaged archive, a member that would land outside ``dest``, or an entry of ``dest``
            that the archive would replace but covidct did not unpack (covidct replaces only what it unpacked
            there before, as recorded in ``dest/.covidct-unpacked``).
    """
    archive, dest = Path(archive), Path(dest)
    staging = dest.with_name(dest.name + ".unpacking")
    remove_owned_tree(staging, marker=STAGING_MARKER, what="unpacking folder")
    staging.mkdir(parents=True)
    (staging / STAGING_MARKER).write_text(f"covidct unpacks {archive.name} here\n")
    root = staging.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                for member in bundle.namelist():
                    if not (root / member).resolve().is_relative_to(root):
                        raise CovidctError(f"{archive}: member {member!r} would unpack outside {dest}; refusing.")
                bundle.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                bundle.extractall(staging, filter="data")
        else:
            raise CovidctError(f"{archive}: not a zip or tar archive; download it again.")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise CovidctError(f"{archive}: the archive is damaged ({error}); delete it and download again.") from None
    content = staging
    entries = [p for p in staging.iterdir() if p.name not in ("__MACOSX", STAGING_MARKER)]
    if strip_top and len(entries) == 1 and entries[0].is_dir():
        content = entries[0]
    dest.mkdir(parents=True, exist_ok=True)
    record = dest / UNPACKED_RECORD
    unpacked = set(record.read_text().split("\n")) - {""} if record.is_file() else set()
    if (dest / ".complete").is_file():  # a dataset folder download_dataset finished: all of it is covidct's
        unpacked |= {entry.name for entry in dest.iterdir()}
    items = [item for item in content.iterdir() if item.name not in ("__MACOSX", STAGING_MARKER)]
    foreign = [item.name for item in items if (dest / item.name).exists() and item.name not in unpacked]
    if foreign:
        raise CovidctError(
            f"{dest}: {', '.join(sorted(foreign)[:5])} already exist(s) there and covidct did not unpack them, so they "
            f"are not replaced by {archive.name}. Move them away (or unpack into an empty folder) and rerun."
        )
    for item in items:
        destination = dest / item.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)  # unpacked here by covidct before (listed in the record)
        elif destination.exists() or destination.is_symlink():
            destination.unlink()
        shutil.move(str(item), str(destination))
    record.write_text("\n".join(sorted(unpacked | {item.name for item in items})) + "\n")
    remove_owned_tree(staging, marker=STAGING_MARKER, what="unpacking folder")
    return dest


def check_download_folder(dest: Path, folder: Path) -> None:
    """Refuse a ``--dest`` that is a file (or lies below one), or a dataset path that is a file, before any download.

    Raises:
        CovidctError: naming the file and saying to give a folder.
    """
    for path in (dest, *dest.parents):
        if path.exists() and not path.is_dir():
            where = "" if path == dest else f" (a part of {dest})"
            raise CovidctError(
                f"{path}{where} is a file, not a folder; --dest is the parent folder of the datasets (the data goes to "
                f"DEST/<dataset>). Give a folder, e.g. --dest data/raw."
            )
    for path in (folder, dest / "archives"):
        if path.exists() and not path.is_dir():
            raise CovidctError(f"{path} is a file where covidct keeps a folder; move it away or choose another --dest.")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CovidctError(f"cannot write the download: {os_error_message(error, dest)}") from None


def download_dataset(
    name: str,
    dest: str | Path = "data/raw",
    progress: bool = True,
    sources: tuple[DownloadSource, ...] | None = None,
    timeout_s: float = 30.0,
) -> Path:
    """Download and unpack dataset ``name`` into ``dest/<name>``.

    Args:
        name: ``ct-cov19``, ``covid-ct`` or ``mosmeddata``.
        dest: parent folder (default ``data/raw``).
        progress: show progress bars.
        sources: override the archives (tests use a local server).
        timeout_s: socket timeout.

    Returns:
        The dataset folder ``dest/<name>``.
    """
    if sources is None:
        if name not in SOURCES:
            raise unknown_name_error("downloadable dataset", name, SOURCES)
        sources = SOURCES[name]
    dest = Path(dest)
    folder = dest / name
    check_download_folder(dest, folder)
    for source in sources:
        archive = download_file(source.url, dest / "archives" / source.filename, source.size, source.sha256,
                                progress=progress, timeout_s=timeout_s, manual=source.manual)
        if not source.unpack:
            continue
        unpack(archive, folder, strip_top=source.strip_top)
        for inner in source.nested:
            inner_path = folder / inner
            if not inner_path.is_file():
                raise CovidctError(f"{archive}: expected {inner} inside the archive; the layout changed upstream.")
            unpack(inner_path, inner_path.parent, strip_top=False)
    (folder / ".complete").write_text("\n".join(s.url for s in sources) + "\n")
    return folder
