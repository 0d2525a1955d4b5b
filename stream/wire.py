"""The wire format between anonstream's processes, version 8.

Version 2 added Flag.STILL, 3 Flag.RESUMED, 4 Flag.LIVE and the drop notice,
5 the class of each masked box, 6 the idle notice, 7 the capture's epoch,
8 the credit, done and reset messages between captures and workers.

A frame is a two-part ZeroMQ message: a msgpack header, then the raw pixel
buffer, sent and received without copying. End of stream is its own one-part
message, and so is a drop notice: a worker's word that it dropped one frame of
a live stream unseen because a newer one was waiting, so that the record
stage moves on at once instead of waiting for the frame as lost. An idle
notice is a worker's word that it held no frame at a given moment: after a
worker died, that is how the record stage tells a frame of a file that went
down with it from one still on its way (sequencer.py). Between a capture and
its workers, work goes by credit (dispatch.py): a worker's credit message
says how many more frames it can take, its done message that it has passed
one on (a credit back), and a capture's reset that it does not know the
worker (it restarted, or gave the worker up): the worker then says afresh
what it can take. Every received
message is validated before use; nothing is allocated on a header's say-so
(pixels are a view of the buffer that arrived).

Header keys (msgpack map; no other keys are accepted):

    v        int    wire version, WIRE_VERSION
    kind     int    Kind.FRAME, Kind.END, Kind.DROP, Kind.IDLE, Kind.CREDIT, Kind.DONE or Kind.RESET
    stream   str    stream id: letters, digits, '.', '_', '-', at most 64, not starting with '.', '_', '-'
    epoch    int    (frames, ends, drops) the capture's session: a random id per capture start, 1..MAX_EPOCH;
                    seq counts from 0 again in a new one (0: none given, as from the Python API)
    --- frames only ---
    seq      int    0, 1, 2... per stream, over the frames the capture sent
    index    int    frame number in the source (gaps: frames dropped before sending)
    pts      int    presentation time, in time_base units
    tb       [n,d]  time base of pts, as a fraction n/d
    rate     [n,d]  nominal frame rate of the source, n/d frames per second
    shape    [h,w] or [h,w,c]
    dtype    str    one of DTYPES
    pixfmt   str    one of PIXEL_FORMATS
    flags    int    Flag bits
    stamps   [int]  one wall-clock time in ns per Stage, 0 where not reached
    name     str    image file name relative to its source folder (no '..', no absolute path), else ""
    dropped  int    frames this stream has dropped before sending, so far
    boxes    [[x1,y1,x2,y2,score,class]]  regions the worker masked; class is a CLASS_NAME ("face", "plate"...)
    --- end of stream only ---
    frames   int    how many frames the capture sent (seq 0..frames-1)
    skipped  int    source frames that could not be decoded
    reason   str    why the stream ended ("eof", "stopped", "error: ...")
    --- drop notice only ---
    seq      int    the frame dropped
    by       str    the stage that dropped it, one of DROP_STAGES
    --- idle notice only (no stream key) ---
    worker   int    the worker's number, 1..MAX_WORKERS
    at       int    CLOCK_MONOTONIC ns (one host's clock) when its queues were found empty
    --- credit only (no stream key) ---
    worker   int    the worker's number, 1..MAX_WORKERS
    credit   int    frames it can take, 0..MAX_CREDIT: all it can take now if hello, else more than it said
    hello    bool   the first word of this worker to this capture (after a start, or a reset)
    --- done only ---
    worker   int    the worker's number
    seq      int    the frame it passed on (anonymized, dropped, or failed and counted); an end: its frames
    --- reset only: v and kind ---
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from pathlib import PurePosixPath
from typing import Any

import cv2
import msgpack
import numpy as np

from anonstream.errors import WireError

WIRE_VERSION = 8
MAX_EPOCH = 2**63 - 1
MAX_WORKERS = 64
MAX_CREDIT = 64  # frames one worker may ask of one capture at once
MAX_SIDE = 16384
MAX_BOXES = 4096  # boxes listed in a header; a crowd may have more masked, the best-scored are listed
MAX_HEADER_BYTES = 64 * 1024 + MAX_BOXES * 80  # room for MAX_BOXES boxes (46 msgpack bytes, and the class name)

MAX_STAMP = 2**62
STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # also a safe file name
CLASS_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # what a box is: "face", "plate", or a class of your own model
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

DTYPES = frozenset({"uint8", "uint16", "float32"})  # float32 pixels are in [0, 1]
# pixel format -> channels (0: a 2-D array)
PIXEL_FORMATS = {"bgr": 3, "gray": 0, "bgra": 4}


class Kind(IntEnum):
    FRAME = 1
    END = 2
    DROP = 3
    IDLE = 4
    CREDIT = 5
    DONE = 6
    RESET = 7


class Flag(IntFlag):
    NONE = 0
    ANONYMIZED = 1  # a worker detected and masked this frame; only such frames may be recorded
    FULL_MASK = 2  # detection failed, so the whole frame was masked instead (fail closed)
    STILL = 4  # an image on its own (--stills): the worker scans all of it at high resolution
    RESUMED = 8  # the first frame after a live source came back from an outage: recorders start a new segment
    LIVE = 16  # from a live source (or --realtime): a worker behind drops its older frames rather than queue them


class Stage(IntEnum):
    """Where a frame was, in order; each has a timestamp in the header."""

    CAPTURED = 0
    SENT = 1
    RECEIVED = 2
    INFER_START = 3
    INFER_END = 4
    MASKED = 5
    SEQUENCED = 6
    RECORDED = 7


Box = tuple[float, float, float, float, float, str]  # x1, y1, x2, y2, score, class


@dataclass(slots=True)
class FrameHeader:
    stream: str
    seq: int
    index: int
    pts: int
    time_base: tuple[int, int]
    rate: tuple[int, int]
    shape: tuple[int, ...]
    dtype: str
    pixfmt: str
    flags: Flag = Flag.NONE
    stamps: list[int] = field(default_factory=lambda: [0] * len(Stage))
    name: str = ""
    dropped: int = 0
    boxes: list[Box] = field(default_factory=list)
    epoch: int = 0

    def stamp(self, stage: Stage, at_ns: int | None = None) -> None:
        self.stamps[stage] = time.time_ns() if at_ns is None else at_ns


@dataclass(frozen=True, slots=True)
class FrameMessage:
    header: FrameHeader
    pixels: np.ndarray


@dataclass(frozen=True, slots=True)
class EndOfStream:
    stream: str
    frames: int
    dropped: int = 0
    skipped: int = 0
    reason: str = "eof"
    epoch: int = 0


DROP_STAGES = frozenset({"worker"})


@dataclass(frozen=True, slots=True)
class Dropped:
    """Frame ``seq`` of a live stream was dropped before detection, by stage ``by``."""

    stream: str
    seq: int
    by: str = "worker"
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Idle:
    """Worker ``worker`` held no frame, in its queues or in hand, at ``at_ns`` (time.monotonic_ns of its host)."""

    worker: int
    at_ns: int


@dataclass(frozen=True, slots=True)
class Credit:
    """Worker ``worker`` can take ``credit`` more frames (all it can take, if ``hello``); also its heartbeat."""

    worker: int
    credit: int
    hello: bool = False


@dataclass(frozen=True, slots=True)
class Done:
    """Worker ``worker`` passed on message ``seq`` of ``stream`` (an end of stream: its frame count): a credit back."""

    worker: int
    stream: str
    seq: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Reset:
    """A capture does not know the worker it hears from: the worker is to say afresh what it can take."""


Message = FrameMessage | EndOfStream | Dropped | Idle  # what goes on towards the record stage
Control = Credit | Done | Reset  # what a capture and its workers say about the work between them


def pixel_layout(pixels: np.ndarray) -> str:
    """The pixel format an array of this shape is sent as."""
    if pixels.ndim == 2:
        return "gray"
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return "bgr"
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return "bgra"
    raise WireError(f"cannot send an array of shape {pixels.shape}: expected HxW, HxWx3 or HxWx4")


def encode(message: Message | Control) -> list[bytes | memoryview]:
    """Parts to pass to ``send_multipart(copy=False)``; pixels are not copied if contiguous."""
    if isinstance(message, EndOfStream):
        return _notice(
            Kind.END,
            stream=message.stream,
            frames=message.frames,
            dropped=message.dropped,
            skipped=message.skipped,
            reason=message.reason,
            epoch=message.epoch,
        )
    if isinstance(message, Dropped):
        return _notice(Kind.DROP, stream=message.stream, seq=message.seq, by=message.by, epoch=message.epoch)
    if isinstance(message, Idle):
        return _notice(Kind.IDLE, worker=message.worker, at=message.at_ns)
    if isinstance(message, Credit):
        return _notice(Kind.CREDIT, worker=message.worker, credit=message.credit, hello=message.hello)
    if isinstance(message, Done):
        return _notice(Kind.DONE, worker=message.worker, stream=message.stream, seq=message.seq, epoch=message.epoch)
    if isinstance(message, Reset):
        return _notice(Kind.RESET)
    h = message.header
    pixels = np.ascontiguousarray(message.pixels)
    if tuple(pixels.shape) != tuple(h.shape) or str(pixels.dtype) != h.dtype:
        raise WireError(f"header says {h.shape} {h.dtype}, pixels are {pixels.shape} {pixels.dtype}")
    head = {
        "v": WIRE_VERSION,
        "kind": int(Kind.FRAME),
        "stream": h.stream,
        "seq": h.seq,
        "index": h.index,
        "pts": h.pts,
        "tb": list(h.time_base),
        "rate": list(h.rate),
        "shape": list(h.shape),
        "dtype": h.dtype,
        "pixfmt": h.pixfmt,
        "flags": int(h.flags),
        "stamps": h.stamps,
        "name": h.name,
        "dropped": h.dropped,
        "boxes": [list(b) for b in h.boxes],
        "epoch": h.epoch,
    }
    return [msgpack.packb(head), pixels.data.cast("B")]


def _notice(kind: Kind, **fields: object) -> list[bytes | memoryview]:
    """A one-part message: its header alone."""
    return [msgpack.packb({"v": WIRE_VERSION, "kind": int(kind), **fields})]


_FRAME_KEYS = frozenset(
    {
        "v",
        "kind",
        "stream",
        "seq",
        "index",
        "pts",
        "tb",
        "rate",
        "shape",
        "dtype",
        "pixfmt",
        "flags",
        "stamps",
        "name",
        "dropped",
        "boxes",
        "epoch",
    }
)
_END_KEYS = frozenset({"v", "kind", "stream", "frames", "dropped", "skipped", "reason", "epoch"})
_DROP_KEYS = frozenset({"v", "kind", "stream", "seq", "by", "epoch"})
_IDLE_KEYS = frozenset({"v", "kind", "worker", "at"})
_CREDIT_KEYS = frozenset({"v", "kind", "worker", "credit", "hello"})
_DONE_KEYS = frozenset({"v", "kind", "worker", "stream", "seq", "epoch"})
_RESET_KEYS = frozenset({"v", "kind"})


def _int(head: dict[str, Any], key: str, low: int = 0, high: int = 2**63 - 1) -> int:
    value = head[key]
    if type(value) is not int or not low <= value <= high:
        raise WireError(f"header field {key!r} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _str(head: dict[str, Any], key: str, limit: int = 4096) -> str:
    value = head[key]
    if not isinstance(value, str) or len(value) > limit:
        raise WireError(f"header field {key!r} must be a string of at most {limit} characters")
    return value


def _fraction(head: dict[str, Any], key: str, low: float, high: float) -> tuple[int, int]:
    value = head[key]
    if (
        not isinstance(value, list)
        or len(value) != 2
        or any(type(v) is not int for v in value)
        or not (0 < value[0] < 2**31 and 0 < value[1] < 2**31)
        or not low <= value[0] / value[1] <= high
    ):
        raise WireError(f"header field {key!r} must be [numerator, denominator] within [{low}, {high}], got {value!r}")
    return value[0], value[1]


def _stream(head: dict[str, Any]) -> str:
    value = head["stream"]
    if not isinstance(value, str) or not STREAM_ID.fullmatch(value):
        raise WireError(f"invalid stream id {value!r}")
    return value


def _name(head: dict[str, Any]) -> str:
    value = _str(head, "name")
    if value:
        path = PurePosixPath(value)
        if (
            "\0" in value
            or "\\" in value
            or path.is_absolute()
            or ".." in path.parts
            or path.suffix.lower() not in IMAGE_SUFFIXES
        ):
            raise WireError(f"unsafe or unsupported image name {value[:100]!r}")
    return value


def _unpack_header(raw: bytes) -> dict[str, Any]:
    try:
        head = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise WireError(f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(head, dict):
        raise WireError("header is not a msgpack map")
    version = head.get("v")
    if version != WIRE_VERSION:
        raise WireError(f"unsupported wire version {version!r} (this build speaks {WIRE_VERSION})")
    return head


def decode(parts: list[bytes] | list[memoryview] | list[Any]) -> Message | Control:
    """Validate and decode a received multipart message; raises WireError.

    ``parts`` items may be bytes, memoryviews or ``zmq.Frame`` objects (their
    ``buffer`` is used, so pixels stay a view of the received message).
    """
    if not parts or len(parts) > 2:
        raise WireError(f"expected 1 or 2 message parts, got {len(parts)}")
    first = _buffer(parts[0])
    if first.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"header of {first.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    head = _unpack_header(bytes(first))
    kind = head.get("kind")
    if kind == Kind.END:
        if len(parts) != 1 or set(head) != _END_KEYS:
            raise WireError("malformed end-of-stream message")
        return EndOfStream(
            stream=_stream(head),
            frames=_int(head, "frames"),
            dropped=_int(head, "dropped"),
            skipped=_int(head, "skipped"),
            reason=_str(head, "reason"),
            epoch=_int(head, "epoch", 0, MAX_EPOCH),
        )
    if kind == Kind.DROP:
        if len(parts) != 1 or set(head) != _DROP_KEYS:
            raise WireError("malformed drop notice")
        by = _str(head, "by", 16)
        if by not in DROP_STAGES:
            raise WireError(f"unknown dropping stage {by!r}")
        return Dropped(stream=_stream(head), seq=_int(head, "seq"), by=by, epoch=_int(head, "epoch", 0, MAX_EPOCH))
    if kind == Kind.IDLE:
        if len(parts) != 1 or set(head) != _IDLE_KEYS:
            raise WireError("malformed idle notice")
        return Idle(worker=_int(head, "worker", 1, MAX_WORKERS), at_ns=_int(head, "at", 0, MAX_STAMP))
    if kind == Kind.CREDIT:
        if len(parts) != 1 or set(head) != _CREDIT_KEYS or type(head["hello"]) is not bool:
            raise WireError("malformed credit")
        worker, credit = _int(head, "worker", 1, MAX_WORKERS), _int(head, "credit", 0, MAX_CREDIT)
        return Credit(worker, credit, head["hello"])
    if kind == Kind.DONE:
        if len(parts) != 1 or set(head) != _DONE_KEYS:
            raise WireError("malformed done notice")
        worker = _int(head, "worker", 1, MAX_WORKERS)
        return Done(worker, _stream(head), _int(head, "seq"), _int(head, "epoch", 0, MAX_EPOCH))
    if kind == Kind.RESET:
        if len(parts) != 1 or set(head) != _RESET_KEYS:
            raise WireError("malformed reset")
        return Reset()
    if kind != Kind.FRAME:
        raise WireError(f"unknown message kind {kind!r}")
    if set(head) != _FRAME_KEYS:
        raise WireError(f"frame header keys differ from version {WIRE_VERSION}: {sorted(map(str, head))}")
    if len(parts) != 2:
        raise WireError("frame message without its pixel part")
    dtype = _str(head, "dtype", 16)
    pixfmt = _str(head, "pixfmt", 16)
    if dtype not in DTYPES:
        raise WireError(f"unsupported dtype {dtype!r}")
    if pixfmt not in PIXEL_FORMATS:
        raise WireError(f"unsupported pixel format {pixfmt!r}")
    shape_raw = head["shape"]
    channels = PIXEL_FORMATS[pixfmt]
    if (
        not isinstance(shape_raw, list)
        or len(shape_raw) != (2 if channels == 0 else 3)
        or any(type(d) is not int for d in shape_raw)
        or any(not 1 <= d <= MAX_SIDE for d in shape_raw[:2])
        or (channels and shape_raw[2] != channels)
    ):
        raise WireError(f"shape {shape_raw!r} does not fit pixel format {pixfmt!r}")
    shape = tuple(shape_raw)
    buffer = _buffer(parts[1])
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if buffer.nbytes != expected:
        raise WireError(f"pixel buffer has {buffer.nbytes} bytes, header declares {expected}")
    stamps = head["stamps"]
    if (
        not isinstance(stamps, list)
        or len(stamps) != len(Stage)
        or any(type(s) is not int or not 0 <= s <= MAX_STAMP for s in stamps)
    ):
        raise WireError("header field 'stamps' must hold one non-negative integer (ns) per stage")
    boxes_raw = head["boxes"]
    if not isinstance(boxes_raw, list) or len(boxes_raw) > MAX_BOXES:
        raise WireError("header field 'boxes' must be a list of at most 4096 boxes")
    boxes: list[Box] = []
    for box in boxes_raw:
        if (
            not isinstance(box, list)
            or len(box) != 6
            or any(type(v) not in (int, float) for v in box[:5])
            or not isinstance(box[5], str)
            or not CLASS_NAME.fullmatch(box[5])
        ):
            raise WireError("each box must be [x1, y1, x2, y2, score, class]")
        boxes.append((float(box[0]), float(box[1]), float(box[2]), float(box[3]), float(box[4]), box[5]))
    flags = _int(head, "flags", 0, int(max(Flag)) * 2 - 1)
    header = FrameHeader(
        stream=_stream(head),
        seq=_int(head, "seq"),
        index=_int(head, "index"),
        pts=_int(head, "pts", -(2**62), 2**62),
        time_base=_fraction(head, "tb", 1e-9, 1.0),
        rate=_fraction(head, "rate", 1e-3, 1e4),
        shape=shape,
        dtype=dtype,
        pixfmt=pixfmt,
        flags=Flag(flags),
        stamps=stamps,
        name=_name(head),
        dropped=_int(head, "dropped"),
        boxes=boxes,
        epoch=_int(head, "epoch", 0, MAX_EPOCH),
    )
    pixels = np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)
    return FrameMessage(header, pixels)


def _buffer(part: Any) -> memoryview:
    """A flat byte view of a message part: bytes, a memoryview, or a zmq.Frame's buffer."""
    view = getattr(part, "buffer", part)
    if not isinstance(view, (bytes, bytearray, memoryview)):
        raise WireError(f"unsupported message part type {type(part).__name__}")
    view = memoryview(view)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def to_bgr8(pixels: np.ndarray, stretch: bool = False) -> np.ndarray:
    """Any frame the wire carries as 8-bit BGR.

    ``stretch`` maps each frame's own range onto 0..255 for detection, so a
    face in 12-bit data stored as uint16, or in float pixels outside [0, 1],
    is as visible to the detector as it is in the recorded file.
    """
    if pixels.dtype != np.uint8:
        values = pixels.astype(np.float32)
        if stretch:
            low, high = float(values.min()), float(values.max())
            values = (values - low) * (255.0 / max(high - low, 1e-6))
        else:
            values = values / 257.0 if pixels.dtype == np.uint16 else values * 255.0
        pixels = np.clip(values, 0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR)
    return pixels
