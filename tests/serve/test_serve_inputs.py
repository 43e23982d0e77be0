"""Bad input and security of covidct serve: each refusal's status and message, limits, headers, the queue."""

from __future__ import annotations

import asyncio
import resource
import struct
import sys
import threading
import zlib

import numpy as np
import pytest
from serve_helpers import dicom_bytes

pytestmark = pytest.mark.filterwarnings("ignore::covidct.explain.focus.LungFocusWarning")


def _png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A grayscale 8-bit PNG of ``width`` x ``height`` built chunk by chunk (all-zero pixels unless ``rows``)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    if rows is None:  # identical blocks of zero rows, each compressed after a full flush, so compressed once
        lines = max(1, min(height, (1 << 20) // (width + 1)))
        compressor, zero = zlib.compressobj(9), bytes(lines * (width + 1))
        first = compressor.compress(zero) + compressor.flush(zlib.Z_FULL_FLUSH)
        repeat = compressor.compress(zero) + compressor.flush(zlib.Z_FULL_FLUSH)
        blocks, rest = divmod(height, lines)
        tail = compressor.compress(bytes(rest * (width + 1))) if rest else b""
        adler = 1
        for _ in range(blocks):
            adler = zlib.adler32(zero, adler)
        adler = zlib.adler32(bytes(rest * (width + 1)), adler)
        rows = (first + repeat * (blocks - 1) + tail + compressor.flush())[:-4] + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """20,000 x 20,000 zero pixels (400 MB decoded) in well under 1 MB."""
    return _png(20_000, 20_000)


def _post(client, content: bytes, name: str = "image.png"):
    return client.post("/api/predict", files={"file": (name, content, "application/octet-stream")})


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("empty", 422, "empty (0 bytes)"),
        ("truncated", 422, "cannot decode the image (truncated or corrupt file)"),
        ("text", 415, "is a text file, not a supported image"),
        ("executable", 415, "is an executable program, not a supported image"),
        ("no_pixels", 422, "no pixel data"),
        ("nifti_4d", 422, "4-D array of shape (32, 32, 3, 2)"),
        ("one_pixel", 422, "1 x 1 pixels; at least 16 x 16"),
        ("gzip_text", 415, "gzip-compressed but holds no NIfTI"),
        ("zip_without_dicom", 422, "The ZIP holds no DICOM file"),
    ],
)
def test_bad_uploads_are_refused_with_a_message(client, upload_tmp, cov_png, case, status, message):
    import gzip
    import io
    import zipfile

    import nibabel as nib

    if case == "empty":
        content, name = b"", "empty.png"
    elif case == "truncated":
        content, name = cov_png[: len(cov_png) // 2], "half.png"
    elif case == "text":
        content, name = b"hello, this is a text file\n" * 10, "notes.png"
    elif case == "executable":
        with open(sys.executable, "rb") as handle:
            content, name = handle.read(4096), "program.dcm"
    elif case == "no_pixels":
        content, name = dicom_bytes(np.zeros((32, 32), np.float32), pixel_data=False), "header.dcm"
    elif case == "nifti_4d":
        content, name = nib.Nifti1Image(np.zeros((32, 32, 3, 2), np.int16), np.eye(4)).to_bytes(), "series.nii"
    elif case == "one_pixel":
        content, name = _png(1, 1, rows=zlib.compress(b"\x00\x80")), "dot.png"
    elif case == "gzip_text":
        content, name = gzip.compress(b"plain text " * 100), "scan.nii.gz"
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as bundle:
            bundle.writestr("a.txt", b"text")
        content, name = buffer.getvalue(), "series.zip"
    response = _post(client, content, name)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert "covidct-serve-" not in response.json()["detail"]  # no server path in messages
    assert list(upload_tmp.iterdir()) == []


def test_decompression_bomb_is_refused_before_decoding(client, bomb_png, upload_tmp):
    assert len(bomb_png) < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = _post(client, bomb_png, "bomb.png")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert response.status_code == 422
    assert "20000 x 20000 pixels, more than the limit" in response.json()["detail"]
    assert grown_mb < 100  # the 400 MB of pixels were never allocated
    assert list(upload_tmp.iterdir()) == []


def test_zip_that_expands_beyond_its_limit_is_stopped(client, upload_tmp, monkeypatch):
    import io
    import zipfile

    from covidct.serve import uploads

    monkeypatch.setattr(uploads, "MAX_ARCHIVE_BYTES", 1 << 20)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("../../outside.dcm", bytes(3 << 20))
    assert len(buffer.getvalue()) < 64 * 1024
    response = _post(client, buffer.getvalue(), "series.zip")
    assert response.status_code == 422 and "The ZIP expands to more than 1 MB" in response.json()["detail"]
    assert list(upload_tmp.iterdir()) == [] and not (upload_tmp.parent / "outside.dcm").exists()


def test_error_messages_do_not_show_the_servers_temporary_path(served, upload_tmp):
    from fastapi.testclient import TestClient

    from covidct.errors import CovidctError
    from covidct.serve.app import create_app

    def failing(run, path):
        raise CovidctError(f"{path.parent / 'upload.nii'}: no slice shows lung (largest lung fraction 0.000)")

    with TestClient(create_app(served, tmp_root=upload_tmp, process=failing)) as http:
        response = http.post("/api/predict", files={"file": ("scan.nii", b"data")})
    assert response.status_code == 422
    assert response.json()["detail"] == "the upload: no slice shows lung (largest lung fraction 0.000)"


def test_announced_oversize_upload_is_refused_at_once(client):
    response = client.post("/api/predict", files={"file": ("big.png", b"\x89PNG" + bytes(2 << 20))})
    assert response.status_code == 413
    assert "larger than the limit of 1 MB" in response.json()["detail"]


def test_streamed_upload_stops_at_the_limit(served, upload_tmp):
    """Chunked upload without Content-Length: the app stops reading just past 1 MB of a 64 MB body."""
    from covidct.serve.app import MULTIPART_OVERHEAD, create_app

    app = create_app(served, max_upload_mb=1, tmp_root=upload_tmp)
    chunk = 64 * 1024
    head = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"../../big.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n")
    consumed = {"bytes": 0, "messages": 0}
    sent = []

    async def receive():
        consumed["messages"] += 1
        body = head if consumed["messages"] == 1 else bytes(chunk)
        consumed["bytes"] += len(body)
        return {"type": "http.request", "body": body, "more_body": consumed["bytes"] < 64 << 20}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"host", b"testserver")],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert consumed["bytes"] <= (1 << 20) + MULTIPART_OVERHEAD + chunk
    assert list(upload_tmp.iterdir()) == []


def test_client_file_names_never_reach_the_disk(client, cov_png, tmp_path, upload_tmp):
    target = tmp_path / "planted.png"
    for name in (f"../../{target.name}", str(target), "..\\..\\planted.png", "/etc/passwd"):
        response = _post(client, cov_png, name)
        assert response.status_code == 200
    assert not target.exists() and list(upload_tmp.iterdir()) == []


def test_routes_methods_and_security_headers(client):
    assert client.get("/nowhere").status_code == 404
    assert client.get("/static/../../etc/passwd").status_code == 404
    assert client.get("/static/index.html").status_code == 404
    assert client.get("/api/predict").status_code == 405
    assert client.delete("/api/model").status_code == 405
    page = client.get("/")
    assert page.status_code == 200 and "not a diagnostic device" in page.text
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")  # no remote script or style
    for response in (page, client.get("/api/model"), client.get("/static/app.js"), client.get("/nowhere")):
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "http" not in csp and "*" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/model").headers["cache-control"] == "no-store"
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/healthz", "/api/model", "/api/predict"}
    assert "multipart/form-data" in schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 404  # no documentation page that would load remote scripts


def test_queue_full_answers_503_with_retry_after(served, upload_tmp, cov_png):
    import httpx

    from covidct.errors import CovidctError
    from covidct.serve.app import create_app

    gate = threading.Event()
    started = threading.Semaphore(0)

    def slow(run, path):
        started.release()
        gate.wait(10)
        if path.read_bytes() == b"fail":
            raise CovidctError("simulated failure")
        return {"ok": True}

    app = create_app(served, workers=1, queue=1, tmp_root=upload_tmp, process=slow)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            first = asyncio.create_task(http.post("/api/predict", files={"file": ("a.png", b"fail")}))
            second = asyncio.create_task(http.post("/api/predict", files={"file": ("b.png", cov_png)}))
            while app.state.admission.active < 2:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(started.acquire)  # the first one runs, the second one waits
            third = await http.post("/api/predict", files={"file": ("c.png", cov_png)})
            assert len(list(upload_tmp.iterdir())) == 2  # the two admitted uploads, while they are processed
            gate.set()
            return await first, await second, third

    first, second, third = asyncio.run(scenario())
    assert third.status_code == 503 and third.headers["retry-after"] == "2"
    assert "busy" in third.json()["detail"]
    assert first.status_code == 422 and first.json()["detail"] == "simulated failure"
    assert second.status_code == 200 and second.json() == {"ok": True}
    assert list(upload_tmp.iterdir()) == []  # removed after the failure too
    assert app.state.admission.active == 0


def test_serve_warns_when_bound_beyond_loopback(serve_run, monkeypatch, caplog):
    import uvicorn

    from covidct.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    with caplog.at_level("WARNING", logger="covidct.serve"):
        assert main(["serve", "--run", str(serve_run), "--host", "0.0.0.0", "--port", "8765"]) == 0
    assert calls == [{"host": "0.0.0.0", "port": 8765, "log_level": "warning", "access_log": False}]
    assert "NO authentication" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="covidct.serve"):
        assert main(["serve", "--run", str(serve_run)]) == 0
    assert calls[-1]["host"] == "127.0.0.1" and "authentication" not in caplog.text
    assert main(["serve", "--run", str(serve_run.parent / "missing")]) == 2
