"""Downloads against a local HTTP server on 127.0.0.1: streaming, resume, checks, unpack, offline."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from covidct.data.download import DownloadSource, download_dataset, download_file, unpack
from covidct.errors import CovidctError


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves in-memory files and honours 'Range: bytes=N-' (SimpleHTTPRequestHandler does not)."""

    files: dict[str, bytes] = {}
    ranges: list[str] = []
    honour_range = True

    def do_GET(self):  # noqa: N802 (http.server API)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        self.ranges.append(requested or "")
        start = int(requested.split("=")[1].rstrip("-")) if requested and self.honour_range else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    RangeHandler.files, RangeHandler.ranges, RangeHandler.honour_range = {}, [], True
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", RangeHandler
    httpd.shutdown()
    httpd.server_close()


def small_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for split, case in (("Train", "01"), ("Test", "21")):
            bundle.writestr(f"CT-COV19-abc/{split}/COV/{case}/FILE001.jpg", bytes(range(256)) * 40)
        bundle.writestr("CT-COV19-abc/README.md", "# CT-COV19\n")
    return buffer.getvalue()


def test_download_resumes_with_range_and_checks_sha256(server, tmp_path):
    url, handler = server
    body = small_zip()
    handler.files["/a.zip"] = body
    target = tmp_path / "a.zip"
    target.with_name("a.zip.part").write_bytes(body[:1000])  # an interrupted earlier download
    digest = hashlib.sha256(body).hexdigest()
    download_file(url + "/a.zip", target, size=len(body), sha256=digest, progress=False)
    assert handler.ranges == ["bytes=1000-"]
    assert target.read_bytes() == body
    assert target.with_name("a.zip.sha256").read_text().split()[0] == digest
    download_file(url + "/a.zip", target, size=len(body), sha256=digest, progress=False)
    assert handler.ranges == ["bytes=1000-"]  # a complete, verified file is not fetched again


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url, handler = server
    handler.honour_range = False
    handler.files["/b.bin"] = b"0123456789" * 100
    target = tmp_path / "b.bin"
    target.with_name("b.bin.part").write_bytes(b"garbage")
    download_file(url + "/b.bin", target, size=1000, progress=False)
    assert target.read_bytes() == b"0123456789" * 100


def test_checksum_mismatch_is_an_error(server, tmp_path):
    url, handler = server
    handler.files["/c.bin"] = b"abc"
    with pytest.raises(CovidctError, match="c.bin: SHA-256 checksum mismatch"):
        download_file(url + "/c.bin", tmp_path / "c.bin", sha256="0" * 64, progress=False)
    with pytest.raises(CovidctError, match="size 3 bytes, expected 4"):
        download_file(url + "/c.bin", tmp_path / "d.bin", size=4, progress=False)


def test_offline_is_one_clear_line(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(CovidctError, match=r"^cannot reach 127\.0\.0\.1:\d+ .*by hand") as error:
        download_file(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", progress=False, timeout_s=5)
    assert "\n" not in str(error.value)


def test_http_404_is_clear(server, tmp_path):
    url, _ = server
    with pytest.raises(CovidctError, match="HTTP 404"):
        download_file(url + "/missing.zip", tmp_path / "m.zip", progress=False)


def test_download_dataset_unpacks_and_loads(server, tmp_path):
    url, handler = server
    handler.files["/ct.zip"] = small_zip()
    folder = download_dataset("ct-cov19", tmp_path / "raw", progress=False,
                              sources=(DownloadSource(url + "/ct.zip", "ct.zip"),))
    assert folder == tmp_path / "raw" / "ct-cov19"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")) == [
        "Test/COV/21/FILE001.jpg", "Train/COV/01/FILE001.jpg"]
    from covidct.data.datasets import load_dataset

    assert load_dataset("ct-cov19", root=folder)["group"].tolist() == ["COV-21", "COV-01"]


def test_unpack_tar_and_nested_zip(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as bundle:
        bundle.writestr("CT_COVID/a.png", b"x")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        data = inner.getvalue()
        info = tarfile.TarInfo("repo-main/Images-processed/CT_COVID.zip")
        info.size = len(data)
        bundle.addfile(info, io.BytesIO(data))
    archive = tmp_path / "repo.tar.gz"
    archive.write_bytes(buffer.getvalue())
    out = unpack(archive, tmp_path / "out")
    unpack(out / "Images-processed" / "CT_COVID.zip", out / "Images-processed", strip_top=False)
    assert (tmp_path / "out" / "Images-processed" / "CT_COVID" / "a.png").read_bytes() == b"x"


def test_zip_slip_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("../evil.txt", "x")
    archive = tmp_path / "evil.zip"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(CovidctError, match="outside"):
        unpack(archive, tmp_path / "out")
    assert not Path(tmp_path / "evil.txt").exists()


def test_unknown_download_name():
    with pytest.raises(CovidctError, match="Did you mean: covid-ct"):
        download_dataset("covid-cts", progress=False)


def _zip(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def test_unpack_replaces_only_what_it_unpacked_and_never_a_foreign_folder(tmp_path):
    out = tmp_path / "out"
    unpack(_zip(tmp_path / "v1.zip", {"top/CT_COVID/a.png": "v1"}), out)
    unpack(_zip(tmp_path / "v2.zip", {"top/CT_COVID/a.png": "v2"}), out)  # its own earlier unpack: replaced
    assert (out / "CT_COVID" / "a.png").read_text() == "v2"
    (out / "notes").mkdir()
    (out / "notes" / "thesis.txt").write_text("mine")
    with pytest.raises(CovidctError, match=r"out: notes already exist\(s\) there and covidct did not unpack them"):
        unpack(_zip(tmp_path / "v3.zip", {"top/notes/other.txt": "x"}), out)
    assert (out / "notes" / "thesis.txt").read_text() == "mine"


def test_a_staging_folder_covidct_did_not_make_is_never_deleted(tmp_path):
    staging = tmp_path / "out.unpacking"
    staging.mkdir()
    (staging / "thesis.txt").write_text("mine")
    with pytest.raises(CovidctError, match=r"out\.unpacking: this unpacking folder holds files covidct did not write"):
        unpack(_zip(tmp_path / "a.zip", {"top/a.png": "x"}), tmp_path / "out")
    assert (staging / "thesis.txt").read_text() == "mine"
