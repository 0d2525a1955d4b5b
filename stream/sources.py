"""Frame sources: video files, single images, image folders, webcams and network streams.

Each source is a context manager that yields decoded frames with their
presentation time. Opening checks everything a user can get wrong and raises
SourceError with what to do, so a bad ``--source`` never reaches a worker.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np

from anonstream.closing import Closing
from anonstream.config import CaptureConfig, SourceSpec
from anonstream.errors import SourceError
from anonstream.redaction import redact
from anonstream.stream.wire import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
LIVE_TIME_BASE = Fraction(1, 1000)  # live sources are stamped in milliseconds since their first frame

SourceKind = Literal["file", "image", "folder", "webcam", "network"]


@dataclass(frozen=True, slots=True)
class SourceFrame:
    pixels: np.ndarray
    index: int
    pts: int
    name: str = ""
    resumed: bool = False  # the first frame after an outage of a live source


@dataclass(frozen=True, slots=True)
class SourceInfo:
    stream_id: str
    kind: SourceKind
    uri: str
    rate: Fraction
    time_base: Fraction
    frames: int | None  # total, where the container says
    live: bool


def classify(uri: str) -> SourceKind:
    if uri.lower().startswith(NETWORK_SCHEMES):
        return "network"
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "webcam"
    path = Path(uri)
    try:
        if path.is_dir():
            return "folder"
        if path.is_file():
            return "image" if path.suffix.lower() in IMAGE_SUFFIXES else "file"
    except OSError as exc:  # a name too long, a loop of links...
        raise SourceError(f"source {uri[:200]!r} cannot be used: {exc.strerror}") from None
    raise SourceError(
        f"source {uri!r} does not exist (give a video file, an image, an image folder, a webcam such as 0, or an "
        "rtsp:// URL)"
    )


def lossless(uri: str, config: CaptureConfig) -> bool:
    """Whether every frame of this source must be recorded: a file or folder not paced as a camera."""
    return not config.realtime and classify(uri) in ("file", "image", "folder")


def default_stream_id(uri: str, kind: SourceKind) -> str:
    if kind == "webcam":
        base = "cam" + (uri if uri.isdigit() else uri.removeprefix("/dev/video"))
    elif kind == "network":
        # host and path only: no user part, no query (it may hold a password, or a token)
        base = re.sub(r"^[a-z]+://([^@/]*@)?", "", uri, flags=re.IGNORECASE).split("?")[0].split("#")[0]
    else:
        base = Path(uri).resolve().stem if kind in ("file", "image") else Path(uri).resolve().name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "stream"
    return cleaned[:64]


def stream_ids(specs: list[SourceSpec]) -> list[str]:
    """One unique id per source: the configured one, or one made from the uri."""
    taken = {s.id for s in specs if s.id}
    ids: list[str] = []
    for spec in specs:
        if spec.id:
            ids.append(spec.id)
            continue
        base = default_stream_id(spec.uri, classify(spec.uri))
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        taken.add(candidate)
        ids.append(candidate)
    return ids


class Source(Closing):
    """Base class; subclasses fill ``info`` on open and implement ``frames``."""

    info: SourceInfo
    skipped: int = 0  # frames or images that could not be decoded

    def frames(self) -> Iterator[SourceFrame]:
        raise NotImplementedError


class VideoSource(Source):
    """A video file or network stream, decoded by FFmpeg through PyAV."""

    def __init__(self, stream_id: str, uri: str, kind: SourceKind, config: CaptureConfig) -> None:
        options: dict[str, str] = {}
        if uri.lower().startswith(("rtsp://", "rtsps://")):
            options = {"rtsp_transport": config.rtsp_transport, "fflags": "nobuffer", "flags": "low_delay"}
        # A network read that waits longer than stall_timeout_s fails, and the stream is reopened.
        timeout = (config.open_timeout_s, config.stall_timeout_s) if kind == "network" else config.open_timeout_s
        try:
            self._container = av.open(uri, options=options, timeout=timeout)
        except av.FFmpegError as exc:
            what = "video file" if kind == "file" else "stream"
            raise SourceError(
                f"cannot open {what} {redact(uri)!r}: {_no_uri(exc, uri)} (check the path or URL, and that FFmpeg "
                "can decode it)"
            ) from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{redact(uri)!r} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        live = kind == "network"
        self._stall_s = config.stall_timeout_s if live else None
        rate = self._stream.average_rate or self._stream.guessed_rate or Fraction(30)
        time_base = LIVE_TIME_BASE if live else (self._stream.time_base or Fraction(1, 90000))
        self.info = SourceInfo(
            stream_id, kind, uri, Fraction(rate), Fraction(time_base), self._stream.frames or None, live
        )

    def frames(self) -> Iterator[SourceFrame]:
        index = 0
        start = time.monotonic()
        packets = self._container.demux(self._stream)
        while True:
            asked = time.monotonic()
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as exc:
                raise SourceError(f"reading {redact(self.info.uri)!r} failed: {_no_uri(exc, self.info.uri)}") from None
            if self._stall_s is not None and (waited := time.monotonic() - asked) >= self._stall_s:
                # On its read timeout, FFmpeg's RTSP client may hand over a packet it held back instead of
                # failing, and the connection then goes on: it stalled all the same, so it is reopened.
                raise SourceError(f"no data for {waited:.1f} s (capture.stall_timeout_s)")
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:
                self.skipped += 1
                log.warning("%s: skipped an undecodable packet (%s)", self.info.stream_id, exc)
                continue
            for frame in decoded:
                if self.info.live or frame.pts is None:
                    pts = (
                        round((time.monotonic() - start) / self.info.time_base)
                        if self.info.live
                        else round(index / self.info.rate / self.info.time_base)
                    )
                else:
                    pts = int(frame.pts)
                yield SourceFrame(frame.to_ndarray(format="bgr24"), index, pts)
                index += 1

    def close(self) -> None:
        self._container.close()


def _no_uri(exc: Exception, uri: str) -> str:
    """FFmpeg's message, without the uri it may repeat (and the password in it)."""
    return str(exc).replace(f"'{uri}'", "").replace(uri, redact(uri)).rstrip(": ")


class FolderSource(Source):
    """Every image below a folder, in sorted order, as one stream."""

    def __init__(self, stream_id: str, uri: str, config: CaptureConfig) -> None:
        root = Path(uri)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise SourceError(f"folder {uri!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._use(stream_id, uri, "folder", root, files, config)

    def _use(
        self, stream_id: str, uri: str, kind: SourceKind, root: Path, files: list[Path], config: CaptureConfig
    ) -> None:
        """Send ``files`` in this order, each named relative to ``root``, at ``capture.folder_fps``."""
        self._root, self._files = root, files
        rate = Fraction(config.folder_fps).limit_denominator(1001)
        self.info = SourceInfo(stream_id, kind, uri, rate, 1 / rate, len(files), False)

    @property
    def names(self) -> list[str]:
        """Each image's name relative to the folder, in the order they are sent."""
        return [self._name(path) for path in self._files]

    def _name(self, path: Path) -> str:
        return path.relative_to(self._root).as_posix()

    def frames(self) -> Iterator[SourceFrame]:
        for index, path in enumerate(self._files):
            pixels = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
            if pixels is None:
                self.skipped += 1
                log.warning("%s: skipped %s: not a readable image", self.info.stream_id, path)
                continue
            yield SourceFrame(pixels, index, index, self._name(path))


class ImageSource(FolderSource):
    """One image file, as a stream of one frame named after it."""

    def __init__(self, stream_id: str, uri: str, config: CaptureConfig) -> None:
        path = Path(uri)
        if not cv2.haveImageReader(os.fspath(path)):
            raise SourceError(f"image {uri!r} cannot be read: not an image OpenCV can decode, or damaged")
        self._use(stream_id, uri, "image", path.parent, [path], config)


class WebcamSource(Source):
    """A local camera through OpenCV (V4L2 on Linux)."""

    def __init__(self, stream_id: str, uri: str, config: CaptureConfig) -> None:
        device: int | str = int(uri) if uri.isdigit() else uri
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its warnings say less than ours
        try:
            self._capture = cv2.VideoCapture(device)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(
                f"webcam {uri!r} cannot be opened: is it connected, and not used by another "
                "program? (list cameras with `ls /dev/video*`)"
            )
        fps = self._capture.get(cv2.CAP_PROP_FPS) or 30.0
        rate = Fraction(fps).limit_denominator(1001)
        self.info = SourceInfo(stream_id, "webcam", uri, rate, LIVE_TIME_BASE, None, True)

    def frames(self) -> Iterator[SourceFrame]:
        index = 0
        start = time.monotonic()
        while True:
            ok, pixels = self._capture.read()
            if not ok:
                raise SourceError(f"webcam {self.info.uri!r} stopped delivering frames")
            yield SourceFrame(pixels, index, round((time.monotonic() - start) / LIVE_TIME_BASE))
            index += 1

    def close(self) -> None:
        self._capture.release()


class NetworkSource(Source):
    """A network stream (RTSP...) that comes back by itself: not up yet, dropped, or stalled.

    Frames are stamped in milliseconds since the source was opened, across
    reconnections, so an outage is a gap in time; the first frame after one
    is marked ``resumed``. Waits between attempts double up to a cap, with
    jitter, and end at once when ``stop`` is set.
    """

    def __init__(self, stream_id: str, uri: str, config: CaptureConfig, stop: threading.Event | None = None) -> None:
        self._uri, self._config = uri, config
        self._stop = stop or threading.Event()
        self._random = random.Random()
        self._stream: VideoSource | None = None
        self.info = SourceInfo(stream_id, "network", uri, Fraction(30), LIVE_TIME_BASE, None, True)
        if not config.reconnect:
            self._stream = self._connect()  # nothing will retry: fail now, with the reason

    def _connect(self) -> VideoSource:
        stream = VideoSource(self.info.stream_id, self._uri, "network", self._config)
        self.info = dataclasses.replace(self.info, rate=stream.info.rate)
        return stream

    def _disconnect(self) -> None:
        if self._stream is not None:
            self.skipped += self._stream.skipped
            self._stream.close()
            self._stream = None

    def frames(self) -> Iterator[SourceFrame]:
        cfg = self._config
        start = time.monotonic()
        index = attempt = 0
        down_since: float | None = None
        while not self._stop.is_set():
            try:
                if self._stream is None:
                    self._stream = self._connect()
                    log.info("connected to %s", redact(self._uri))
                for frame in self._stream.frames():
                    resumed = down_since is not None and index > 0  # not an outage before the first frame
                    if down_since is not None and resumed:
                        log.warning("back after %.1f s without frames", time.monotonic() - down_since)
                    down_since, attempt = None, 0
                    pts = round((time.monotonic() - start) / LIVE_TIME_BASE)
                    yield SourceFrame(frame.pixels, index, pts, resumed=resumed)
                    index += 1
                reason = "the stream ended"
            except SourceError as exc:
                reason = str(exc)
            self._disconnect()
            if not cfg.reconnect:
                if reason == "the stream ended":
                    return
                raise SourceError(reason)
            now = time.monotonic()
            if down_since is None:
                down_since = now
            if cfg.give_up_s and now - down_since >= cfg.give_up_s:
                raise SourceError(f"{reason}; no frame for {cfg.give_up_s:g} s (capture.give_up_s), giving up")
            delay = min(cfg.reconnect_max_s, cfg.reconnect_min_s * 2**attempt) * self._random.uniform(0.5, 1.0)
            if cfg.give_up_s:
                delay = min(delay, down_since + cfg.give_up_s - now)  # one last attempt at the deadline
            attempt += 1
            log.warning("%s; reconnecting in %.1f s (attempt %d)", reason, delay, attempt)
            self._stop.wait(delay)

    def close(self) -> None:
        self._disconnect()


def open_source(spec: SourceSpec, stream_id: str, config: CaptureConfig, stop: threading.Event | None = None) -> Source:
    """The source for ``spec``; ``stop`` ends a network source's waits between reconnection attempts."""
    kind = classify(spec.uri)
    if kind == "folder":
        return FolderSource(stream_id, spec.uri, config)
    if kind == "image":
        return ImageSource(stream_id, spec.uri, config)
    if kind == "webcam":
        return WebcamSource(stream_id, spec.uri, config)
    if kind == "network":
        return NetworkSource(stream_id, spec.uri, config, stop)
    return VideoSource(stream_id, spec.uri, kind, config)
