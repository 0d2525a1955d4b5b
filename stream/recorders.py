"""Recorders: where anonymized frames end up, in order, one recorder per stream.

Every recorder refuses a frame that is not flagged anonymized, whatever sent
it: the last line of the fail-closed rule. ``plan_outputs`` says where each
stream goes (one file in, one file out: a video as MP4, an image in its own
format under its own name, a folder as the same names), and no recorder
replaces an existing file unless ``record.overwrite`` says so.
"""

from __future__ import annotations

import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import av
import cv2
import numpy as np

from anonstream.closing import Closing
from anonstream.config import CaptureConfig, RecordConfig, SourceSpec
from anonstream.errors import ConfigError, NotAnonymizedError, RecorderError, WireError
from anonstream.stream.sources import FolderSource, classify, stream_ids
from anonstream.stream.wire import IMAGE_SUFFIXES, Flag, FrameHeader, FrameMessage, Stage, to_bgr8

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    AudioPacket = av.Packet[av.audio.stream.AudioStream]

FINE_TIME_BASE = Fraction(1, 90000)
# output suffix -> container; MP4 and MOV are written fragmented (playable if cut short)
VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# audio codecs that go into those containers as they are (others are left out, with a warning)
COPIED_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus"})
AUDIO_TAIL_S = 0.5  # audio kept past the last video frame, at most (a run stopped early ends its audio there)


@dataclass(frozen=True, slots=True)
class Output:
    """Where one stream is written: a video or image file, or a folder (of a folder's images, or of frames)."""

    path: Path
    copy_from: Path | None = None  # a video file whose audio and metadata the output keeps


def _refuse_existing(path: Path, config: RecordConfig) -> None:
    if path.exists() and not config.overwrite:
        raise RecorderError(f"{path} already exists; add --overwrite to replace it, or write elsewhere")


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
    """H.264 in MP4 (or MOV, MKV by the name's suffix) at the source's frame rate and timestamps.

    A change of frame size starts a new segment file (``name-1.mp4``...), as
    H.264 in MP4 cannot change size mid-stream, and so does a live source's
    return after an outage, rather than one frame shown for the whole gap, and
    every ``record.segment_s``. With ``record.append`` an existing file is kept
    and the recording starts at the next free number (a restarted service).
    Fragmented MP4 (the default) stays playable if the process is killed.
    With ``copy_from`` (the source video file) its audio is copied in, packet
    for packet and in sync, and its rotation and creation time are kept.
    """

    def __init__(self, stream: str, path: Path, config: RecordConfig, copy_from: Path | None = None) -> None:
        super().__init__(stream)
        self.path = path
        self.config = config
        self.paths: list[Path] = []
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._shape: tuple[int, ...] = ()
        self._origin = Fraction(0)  # source time (s) at the segment's time 0
        self._segment_start = Fraction(0)  # source time (s) of the segment's first frame
        self._time_base = FINE_TIME_BASE
        self._frame_s = Fraction(1, 30)
        self._last_pts = -1
        self._failed = False
        self._source = _SourceExtras(copy_from, config.audio) if copy_from is not None else None

    def _segment_path(self) -> Path:
        if not self.paths and not self.config.append:
            _refuse_existing(self.path, self.config)
            return self.path
        number = len(self.paths)
        while (path := self._numbered(number)).exists() and not self.config.overwrite:
            number += 1  # a segment never replaces a file of an earlier run
        return path

    def _numbered(self, number: int) -> Path:
        return self.path.with_stem(f"{self.path.stem}-{number}") if number else self.path

    def _open(self, header: FrameHeader, height: int, width: int) -> None:
        self._finish()
        path = self._segment_path()
        container_format = VIDEO_FORMATS.get(path.suffix.lower(), "mp4")
        # Fragmented: a fragment per keyframe, each written out at once, so that a file cut short by a
        # crash or kill -9 plays up to its last complete fragment (at most keyframe_interval_s lost). With
        # audio, the header waits for the first fragment (delay_moov), so that its edit lists keep where
        # audio and video start (a file's audio that starts before its picture stays in sync); a file cut
        # short within its first fragment then does not play.
        with_audio = self._source is not None and self._source.has_audio
        flags = f"frag_keyframe+{'delay_moov' if with_audio else 'empty_moov'}+default_base_moof"
        fragmented = self.config.fragmented and container_format in ("mp4", "mov")
        options = {"movflags": flags, "flush_packets": "1"} if fragmented else {}
        try:
            container = av.open(os.fspath(path), mode="w", format=container_format, options=options)
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
        self._time_base, self._frame_s = video.time_base, 1 / rate
        first = header.pts * source
        self._origin = self._segment_start = first
        if self._source is not None:
            self._origin = self._source.prepare(container, video, first)
        elif captured := header.stamps[Stage.CAPTURED]:  # a camera: when this file's first frame was taken
            moment = datetime.fromtimestamp(captured / 1e9, UTC)
            container.metadata["creation_time"] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        video.options = {"crf": str(self.config.crf), "preset": self.config.preset}
        # No B-frames: no reordering delay for a live recorder, and fragmented MP4 (which has no
        # edit list) then starts presenting at time 0.
        video.codec_context.max_b_frames = 0
        video.codec_context.gop_size = max(1, round(rate * self.config.keyframe_interval_s))
        self._container, self._video = container, video
        self._shape = (height, width)
        self._last_pts = -1
        self._failed = False
        self.paths.append(path)

    def _write(self, message: FrameMessage) -> None:
        header, pixels = message.header, to_bgr8(message.pixels)
        height, width = pixels.shape[:2]
        if (
            self._container is None
            or (height, width) != self._shape
            or header.flags & Flag.RESUMED
            or self._segment_full(header)
        ):
            self._open(header, height, width)
        assert self._container is not None and self._video is not None
        if height % 2 or width % 2:
            pixels = cv2.copyMakeBorder(pixels, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(pixels, format="bgr24")
        seconds = header.pts * Fraction(*header.time_base) - self._origin
        pts = max(round(seconds / self._time_base), self._last_pts + 1)
        frame.pts, frame.time_base = pts, self._video.time_base
        self._last_pts = pts
        try:
            if self._source is not None:  # the audio up to this frame goes first: the two stay interleaved
                self._source.copy_audio(self._container, self._origin, self._origin + seconds)
            self._container.mux(self._video.encode(frame))
        except (OSError, av.FFmpegError) as exc:
            self._failed = True
            raise RecorderError(f"writing {self.paths[-1]} failed: {exc}") from None

    def _segment_full(self, header: FrameHeader) -> bool:
        """record.segment_s of the stream's time in this file: the next frame starts a new one."""
        limit = self.config.segment_s
        return bool(limit) and float(header.pts * Fraction(*header.time_base) - self._segment_start) >= limit

    def close(self) -> None:
        try:
            self._finish()
        finally:
            if self._source is not None:
                self._source.close()

    def _finish(self) -> None:
        """Finish the current segment file, if one is open."""
        if self._container is None or self._video is None:
            return
        container, self._container = self._container, None
        try:
            try:
                if not self._failed:  # PyAV crashes (SIGSEGV) flushing into a file whose last write failed
                    container.mux(self._video.encode(None))
                    if self._source is not None:
                        end = self._origin + self._last_pts * self._time_base + self._frame_s + Fraction(AUDIO_TAIL_S)
                        self._source.copy_audio(container, self._origin, end)
            finally:
                container.close()
        except (OSError, av.FFmpegError) as exc:
            raise RecorderError(f"finishing {self.paths[-1]} failed: {exc}") from None


class _SourceExtras(Closing):
    """What a recording of a video file keeps from it: its audio packets, copied as they are, and metadata."""

    def __init__(self, path: Path, audio: bool) -> None:
        self.path = path
        self._audio: av.container.InputContainer | None = None
        self._in: av.audio.stream.AudioStream | None = None
        self._out: av.audio.stream.AudioStream | None = None
        self._packets: Iterator[AudioPacket] = iter(())
        self._next: AudioPacket | None = None
        try:
            with av.open(os.fspath(path)) as source:
                self.creation_time = source.metadata.get("creation_time")
                video = source.streams.video[0]
                self.rotation = next((frame.rotation for frame in source.decode(video)), 0)
                if audio and source.streams.audio:
                    self._open_audio(source.streams.audio[0].codec_context.name)
        except (OSError, av.FFmpegError, IndexError) as exc:
            raise RecorderError(f"cannot read the audio and metadata of {path}: {exc}") from None

    def _open_audio(self, codec: str) -> None:
        if codec not in COPIED_AUDIO:
            log.warning("%s: its audio (%s) cannot be copied into the output as it is; left out", self.path, codec)
            return
        self._audio = av.open(os.fspath(self.path))
        self._in = self._audio.streams.audio[0]
        self._packets = (packet for packet in self._audio.demux(self._in) if _seconds(packet) is not None)
        self._next = next(self._packets, None)

    @property
    def has_audio(self) -> bool:
        return self._in is not None

    def prepare(
        self, container: av.container.OutputContainer, video: av.video.stream.VideoStream, first: Fraction
    ) -> Fraction:
        """Put the metadata and an audio stream into a new output file; the source time where it starts.

        That is the first video frame's time, or the next audio packet's if earlier: audio that
        starts before the picture keeps its offset, and no timestamp is negative.
        """
        if self.creation_time:
            container.metadata["creation_time"] = self.creation_time
        if self.rotation:
            video.set_display_rotation(self.rotation)
        if self._in is None:
            return first
        self._out = container.add_stream_from_template(self._in)
        start = _seconds(self._next) if self._next is not None else None
        return min(first, start) if start is not None else first

    def copy_audio(self, container: av.container.OutputContainer, origin: Fraction, until: Fraction) -> None:
        """Mux the audio packets that start before ``until`` (source seconds); those before ``origin`` are gone."""
        while self._next is not None and self._out is not None:
            packet = self._next
            start = _seconds(packet)
            assert start is not None
            if start >= until:
                return
            self._next = next(self._packets, None)
            if start < origin:
                continue  # before this file's first frame: a gap between segments
            shift = round(origin / packet.time_base)
            packet.pts = None if packet.pts is None else packet.pts - shift
            packet.dts = None if packet.dts is None else packet.dts - shift
            packet.stream = self._out
            container.mux(packet)

    def close(self) -> None:
        if self._audio is not None:
            self._audio.close()
            self._audio = None


def _seconds(packet: AudioPacket) -> Fraction | None:
    ticks = packet.pts if packet.pts is not None else packet.dts
    return None if ticks is None or packet.time_base is None else ticks * packet.time_base


def _write_image(path: Path, pixels: np.ndarray, config: RecordConfig) -> None:
    _refuse_existing(path, config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ok = cv2.imwrite(os.fspath(path), pixels)
    except (OSError, cv2.error) as exc:
        raise RecorderError(f"cannot write {path}: {exc}") from None
    if not ok:
        raise RecorderError(f"cannot write {path} (disk full, or no permission?)")


class ImageRecorder(Recorder):
    """One image, written to one file in the format its name says (a photo in, the same photo out)."""

    def __init__(self, stream: str, path: Path, config: RecordConfig) -> None:
        super().__init__(stream)
        self.path = path
        self.config = config

    def _write(self, message: FrameMessage) -> None:
        if self.written:
            raise RecorderError(f"{self.stream}: {self.path} holds one image, and a second frame came")
        _write_image(self.path, message.pixels, self.config)


class ImageFolderRecorder(Recorder):
    """Writes each frame under the same relative name, and so format, it had in the source folder."""

    def __init__(self, stream: str, root: Path, config: RecordConfig) -> None:
        super().__init__(stream)
        self.root = root
        self.config = config

    def _write(self, message: FrameMessage) -> None:
        header = message.header
        name = PurePosixPath(header.name or f"{header.index:06d}.png")
        if name.is_absolute() or ".." in name.parts or not name.suffix:
            raise WireError(f"{self.stream}: refusing unsafe output name {header.name!r}")
        _write_image(self.root.joinpath(*name.parts), message.pixels, self.config)


@dataclass(frozen=True, slots=True)
class PreviewImage:
    """One stream's latest anonymized picture, as a JPEG, for the preview page."""

    stream: str
    jpeg: bytes
    seq: int


class PreviewRecorder(Recorder):
    """The preview page's recorder: behind the same guard as every other, a small JPEG a few times a second.

    Frames arriving sooner than 1/``fps`` after the last one shown are passed over before any work is done.
    """

    QUALITY = 80

    def __init__(self, stream: str, fps: float, max_side: int, publish: Callable[[PreviewImage], None]) -> None:
        super().__init__(stream)
        self._interval_s, self._max_side, self._publish = 1 / fps, max_side, publish
        self._shown = -math.inf

    def _write(self, message: FrameMessage) -> None:
        now = time.monotonic()
        if now - self._shown < self._interval_s:
            return
        self._shown = now
        pixels = to_bgr8(message.pixels)
        scale = self._max_side / max(pixels.shape[:2])
        if scale < 1:
            pixels = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, self.QUALITY])
        if not ok:
            raise RecorderError(f"{self.stream}: cannot encode a preview image")
        self._publish(PreviewImage(self.stream, jpeg.tobytes(), message.header.seq))


def ensure_output_dir(path: Path) -> None:
    """Create the output folder, or say why it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecorderError(f"cannot create output folder {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise RecorderError(f"output folder {path} is not writable")


def plan_outputs(sources: list[SourceSpec], config: RecordConfig) -> dict[str, Output]:
    """Where each source's stream is written, by stream id; raises ConfigError for what cannot work.

    ``record.output`` (-o) is the one file of a single source: a video's in a video container,
    an image's in an image format. ``record.dir`` (--record) is a folder: a video becomes
    DIR/<stream>.mp4, an image DIR/<its own name>, a folder DIR/<stream>/<the same names>.
    """
    if config.format == "null":
        return {}
    if config.output is not None and config.dir is not None:
        raise ConfigError("give either -o/--output FILE (one source) or --record DIR, not both")
    file_like = config.dir is not None and config.dir.suffix.lower() in VIDEO_FORMATS.keys() | IMAGE_SUFFIXES
    if config.dir is not None and file_like and not config.dir.is_dir():
        raise ConfigError(
            f"--record takes a folder, and {config.dir} looks like a file name: to write one file, use -o {config.dir}"
        )
    if config.output is not None and len(sources) != 1:
        raise ConfigError(
            f"-o/--output names one output file, but {len(sources)} sources were given: "
            "use --record DIR to write each into a folder"
        )
    outputs: dict[str, Output] = {}
    for spec, sid in zip(sources, stream_ids(sources), strict=True):
        kind = classify(spec.uri)
        copy_from = Path(spec.uri) if kind == "file" else None
        if config.output is not None:
            _check_output_name(config.output, kind)
            outputs[sid] = Output(config.output, copy_from if config.output.suffix.lower() in VIDEO_FORMATS else None)
        elif config.dir is None:
            continue
        elif config.format == "images" or (config.format == "auto" and kind == "folder"):
            outputs[sid] = Output(config.dir / sid)
        elif config.format == "auto" and kind == "image":
            outputs[sid] = Output(config.dir / Path(spec.uri).name)
        else:
            outputs[sid] = Output(config.dir / f"{sid}.mp4", copy_from)
        if sid in outputs and kind in ("file", "image") and outputs[sid].path.resolve() == Path(spec.uri).resolve():
            raise ConfigError(f"{spec.uri} would be written over itself: choose another output")
    return outputs


def _check_output_name(path: Path, kind: str) -> None:
    suffix = path.suffix.lower()
    if kind == "folder":
        raise ConfigError(f"-o {path}: a folder of images is written into a folder: use --record DIR")
    if kind == "image" and suffix not in IMAGE_SUFFIXES:
        raise ConfigError(
            f"-o {path}: an image source is written as an image; give a name ending in one of "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    if kind != "image" and suffix not in VIDEO_FORMATS:
        raise ConfigError(f"-o {path}: a video is written as {', '.join(VIDEO_FORMATS)}; give such a name")


def existing_outputs(
    sources: list[SourceSpec], outputs: dict[str, Output], capture: CaptureConfig, append: bool = False
) -> list[Path]:
    """The files a run would write over that are already there (a folder source: each of its images).

    With ``append``, a video file is not among them: the recording goes on in a new numbered file.
    """
    found = []
    for spec, sid in zip(sources, stream_ids(sources), strict=True):
        output = outputs.get(sid)
        if output is None or (append and output.path.suffix.lower() in VIDEO_FORMATS):
            continue
        if output.path.suffix.lower() in VIDEO_FORMATS.keys() | IMAGE_SUFFIXES:
            found += [output.path] if output.path.exists() else []
        elif classify(spec.uri) == "folder":
            with FolderSource(sid, spec.uri, capture) as folder:
                found += [p for name in folder.names if (p := output.path / name).exists()]
        elif output.path.is_dir() and any(output.path.iterdir()):
            found.append(output.path)
    return found


def make_recorder(stream: str, header: FrameHeader, config: RecordConfig, output: Output | None = None) -> Recorder:
    """The recorder for a stream: at its planned output, or (a record process on its own) from its first frame."""
    if config.format == "null":
        return NullRecorder(stream)
    if output is not None:
        suffix = output.path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return ImageRecorder(stream, output.path, config)
        if suffix in VIDEO_FORMATS:
            return Mp4Recorder(stream, output.path, config, output.copy_from)
        return ImageFolderRecorder(stream, output.path, config)
    kind = config.format
    if kind == "auto":
        kind = "images" if header.name else "mp4"
    if config.dir is None:
        return NullRecorder(stream)
    if kind == "images":
        return ImageFolderRecorder(stream, config.dir / stream, config)
    return Mp4Recorder(stream, config.dir / f"{stream}.mp4", config)
