"""The wire format over real ZeroMQ sockets: bit-exact frames, malformed messages rejected."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from anonstream.errors import WireError
from anonstream.stream.detections import Detections
from anonstream.stream.transport import FrameReceiver, FrameSender
from anonstream.stream.wire import (
    MAX_BOXES,
    MAX_CREDIT,
    MAX_HEADER_BYTES,
    WIRE_VERSION,
    Credit,
    Done,
    Dropped,
    EndOfStream,
    Flag,
    FrameHeader,
    FrameMessage,
    Reset,
    Stage,
    decode,
    encode,
    pixel_layout,
)

rng = np.random.default_rng(7)


def _header(pixels: np.ndarray, seq: int = 0) -> FrameHeader:
    return FrameHeader(
        stream="cam0",
        seq=seq,
        index=seq,
        pts=seq * 1001,
        time_base=(1, 30000),
        rate=(30000, 1001),
        shape=tuple(pixels.shape),
        dtype=str(pixels.dtype),
        pixfmt=pixel_layout(pixels),
        flags=Flag.ANONYMIZED,
        name="a/b.png",
        boxes=[(1.0, 2.0, 3.5, 4.5, 0.9, "face"), (10.0, 20.0, 50.5, 35.0, 0.6, "plate")],
    )


ARRAYS = {
    "bgr uint8 1080p": rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8),
    "gray uint8 odd size": rng.integers(0, 256, (7, 13), dtype=np.uint8),
    "bgra uint8": rng.integers(0, 256, (32, 48, 4), dtype=np.uint8),
    "bgr uint16": rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16),
    "gray float32": rng.random((17, 19), dtype=np.float32),
    "non-contiguous slice": rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)[::2, 10:150:3],
    "fortran order": np.asfortranarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)),
    "one pixel": np.zeros((1, 1, 3), np.uint8),
}


@pytest.fixture
def pair(tmp_path: Path):  # type: ignore[no-untyped-def]
    endpoint = f"ipc://{tmp_path}/frames"
    with FrameReceiver().bind(endpoint) as receiver, FrameSender().connect(endpoint) as sender:
        yield sender, receiver


def _receive(receiver: FrameReceiver, timeout_ms: int = 5000) -> object:
    message = receiver.receive(timeout_ms)
    assert message is not None, "nothing arrived"
    return message


@pytest.mark.parametrize("name", list(ARRAYS))
def test_frames_survive_a_real_socket_round_trip_bit_exact(pair, name: str) -> None:  # type: ignore[no-untyped-def]
    sender, receiver = pair
    pixels = ARRAYS[name]
    header = _header(pixels, seq=5)
    header.stamp(Stage.CAPTURED)
    assert sender.send(FrameMessage(header, pixels))
    got = _receive(receiver)
    assert isinstance(got, FrameMessage)
    assert got.pixels.shape == pixels.shape and got.pixels.dtype == pixels.dtype
    assert np.array_equal(got.pixels, pixels)
    assert got.header == header


def test_received_pixels_are_a_view_of_the_message_not_a_copy(pair) -> None:  # type: ignore[no-untyped-def]
    sender, receiver = pair
    pixels = ARRAYS["bgr uint8 1080p"]
    sender.send(FrameMessage(_header(pixels), pixels))
    got = _receive(receiver)
    assert isinstance(got, FrameMessage)
    assert not got.pixels.flags.owndata


def test_end_of_stream_is_its_own_message(pair) -> None:  # type: ignore[no-untyped-def]
    sender, receiver = pair
    end = EndOfStream("cam0", frames=12, dropped=3, skipped=1, reason="eof", epoch=2**63 - 1)
    assert len(encode(end)) == 1
    sender.send(end)
    assert _receive(receiver) == end


def test_drop_notice_is_its_own_message(pair) -> None:  # type: ignore[no-untyped-def]
    sender, receiver = pair
    notice = Dropped("cam0", seq=41, epoch=5)
    assert len(encode(notice)) == 1
    sender.send(notice)
    assert _receive(receiver) == notice


def test_a_receiver_rejects_what_its_end_does_not_expect(tmp_path: Path) -> None:
    """A worker takes frames and ends only: a drop notice sent to it is counted as rejected, like garbage."""
    endpoint = f"ipc://{tmp_path}/w"
    with (
        FrameReceiver(accept=(FrameMessage, EndOfStream)).bind(endpoint) as receiver,
        FrameSender().connect(endpoint) as sender,
    ):
        sender.send(Dropped("cam0", seq=1))
        sender.send(EndOfStream("cam0", frames=2))
        assert receiver.receive(5000) is None  # the notice, rejected
        assert _receive(receiver) == EndOfStream("cam0", frames=2)
        assert receiver.rejected == 1


def _valid_parts() -> list[bytes]:
    pixels = np.zeros((4, 6, 3), np.uint8)
    return [bytes(p) for p in encode(FrameMessage(_header(pixels), pixels))]


def _head(**changes: object) -> bytes:
    head = msgpack.unpackb(_valid_parts()[0])
    head.update(changes)
    return msgpack.packb(head)  # type: ignore[no-any-return]


PIXELS = bytes(4 * 6 * 3)
DROP = {"v": WIRE_VERSION, "kind": 3, "stream": "s", "seq": 1, "by": "worker"}
CREDIT = {"v": WIRE_VERSION, "kind": 5, "worker": 1, "credit": 4, "hello": True}
DONE = {"v": WIRE_VERSION, "kind": 6, "worker": 1, "stream": "s", "seq": 3, "epoch": 9}
MALFORMED = {
    "random bytes": [b"\x93\xff\x00garbage"],
    "empty message": [b""],
    "three parts": [_valid_parts()[0], PIXELS, b"x"],
    "header only": [_valid_parts()[0]],
    "not a map": [msgpack.packb([1, 2, 3]), PIXELS],
    "unknown version": [_head(v=99), PIXELS],
    "previous version": [_head(v=WIRE_VERSION - 1), PIXELS],
    "unknown kind": [_head(kind=99), PIXELS],
    "missing key": [msgpack.packb({"v": WIRE_VERSION, "kind": 1, "stream": "x"}), PIXELS],
    "extra key": [_head(evil=1), PIXELS],
    "huge shape": [_head(shape=[100000, 100000, 3]), PIXELS],
    "buffer too short": [_valid_parts()[0], PIXELS[:-1]],
    "buffer too long": [_valid_parts()[0], PIXELS + b"\0"],
    "wrong dtype": [_head(dtype="complex128"), PIXELS],
    "shape does not fit format": [_head(shape=[4, 6, 4]), PIXELS],
    "negative seq": [_head(seq=-1), PIXELS],
    "string seq": [_head(seq="1"), PIXELS],
    "zero time base": [_head(tb=[1, 0]), PIXELS],
    "short stamps": [_head(stamps=[0, 0]), PIXELS],
    "bad box": [_head(boxes=[[1, 2, 3]]), PIXELS],
    "box without its class": [_head(boxes=[[1, 2, 3, 4, 0.5]]), PIXELS],
    "box with a bad class": [_head(boxes=[[1, 2, 3, 4, 0.5, "../face"]]), PIXELS],
    "box with a numeric class": [_head(boxes=[[1, 2, 3, 4, 0.5, 7]]), PIXELS],
    "unknown flags": [_head(flags=1024), PIXELS],
    "oversized header": [b"\x00" * (MAX_HEADER_BYTES + 1), PIXELS],
    "float channel count": [_head(shape=[4, 6, 3.0]), PIXELS],
    "absolute stream id": [_head(stream="/tmp/x"), PIXELS],
    "stream id with a slash": [_head(stream="a/../../b"), PIXELS],
    "name escaping the folder": [_head(name="../../etc/x.png"), PIXELS],
    "absolute name": [_head(name="/etc/x.png"), PIXELS],
    "name with NUL": [_head(name="a\0b.png"), PIXELS],
    "name not an image": [_head(name="a.xyz"), PIXELS],
    "tiny frame rate": [_head(rate=[1, 2**30]), PIXELS],
    "huge time base": [_head(tb=[2**30, 1]), PIXELS],
    "stamp beyond int64": [_head(stamps=[2**63] + [0] * 7), PIXELS],
    "negative stamp": [_head(stamps=[-1] + [0] * 7), PIXELS],
    "end with pixels": [
        msgpack.packb(
            {"v": WIRE_VERSION, "kind": 2, "stream": "s", "frames": 1, "dropped": 0, "skipped": 0, "reason": "eof"}
        ),
        PIXELS,
    ],
    "drop notice with pixels": [msgpack.packb(DROP), PIXELS],
    "drop notice by an unknown stage": [msgpack.packb(DROP | {"by": "capture"})],
    "drop notice without seq": [msgpack.packb({k: v for k, v in DROP.items() if k != "seq"})],
    "credit beyond the limit": [msgpack.packb(CREDIT | {"credit": MAX_CREDIT + 1})],
    "negative credit": [msgpack.packb(CREDIT | {"credit": -1})],
    "credit with hello as a number": [msgpack.packb(CREDIT | {"hello": 1})],
    "credit from worker 0": [msgpack.packb(CREDIT | {"worker": 0})],
    "done with a bad stream id": [msgpack.packb(DONE | {"stream": "../s"})],
    "done without its epoch": [msgpack.packb({k: v for k, v in DONE.items() if k != "epoch"})],
    "reset with a key": [msgpack.packb({"v": WIRE_VERSION, "kind": 7, "worker": 1})],
    "credit with pixels": [msgpack.packb(CREDIT), PIXELS],
}


@pytest.mark.parametrize("message", [Credit(3, 8, hello=True), Credit(64, 0), Done(2, "cam.1", 41, 7), Reset()])
def test_what_captures_and_workers_say_about_the_work_survives_encoding(message: object) -> None:
    assert decode([bytes(p) for p in encode(message)]) == message  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_message_is_rejected(name: str) -> None:
    with pytest.raises(WireError):
        decode(MALFORMED[name])


def test_receiver_counts_rejects_and_keeps_receiving(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/frames"
    with FrameReceiver().bind(endpoint) as receiver, zmq.Context() as ctx, ctx.socket(zmq.PUSH) as raw:
        raw.connect(endpoint)
        for parts in MALFORMED.values():
            raw.send_multipart(parts)
        pixels = ARRAYS["bgr uint16"]
        raw.send_multipart(encode(FrameMessage(_header(pixels, seq=3), pixels)))
        got = None
        for _ in range(len(MALFORMED) + 5):
            got = receiver.receive(2000)
            if got is not None:
                break
        assert isinstance(got, FrameMessage) and got.header.seq == 3
        assert np.array_equal(got.pixels, pixels)
        assert receiver.rejected == len(MALFORMED)
        raw.setsockopt(zmq.LINGER, 0)


def test_sender_without_room_does_not_block_when_asked_not_to(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/nobody"
    with FrameSender(hwm=1).bind(endpoint) as sender:
        pixels = ARRAYS["one pixel"]
        assert not sender.send(FrameMessage(_header(pixels), pixels), block=False)


def test_a_crowd_fits_in_one_header() -> None:
    """A frame whose detector found more faces than a header lists still goes through, best boxes listed."""
    pixels = ARRAYS["gray uint8 odd size"]
    scores = rng.random(MAX_BOXES + 500).astype(np.float32)
    boxes = np.column_stack([rng.uniform(0, 5000, (len(scores), 2))] * 2).astype(np.float32)
    header = _header(pixels)
    labels = np.array(["face", "plate", "c" * 32])[np.arange(len(scores)) % 3]  # "c" * 32: the longest class name
    header.boxes = Detections(boxes, scores, labels).to_wire()
    decoded = decode(encode(FrameMessage(header, pixels)))
    assert isinstance(decoded, FrameMessage)
    assert len(decoded.header.boxes) == MAX_BOXES
    assert min(b[4] for b in decoded.header.boxes) >= np.sort(scores)[-MAX_BOXES] - 1e-6


def test_classes_survive_the_wire() -> None:
    pixels = ARRAYS["one pixel"]
    header = _header(pixels)
    face, plate = Detections.of("face", np.array([[1, 2, 3, 4]])), Detections.of("plate", np.array([[5, 6, 9, 8]]))
    found = Detections.concat([face, plate])
    header.boxes = found.to_wire()
    decoded = decode(encode(FrameMessage(header, pixels)))
    assert isinstance(decoded, FrameMessage)
    back = Detections.from_wire(decoded.header.boxes)
    assert back.labels.tolist() == ["face", "plate"] and back.counts() == {"face": 1, "plate": 1}
    np.testing.assert_array_equal(back.boxes, found.boxes)


def test_a_frame_keeps_its_capture_epoch_and_a_negative_one_is_refused() -> None:
    header = FrameHeader("cam0", 3, 3, 3, (1, 30), (30, 1), (2, 2, 3), "uint8", "bgr", epoch=123456789)
    parts = encode(FrameMessage(header, np.zeros((2, 2, 3), np.uint8)))
    decoded = decode(parts)
    assert isinstance(decoded, FrameMessage) and decoded.header.epoch == 123456789
    head = msgpack.unpackb(parts[0])
    head["epoch"] = -1
    with pytest.raises(WireError, match="epoch"):
        decode([msgpack.packb(head), parts[1]])
