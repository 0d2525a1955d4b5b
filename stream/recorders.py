"""Recorders: where anonymized frames end up, in order, one recorder per stream.

Every recorder refuses a frame that is not flagged anonymized, whatever sent
it: the last line of the fail-closed rule.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from fractions import Fraction
from pathlib import Path, PurePosixPath

import av
import cv2

from anonstream.closing import Closing
from anonstream.config import RecordConfig
from anonstream.errors import NotAnonymizedError, RecorderError, WireError
from anonstream.stream.wire import Flag, FrameHeader, FrameMessage, to_bgr8

log = logging.getLogger(__name__)

FINE_TIME_BASE = Fraction(1, 90000)


class Recorder(Closing, ABC):
    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.written = 0

    def write(self, message: FrameMessage) -> None:
        if not message.header.flags & Flag.ANONYMIZED:
            raise NotAnonymizedError(f"{self.stream} frame {message.header.seq} is not anonymized; refused")
        self._write(message)
        self.written += 1

    @abstractmethod
    def _write(self, message: FrameMessage) -> None: ...


class NullRecorder(Recorder):
    """Discards frames (after the anonymized check): for benchmarks."""

    def _write(self, message: FrameMessage) -> None:
        pass


class Mp4Recorder(Recorder):
    """H.264 in MP4 at the source's frame rate and timestamps.

    A change of frame size starts a new segment file (``name-1.mp4``...), as
    H.264 in MP4 cannot change size mid-stream, and so does a live source's
    return after an outage, rather than one frame shown for the whole gap.
    Fragmented MP4 (the default) stays playable if the process is killed.
    """

    def __init__(self, stream: str, path: Path, config: RecordConfig) -> None:
        super().__init__(stream)
        self.path = path
        self.config = config
        self.paths: list[Path] = []
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._shape: tuple[int, ...] = ()
        self._first_pts = 0
        self._last_pts = -1
        self._rescale = Fraction(1)
        self._failed = False

    def _open(self, header: FrameHeader, height: int, width: int) -> None:
        self.close()
        path = self.path if not self.paths else self.path.with_stem(f"{self.path.stem}-{len(self.paths)}")
        # Fragmented: a fragment per keyframe, each written out at once, so that a file cut short by a
        # crash or kill -9 plays up to its last complete fragment (at most keyframe_interval_s lost).
        flags = "frag_keyframe+empty_moov+default_base_moof"
        options = {"movflags": flags, "flush_packets": "1"} if self.config.fragmented else {}
        try:
            container = av.open(os.fspath(path), mode="w", format="mp4", options=options)
        except (OSError, av.FFmpegError) as exc:
            raise RecorderError(f"cannot write {path}: {exc}") from None
        rate = Fraction(*header.rate) if header.rate[0] else Fraction(30)
        video = container.add_stream(self.config.codec, rate=rate)
        if not isinstance(video, av.video.stream.VideoStream):
            raise RecorderError(f"codec {self.config.codec!r} is not a video encoder")
        video.width, video.height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        video.pix_fmt = "yuv420p"
        # The source's own time base, unless it is coarser than the MP4 muxer handles (live sources
        # count milliseconds, which it turns into non-monotonic timestamps); then 1/90000.
        source = Fraction(*header.time_base)
        video.time_base = video.codec_context.time_base = source if source.denominator >= 10000 else FINE_TIME_BASE
        self._rescale = source / video.time_base
        video.options = {"crf": str(self.config.crf), "preset": self.config.preset}
        # No B-frames: no reordering delay for a live recorder, and fragmented MP4 (which has no
        # edit list) then starts presenting at time 0.
        video.codec_context.max_b_frames = 0
        video.codec_context.gop_size = max(1, round(rate * self.config.keyframe_interval_s))
        self._container, self._video = container, video
        self._shape = (height, width)
        self._first_pts, self._last_pts = header.pts, -1
        self._failed = False
        self.paths.append(path)

    def _write(self, message: FrameMessage) -> None:
        header, pixels = message.header, to_bgr8(message.pixels)
        height, width = pixels.shape[:2]
        if self._container is None or (height, width) != self._shape or header.flags & Flag.RESUMED:
            self._open(header, height, width)
        assert self._container is not None and self._video is not None
        if height % 2 or width % 2:
            pixels = cv2.copyMakeBorder(pixels, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(pixels, format="bgr24")
        pts = max(round((header.pts - self._first_pts) * self._rescale), self._last_pts + 1)
        frame.pts, frame.time_base = pts, self._video.time_base
        self._last_pts = pts
        try:
            self._container.mux(self._video.encode(frame))
        except (OSError, av.FFmpegError) as exc:
            self._failed = True
            raise RecorderError(f"writing {self.paths[-1]} failed: {exc}") from None

    def close(self) -> None:
        if self._container is None or self._video is None:
            return
        container, self._container = self._container, None
        try:
            try:
                if not self._failed:  # PyAV crashes (SIGSEGV) flushing into a file whose last write failed
                    container.mux(self._video.encode(None))
            finally:
                container.close()
        except (OSError, av.FFmpegError) as exc:
            raise RecorderError(f"finishing {self.paths[-1]} failed: {exc}") from None


class ImageFolderRecorder(Recorder):
    """Writes each frame under the same relative name, and so format, it had in the source folder."""

    def __init__(self, stream: str, root: Path) -> None:
        super().__init__(stream)
        self.root = root

    def _write(self, message: FrameMessage) -> None:
        header = message.header
        name = PurePosixPath(header.name or f"{header.index:06d}.png")
        if name.is_absolute() or ".." in name.parts or not name.suffix:
            raise WireError(f"{self.stream}: refusing unsafe output name {header.name!r}")
        path = self.root.joinpath(*name.parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            ok = cv2.imwrite(os.fspath(path), message.pixels)
        except (OSError, cv2.error) as exc:
            raise RecorderError(f"cannot write {path}: {exc}") from None
        if not ok:
            raise RecorderError(f"cannot write {path} (disk full, or no permission?)")


def ensure_output_dir(path: Path) -> None:
    """Create the output folder, or say why it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecorderError(f"cannot create output folder {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise RecorderError(f"output folder {path} is not writable")


def make_recorder(stream: str, header: FrameHeader, config: RecordConfig) -> Recorder:
    """The recorder for a stream, chosen from the config and its first frame."""
    kind = config.format
    if kind == "auto":
        kind = "images" if header.name else "mp4"
    if kind == "null" or config.dir is None:
        return NullRecorder(stream)
    if kind == "images":
        return ImageFolderRecorder(stream, config.dir / stream)
    return Mp4Recorder(stream, config.dir / f"{stream}.mp4", config)
