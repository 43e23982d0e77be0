"""The FastAPI application of ``covidct serve``: one static page and a small JSON API.

Routes: ``GET /`` (the page), ``GET /static/app.js`` and ``/static/style.css`` (its script and style, shipped as
package data), ``GET /healthz``, ``GET /api/model``, ``POST /api/predict`` and ``GET /openapi.json``. Anything else
is 404; a known path with another method is 405.

``POST /api/predict`` takes ``multipart/form-data`` with one file field ``file`` (or the raw bytes as
``application/octet-stream``). The body is streamed to a private temporary folder and the stream is stopped as soon
as it passes the size limit (413). Admission comes first: at most ``workers`` requests run (in a thread pool, off
the event loop) and ``queue`` more wait; beyond that the answer is 503 with ``Retry-After``. The temporary folder is
removed when the request ends, whatever happened; nothing of an upload is kept.

Every response carries a Content-Security-Policy without remote sources, ``X-Content-Type-Options: nosniff``,
``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``; API responses carry ``Cache-Control: no-store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from covidct import DISCLAIMER
from covidct.errors import CovidctError
from covidct.serve import uploads
from covidct.serve.predict import predict_image

LOGGER = logging.getLogger(__name__)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
#: Bytes a multipart body may hold beyond the file itself (boundaries, part headers).
MULTIPART_OVERHEAD = 64 * 1024
RETRY_AFTER_S = 2

ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}},
                                                      "required": ["detail"]}}}}
PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                       "required": ["file"]}
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, ``no-store`` on the API's."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                headers += SECURITY_HEADERS
                cache = b"no-cache" if path.startswith("/static/") or path == "/" else b"no-store"
                headers.append((b"cache-control", cache))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Admission:
    """At most ``workers`` running and ``queue`` waiting requests; the next one is refused (503)."""

    def __init__(self, workers: int, queue: int):
        self.workers, self.queue = int(workers), int(queue)
        self.active = 0

    @property
    def capacity(self) -> int:
        return self.workers + self.queue

    def try_enter(self) -> bool:
        if self.active >= self.capacity:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _MultipartSink:
    """Callbacks of python-multipart's streaming parser: the part named ``file`` goes to ``path``, counted."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit = path, limit
        self.handle = None
        self.found = False
        self.written = 0
        self._headers: dict = {}
        self._field = b""
        self._value = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: setattr(self, "_field", self._field + data[start:end]),
            "on_header_value": lambda data, start, end: setattr(self, "_value", self._value + data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self):
        self._headers, self._field, self._value = {}, b"", b""

    def _header_end(self):
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self):
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") == b"file" and not self.found:
            self.found = True
            self.handle = open(self.path, "wb")  # noqa: SIM115  (closed in _part_end / close)

    def _part_data(self, data, start, end):
        if self.handle is None:
            return
        self.written += end - start
        if self.written > self.limit:
            raise _Refused(413, _too_large(self.limit))
        self.handle.write(data[start:end])

    def _part_end(self):
        self.close()

    def close(self):
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _too_large(limit: int) -> str:
    return f"The upload is larger than the limit of {limit / (1 << 20):g} MB (covidct serve --max-upload-mb)."


async def receive_upload(request: Request, path: Path, limit: int) -> int:
    """Stream the request's file to ``path``, stopping at ``limit`` bytes; returns the file's size.

    Raises:
        _Refused: 413 beyond the limit (announced or streamed), 415 for another body type, 422 without a file.
    """
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit + MULTIPART_OVERHEAD:
        raise _Refused(413, _too_large(limit))
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        from python_multipart.multipart import MultipartParser, parse_options_header

        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise _Refused(422, "The multipart body has no boundary.")
        sink = _MultipartSink(path, limit)
        parser = MultipartParser(boundary, sink.callbacks())
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit + MULTIPART_OVERHEAD:
                    raise _Refused(413, _too_large(limit))
                parser.write(chunk)
            parser.finalize()
        except _Refused:
            raise
        except Exception as error:  # noqa: BLE001  (python-multipart raises its own types for malformed bodies)
            raise _Refused(422, f"The multipart body is malformed ({type(error).__name__}).") from None
        finally:
            sink.close()
        if not sink.found:
            raise _Refused(422, "The request has no file: send multipart/form-data with a field named 'file'.")
        return sink.written
    if content_type.startswith("application/octet-stream"):
        written = 0
        with open(path, "wb") as handle:
            async for chunk in request.stream():
                written += len(chunk)
                if written > limit:
                    raise _Refused(413, _too_large(limit))
                handle.write(chunk)
        return written
    raise _Refused(415, "Send the image as multipart/form-data (field 'file') or as application/octet-stream.")


def _static(name: str) -> bytes:
    return resources.files("covidct.serve").joinpath("static", name).read_bytes()


def _process(run, raw: Path) -> dict:
    """Worker-thread part of a prediction: sniff, check, decode, predict."""
    stored = uploads.classify_upload(raw)
    image = uploads.read_upload(stored)
    result = predict_image(run, image)
    result["upload"] = {"type": stored.kind, "bytes": stored.size}
    return result


def create_app(run, max_upload_mb: float = uploads.DEFAULT_MAX_UPLOAD_MB, workers: int = 1, queue: int = 8,
               tmp_root=None, process=None) -> FastAPI:
    """The ASGI application serving ``run`` (a ``ServedRun``).

    Args:
        run: the loaded run (``covidct.serve.served_run.load_served_run``).
        max_upload_mb: largest upload in MB (413 beyond it).
        workers: predictions running at once (threads of the worker pool).
        queue: requests waiting for a worker beyond which the answer is 503 with ``Retry-After``.
        tmp_root: folder for the requests' temporary folders (default: the system's).
        process: ``f(run, path) -> dict`` doing a prediction in a worker (tests substitute one).

    Returns:
        The FastAPI application.
    """
    if int(workers) < 1 or int(queue) < 0:
        raise CovidctError(f"covidct serve: --workers must be >= 1 and --queue >= 0, got {workers} and {queue}.")
    if not 0 < float(max_upload_mb):
        raise CovidctError(f"covidct serve: --max-upload-mb must be > 0, got {max_upload_mb}.")
    limit = int(float(max_upload_mb) * (1 << 20))
    admission = Admission(workers, queue)
    pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="covidct-serve")
    work = process or _process

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        lifespan=lifespan,
        title="covidct serve",
        version="1",
        description=f"Class probabilities, Grad-CAM and lung focus of one covidct run on an uploaded CT image. {DISCLAIMER}",
        docs_url=None,
        redoc_url=None,
    )
    app.state.run, app.state.admission, app.state.pool, app.state.limit = run, admission, pool, limit

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC_FILES:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return Response(_static(name), media_type=STATIC_FILES[name])

    @app.get("/healthz", summary="Liveness: the run is loaded")
    async def healthz() -> dict:
        return {"status": "ok", "run": run.run_dir.name, "busy": admission.active, "capacity": admission.capacity}

    @app.get("/api/model", summary="The served run: training data, preprocessing, decision rule, labelled scores")
    async def model_info() -> dict:
        return {
            **run.describe(),
            "disclaimer": DISCLAIMER,
            "limits": {"max_upload_mb": float(max_upload_mb), "max_pixels": uploads.MAX_PIXELS,
                       "min_side": uploads.MIN_SIDE, "max_voxels": uploads.MAX_VOXELS, "formats": uploads.SUPPORTED,
                       "workers": admission.workers, "queue": admission.queue},
        }

    @app.post(
        "/api/predict",
        summary="Predict one uploaded slice or volume",
        openapi_extra={"requestBody": PREDICT_BODY},
        responses={413: {"description": "Upload larger than the limit", **ERROR},
                   415: {"description": "Not a supported image type (decided by content)", **ERROR},
                   422: {"description": "A supported type that cannot be used", **ERROR},
                   503: {"description": "Busy: retry after the Retry-After seconds", **ERROR}},
    )
    async def predict(request: Request):
        if not admission.try_enter():
            return JSONResponse({"detail": f"The server is busy ({admission.capacity} requests running or queued); "
                                           f"retry in {RETRY_AFTER_S} s."},
                                status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        folder = Path(tempfile.mkdtemp(prefix="covidct-serve-", dir=tmp_root))
        try:
            raw = folder / "upload"
            await receive_upload(request, raw, limit)
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(pool, work, run, raw)
            return JSONResponse(result)
        except _Refused as refused:
            return JSONResponse({"detail": refused.message}, status_code=refused.status)
        except uploads.UploadError as error:
            return JSONResponse({"detail": str(error)}, status_code=error.status)
        except CovidctError as error:  # a reader's or the stage's message: without the server's temporary path
            detail = re.sub(re.escape(str(folder)) + r"[^\s:,;)]*", "the upload", str(error))
            return JSONResponse({"detail": detail}, status_code=422)
        except MemoryError:
            return JSONResponse({"detail": "The image is too large to process on this machine."}, status_code=422)
        finally:
            uploads.remove_tree(folder)
            admission.leave()

    app.add_middleware(SecurityHeaders)
    return app
