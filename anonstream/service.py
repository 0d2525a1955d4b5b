"""``anonstream serve``: anonymization over HTTP for other software (FastAPI on uvicorn).

POST /v1/anonymize takes an image and answers it anonymized, in its format;
POST /v1/videos takes a video and answers a job, whose anonymized file is
fetched once from GET /v1/videos/{id}/file. The work runs on a pool of
``worker.count`` in-process ``Anonymizer``s, each on its share of the cores:
ONNX Runtime and OpenCV release the GIL, so threads scale like the
pipeline's worker processes, without a frame crossing a socket and back. A
request borrows one for its image; a video job holds one for its length.
Requests beyond the pool and ``serve.queue`` get 503 with Retry-After.

A client costs its own request only: a body that is aborted (counted, no
traceback) or has not arrived within ``serve.upload_timeout_s`` (408) releases
its admission slot and its upload on the way out, and SIGTERM ends the service
within ``STOP_GRACE_S`` plus the frame a video job is on, whatever is in flight.

Privacy: uploads live in one private temporary folder (0700), each removed
when its request or job ends; a result is removed once downloaded or after
``serve.retention_s``. No pixels reach a log line or an error body.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import json
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import av
import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from anonstream import __version__
from anonstream.api import AnonymizationError, Anonymized, Anonymizer
from anonstream.config import MaskMode, ServeConfig, Settings
from anonstream.errors import AnonstreamError, ConfigError
from anonstream.stream.metrics import LATENCY_BUCKETS_S

log = logging.getLogger(__name__)

# the formats an image comes in and goes back in: Pillow's name -> media type, OpenCV's suffix, encoder options
IMAGE_FORMATS = {
    "JPEG": ("image/jpeg", ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    "PNG": ("image/png", ".png", []),
    "WEBP": ("image/webp", ".webp", [cv2.IMWRITE_WEBP_QUALITY, 95]),
}
IMAGE_OPTIONS = frozenset({"mask", "detect", "boxes"})
STILL_DEMUXERS = frozenset({"image2", "gif"})  # FFmpeg reads an image as a one-frame video: not a video job
RETRY_AFTER_S = 1
ROUTES = frozenset({"/v1/anonymize", "/v1/videos", "/healthz", "/metrics", "/docs", "/openapi.json"})
VIDEO_TYPES = {".mp4": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska", ".m4v": "video/x-m4v"}
REAP_EVERY_S = 10.0
CHUNK = 1 << 20
STOP_GRACE_S = 3  # on SIGTERM, requests in flight get this long to finish before they are cancelled
CLIENT_GONE = 499  # the status an aborted request is counted under (nginx's "client closed request"); never sent


class BadRequest(AnonstreamError):
    """What was wrong with a request, and its HTTP status."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.retry_after, self.close = status, retry_after, close


class Stopping(AnonstreamError):
    """The service is stopping: a video job in work ends at its current frame."""


class Pool:
    """``size`` Anonymizers; a request borrows one, and waits at most ``timeout_s`` for it."""

    def __init__(self, settings: Settings, size: int) -> None:
        threads = max(1, (os.cpu_count() or 1) // size)
        self.members = [Anonymizer(settings, threads=settings.runtime.threads or threads) for _ in range(size)]
        self._free: queue.Queue[Anonymizer] = queue.Queue()
        for member in self.members:
            self._free.put(member)

    @property
    def busy(self) -> int:
        return len(self.members) - self._free.qsize()

    @contextlib.contextmanager
    def borrow(self, timeout_s: float | None) -> Iterator[Anonymizer]:
        try:
            member = self._free.get(timeout=timeout_s)
        except queue.Empty:
            raise BadRequest(503, f"no detector free within {timeout_s:g} s", RETRY_AFTER_S) from None
        try:
            yield member
        finally:
            self._free.put(member)

    def close(self) -> None:
        for member in self.members:
            member.close()


class Admission:
    """At most ``limit`` requests in the service at once; the next one is turned away, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit, self.inside = limit, 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def enter(self, what: str) -> Iterator[None]:
        with self._lock:
            if self.inside >= self.limit:
                raise BadRequest(503, f"{self.limit} {what} already waiting or in work; try again", RETRY_AFTER_S)
            self.inside += 1
        try:
            yield
        finally:
            with self._lock:
                self.inside -= 1


@dataclass
class Job:
    """One video: uploaded, queued, running, done (its file waits to be fetched) or failed."""

    id: str
    folder: Path
    source: Path
    output: Path
    state: Literal["queued", "running", "done", "failed"] = "queued"
    frames: int = 0
    total: int | None = None
    error: str | None = None
    masks: dict[str, int] = field(default_factory=dict)
    ended_at: float | None = None

    def view(self) -> dict[str, Any]:
        progress = self.frames / self.total if self.total else (1.0 if self.state == "done" else None)
        body: dict[str, Any] = {"id": self.id, "state": self.state, "frames": self.frames, "total_frames": self.total}
        body["progress"] = round(min(progress, 1.0), 4) if progress is not None else None
        if self.error:
            body["error"] = self.error
        if self.state == "done":
            body |= {"masks": self.masks, "download": f"/v1/videos/{self.id}/file"}
        return body


class Metrics:
    """The service's own figures, in a registry of its own (no process-wide singleton)."""

    def __init__(self, pool: Pool, admission: Admission, jobs: dict[str, Job]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("anonstream_http_requests", "requests answered", ["route", "status"], registry=r)
        self.seconds = Histogram(
            "anonstream_http_request_seconds", "time to answer", ["route"], buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.masks = Counter("anonstream_service_masks", "boxes masked, by class", ["class"], registry=r)
        self.full = Counter("anonstream_service_full_masked", "images or frames masked whole", registry=r)
        busy = Gauge("anonstream_service_busy", "detector sets at work", registry=r)
        busy.set_function(lambda: pool.busy)
        waiting = Gauge("anonstream_service_requests_inside", "image requests waiting or in work", registry=r)
        waiting.set_function(lambda: admission.inside)
        running = Gauge("anonstream_service_jobs", "video jobs not yet fetched", registry=r)
        running.set_function(lambda: len(jobs))
        info = Gauge("anonstream_worker_info", "what the detectors run on (always 1)", ["worker", "device"], registry=r)
        for number, member in enumerate(pool.members, 1):
            info.labels(str(number), member.device).set(1)

    def count(self, result: Anonymized) -> None:
        for label, count in result.detections.counts().items():
            self.masks.labels(label).inc(count)
        if result.full_mask:
            self.full.inc()


def read_image(data: bytes, content_type: str, max_pixels: int) -> tuple[np.ndarray, str]:
    """The decoded image and its format, or a BadRequest that says what is wrong with the bytes."""
    if not data:
        raise BadRequest(400, "the body is empty: send the image's bytes")
    media = content_type.split(";")[0].strip().lower()
    accepted = ", ".join(kind for kind, _, _ in IMAGE_FORMATS.values())
    if media not in {kind for kind, _, _ in IMAGE_FORMATS.values()}:
        raise BadRequest(415, f"Content-Type {media or '(none)'} is not accepted: send {accepted}")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only: nothing is decoded yet
            kind, (width, height) = probe.format or "", probe.size
    except Image.DecompressionBombError as exc:
        raise BadRequest(413, f"the image has too many pixels ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadRequest(400, f"the body is not an image in a format accepted ({accepted})") from None
    if kind not in IMAGE_FORMATS:
        raise BadRequest(415, f"the body is a {kind} image; send {accepted}")
    if IMAGE_FORMATS[kind][0] != media:
        raise BadRequest(415, f"Content-Type says {media}, but the body is {IMAGE_FORMATS[kind][0]}")
    if width * height > max_pixels:
        raise BadRequest(413, f"{width} x {height} pixels is more than serve.max_pixels ({max_pixels})")
    if not _complete(kind, data):
        raise BadRequest(400, f"the {kind} image is truncated: its end is missing")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadRequest(400, f"the {kind} image cannot be decoded")
    return image, kind


def _complete(kind: str, data: bytes) -> bool:
    """Whether the bytes run to the format's end marker (OpenCV would fill a cut-short image with grey)."""
    if kind == "JPEG":
        return data.rstrip(b"\0")[-2:] == b"\xff\xd9"
    if kind == "PNG":
        return b"IEND" in data[-12:]
    return len(data) >= 8 + int.from_bytes(data[4:8], "little")  # WebP: RIFF's declared size


def encode_image(image: np.ndarray, kind: str) -> bytes:
    _, suffix, params = IMAGE_FORMATS[kind]
    ok, encoded = cv2.imencode(suffix, image, params)
    if not ok:
        raise AnonymizationError(f"the anonymized image could not be encoded as {kind}")
    return encoded.tobytes()


def boxes_of(result: Anonymized) -> list[dict[str, Any]]:
    found = result.detections
    return [
        {"class": str(label), "box": [round(float(v), 1) for v in box], "score": round(float(score), 3)}
        for box, score, label in zip(found.boxes, found.scores, found.labels, strict=True)
    ]


def load_token(settings: Settings) -> str | None:
    """The API token, from serve.token_file (never from a flag: a command line is visible to every user)."""
    path = settings.serve.token_file
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"serve.token_file: cannot read {path}: {exc}") from None
    if len(token) < 16:
        raise ConfigError(f"serve.token_file: the token in {path} is shorter than 16 characters")
    return token


class Service:
    """The pool, the jobs and the private folder behind the routes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        cfg = settings.serve
        self.token = load_token(settings)
        self.folder = Path(tempfile.mkdtemp(prefix="anonstream-serve-"))  # 0700: this user only
        self.pool = Pool(settings, settings.worker.count)
        self.admission = Admission(settings.worker.count + cfg.queue)
        self.jobs: dict[str, Job] = {}
        self._jobs_lock = threading.Lock()
        self._runner = ThreadPoolExecutor(cfg.max_jobs, thread_name_prefix="video")
        self.metrics = Metrics(self.pool, self.admission, self.jobs)
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="reaper", daemon=True)
        self._reaper.start()

    def close(self) -> None:
        self._stop.set()  # a running job stops at its next frame (``_run``)
        self._runner.shutdown(wait=True, cancel_futures=True)
        self.pool.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- images ---

    def anonymize(self, data: bytes, content_type: str, options: dict[str, str]) -> tuple[bytes, str, Anonymized]:
        image, kind = read_image(data, content_type, self.settings.serve.max_pixels)
        detect = [d for d in options["detect"].split(",") if d] if "detect" in options else None
        with self.pool.borrow(self.settings.serve.timeout_s) as anonymizer:
            try:
                result = anonymizer.anonymize(image, mask=options.get("mask"), detect=detect)
            except ConfigError as exc:
                raise BadRequest(400, str(exc)) from None
        self.metrics.count(result)
        return encode_image(result.image, kind), IMAGE_FORMATS[kind][0], result

    # --- videos ---

    def new_job(self, suffix: str) -> Job:
        limit = self.settings.serve.max_jobs
        if sum(job.ended_at is None for job in self.jobs.values()) >= limit:
            raise BadRequest(503, f"{limit} video jobs (serve.max_jobs) already queued or running", RETRY_AFTER_S)
        job_id = uuid.uuid4().hex
        folder = self.folder / job_id
        folder.mkdir(mode=0o700)
        return Job(job_id, folder, folder / f"upload{suffix}", folder / f"anonymized{suffix}")

    def start(self, job: Job) -> None:
        try:
            with av.open(str(job.source)) as container:
                if container.format.name in STILL_DEMUXERS or container.format.name.endswith("_pipe"):
                    raise BadRequest(415, "the upload is an image, not a video: send it to /v1/anonymize")
                if not container.streams.video:
                    raise BadRequest(415, "the upload has no video stream")
                job.total = container.streams.video[0].frames or None
        except (av.FFmpegError, OSError):
            raise BadRequest(415, "the upload is not a video that FFmpeg can read") from None
        with self._jobs_lock:
            self.jobs[job.id] = job
        self._runner.submit(self._run, job)

    def _run(self, job: Job) -> None:
        try:
            with self.pool.borrow(None) as anonymizer:
                job.state = "running"

                def progress(done: int, total: int | None) -> None:
                    if self._stop.is_set():
                        raise Stopping("the service stopped before the job was done")
                    job.frames, job.total = done, total or job.total

                result = anonymizer.anonymize_file(job.source, job.output, progress=progress)
            job.masks, job.frames = result.masks, result.frames
            job.state = "done"
        except AnonstreamError as exc:
            job.state, job.error = "failed", str(exc)
            log.warning("video job %s failed: %s", job.id, exc)
        except Exception:
            job.state, job.error = "failed", "internal error (see the service's log)"
            log.exception("video job %s failed", job.id)
        finally:
            job.source.unlink(missing_ok=True)  # the raw upload goes as soon as the job ends
            job.ended_at = time.monotonic()
            if job.state != "done":
                job.output.unlink(missing_ok=True)

    def take(self, job_id: str) -> Job | None:
        """A done job, handed out once: a second request finds nothing."""
        with self._jobs_lock:
            job = self.jobs.get(job_id)
            if job is None or job.state != "done":
                return job
            return self.jobs.pop(job_id)

    def remove(self, job_id: str) -> None:
        with self._jobs_lock:
            job = self.jobs.pop(job_id, None)
        if job is not None:
            shutil.rmtree(job.folder, ignore_errors=True)

    def _reap_loop(self) -> None:
        while not self._stop.wait(REAP_EVERY_S):
            self.reap()

    def reap(self) -> None:
        """Results not fetched within serve.retention_s, and failed jobs after as long, are removed."""
        now, keep = time.monotonic(), self.settings.serve.retention_s
        for job in list(self.jobs.values()):
            if job.ended_at is not None and now - job.ended_at > keep:
                self.remove(job.id)


def create_app(settings: Settings) -> FastAPI:
    """The ASGI application; the pool loads when it starts and everything is removed when it stops."""
    holder: dict[str, Service] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        holder["service"] = await run_in_threadpool(Service, settings)
        service = holder["service"]
        described = service.pool.members[0].description
        host, port = _address(settings)
        log.info("serving on http://%s:%d, %d detector set(s): %s", host, port, len(service.pool.members), described)
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="anonstream",
        version=__version__,
        summary="Faces and licence plates masked in images and videos.",
        lifespan=lifespan,
    )

    def service() -> Service:
        return holder["service"]

    @app.exception_handler(BadRequest)
    async def _bad(_: Request, exc: BadRequest) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        if exc.close:  # the rest of the body is not read: the connection cannot carry another request
            headers["Connection"] = "close"
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        """The client closed its connection mid-upload: nobody to answer, nothing wrong here; counted."""
        log.debug("%s %s: the client went away before its body arrived", request.method, request.url.path)
        return Response(status_code=CLIENT_GONE)

    @app.exception_handler(AnonstreamError)
    async def _failed(_: Request, exc: AnonstreamError) -> JSONResponse:
        log.error("request failed: %s", exc)
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": problems}, status_code=400)

    app.add_middleware(_Guard, service=lambda: holder.get("service"))

    @app.post(
        "/v1/anonymize",
        summary="Anonymize one image",
        description="The body is a JPEG, PNG or WebP image (Content-Type image/jpeg, image/png or image/webp); "
        "the answer is the same image anonymized, in the same format. `boxes=header` adds what was masked as JSON "
        "in the X-Anonstream-Boxes header; `boxes=json` answers JSON with the boxes and the image in base64.",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}}},
    )
    async def anonymize(
        request: Request,
        mask: MaskMode | None = None,
        detect: str | None = None,
        boxes: Literal["header", "json"] | None = None,
    ) -> Response:
        svc = service()
        _known_options(request, IMAGE_OPTIONS)
        with svc.admission.enter("images"):
            data = await _body(request, svc.settings.serve)
            options = {k: v for k, v in (("mask", mask), ("detect", detect)) if v is not None}
            try:
                encoded, media, result = await asyncio.wait_for(
                    run_in_threadpool(svc.anonymize, data, request.headers.get("content-type", ""), options),
                    svc.settings.serve.timeout_s,
                )
            except TimeoutError:
                raise BadRequest(503, "the image took longer than serve.timeout_s", RETRY_AFTER_S) from None
        if boxes == "json":
            body = {"boxes": boxes_of(result), "full_mask": result.full_mask, "media_type": media}
            return JSONResponse(body | {"image": base64.b64encode(encoded).decode()})
        headers = {"X-Anonstream-Full-Mask": "1"} if result.full_mask else {}
        if boxes == "header":
            headers["X-Anonstream-Boxes"] = json.dumps(boxes_of(result), separators=(",", ":"))
        return Response(encoded, media_type=media, headers=headers)

    @app.post(
        "/v1/videos",
        status_code=202,
        summary="Start a video job",
        description="The body is a video file (Content-Type video/...). The answer is the job: poll "
        "GET /v1/videos/{id}, then fetch GET /v1/videos/{id}/file once (it is deleted after).",
    )
    async def new_video(request: Request) -> JSONResponse:
        svc = service()
        _known_options(request, frozenset())
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not media.startswith("video/"):
            raise BadRequest(415, f"Content-Type {media or '(none)'} is not a video type: send video/mp4 or similar")
        suffix = next((suffix for suffix, kind in VIDEO_TYPES.items() if kind == media), ".mp4")
        job = svc.new_job(suffix)
        try:
            await _save(request, job.source, svc.settings.serve)
            await run_in_threadpool(svc.start, job)
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        return JSONResponse(job.view(), status_code=202, headers={"Location": f"/v1/videos/{job.id}"})

    @app.get("/v1/videos/{job_id}", summary="A video job's state and progress")
    async def video(job_id: str) -> JSONResponse:
        return JSONResponse(_job(service(), job_id).view())

    @app.get("/v1/videos/{job_id}/file", summary="The anonymized video, once: it is deleted after")
    async def video_file(job_id: str) -> Response:
        job = service().take(job_id)
        if job is None:
            raise BadRequest(404, "no such job (it may have been fetched, deleted, or expired)")
        if job.state != "done":
            raise BadRequest(409, f"the job is {job.state}: fetch the file once it is done")
        remove = BackgroundTask(shutil.rmtree, job.folder, ignore_errors=True)
        name = f"{job_id}{job.output.suffix}"
        return FileResponse(job.output, media_type=VIDEO_TYPES[job.output.suffix], filename=name, background=remove)

    @app.delete("/v1/videos/{job_id}", status_code=204, summary="Forget a job and delete its files")
    async def delete_video(job_id: str) -> Response:
        svc = service()
        _job(svc, job_id)
        svc.remove(job_id)
        return Response(status_code=204)

    @app.get("/healthz", summary="200 while the detectors are loaded and serving")
    async def healthz() -> JSONResponse:
        svc = holder.get("service")
        if svc is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        body = {"status": "ok", "workers": len(svc.pool.members), "busy": svc.pool.busy, "jobs": len(svc.jobs)}
        return JSONResponse(body | {"requests_inside": svc.admission.inside, "limit": svc.admission.limit})

    @app.get("/metrics", summary="Prometheus figures", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(service().metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Guard:
    """The token, the headers every answer carries, and the figures: one place for every route.

    Plain ASGI, not Starlette's BaseHTTPMiddleware: that one runs the route in
    a task of its own behind a stream, which hides a client's disconnect from
    the route reading its body.
    """

    def __init__(self, app: ASGIApp, service: Callable[[], Service | None]) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        svc = self.service()
        status = 500  # what it counts as if no answer starts (a route cancelled on shutdown)

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["Cache-Control"] = "no-store"
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        try:
            token = svc.token if svc is not None else None
            if token is not None and scope["path"].startswith("/v1/") and not _authorized(Headers(scope=scope), token):
                refused = JSONResponse({"error": "missing or wrong API token (Authorization: Bearer ...)"}, 401)
                await refused(scope, receive, answer)
                return
            await self.app(scope, receive, answer)
        except asyncio.CancelledError:  # uvicorn cancels what is left once STOP_GRACE_S of a stop has passed
            log.warning("%s %s: cancelled, the service is stopping", scope["method"], scope["path"])
            status = 503
        finally:
            if svc is not None:
                route = _route(scope["path"])
                svc.metrics.requests.labels(route, str(status)).inc()
                svc.metrics.seconds.labels(route).observe(time.perf_counter() - started)


def _authorized(headers: Headers, token: str) -> bool:
    given = headers.get("authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


def _route(path: str) -> str:
    """The route a path belongs to, for metric labels: a scan of random paths cannot add series without bound."""
    if path.startswith("/v1/videos/"):
        return "/v1/videos/{id}/file" if path.endswith("/file") else "/v1/videos/{id}"
    return path if path in ROUTES else "other"


def _known_options(request: Request, known: frozenset[str]) -> None:
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise BadRequest(400, f"unknown option(s): {', '.join(unknown)}; this endpoint takes {allowed}")


def _job(service: Service, job_id: str) -> Job:
    job = service.jobs.get(job_id)
    if job is None:
        raise BadRequest(404, "no such job (it may have been fetched, deleted, or expired)")
    return job


async def _chunks(request: Request, limit_mb: float, key: str, timeout_s: float) -> AsyncIterator[bytes]:
    """The request's body as it arrives, read no further than the limit (``key`` names it), nor for longer than
    ``timeout_s`` in all: a client that stalls or trickles gets 408 instead of holding its place."""
    limit = int(limit_mb * 1e6)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the upload is {int(declared)} bytes, more than {key} ({limit_mb:g} MB)", close=True)
    size = 0
    body = aiter(request.stream())
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(body)
        except StopAsyncIteration:
            return
        except TimeoutError:
            late = f"the body did not arrive within serve.upload_timeout_s ({timeout_s:g} s): {size} bytes came"
            raise BadRequest(408, late, close=True) from None
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the upload is more than {key} ({limit_mb:g} MB)", close=True)
        yield chunk


async def _body(request: Request, settings: ServeConfig) -> bytes:
    """An image upload, in memory (it is never written to disk)."""
    chunks = _chunks(request, settings.max_image_mb, "serve.max_image_mb", settings.upload_timeout_s)
    return b"".join([chunk async for chunk in chunks])


async def _save(request: Request, path: Path, settings: ServeConfig) -> None:
    """A video upload, streamed to the private folder, no further than serve.max_video_mb."""
    size = 0
    with path.open("wb") as out:
        async for chunk in _chunks(request, settings.max_video_mb, "serve.max_video_mb", settings.upload_timeout_s):
            size += len(chunk)
            out.write(chunk)
    if not size:
        raise BadRequest(400, "the body is empty: send the video's bytes")


def _address(settings: Settings) -> tuple[str, int]:
    return settings.serve.bind, settings.serve.port


def serve(settings: Settings) -> int:
    """Run the service until Ctrl-C or SIGTERM."""
    import uvicorn

    host, port = _address(settings)
    try:  # bound here, before the models load, so that a port in use is one clear line
        listening = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigError(f"serve.port: cannot listen on {host}:{port} ({reason}); choose another --port") from None
    config = uvicorn.Config(
        create_app(settings), log_config=None, access_log=False, timeout_graceful_shutdown=STOP_GRACE_S
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down cleanly, then passes on the Ctrl-C or SIGTERM that stopped it: a clean stop
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[listening])
    return 0 if server.started else 2
