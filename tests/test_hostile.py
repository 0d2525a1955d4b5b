"""Hostile input on the frame sockets: thousands of malformed messages while real frames flow.

A worker and a record process run as users run them, over TCP. The test
feeds the worker a real stream from one capture socket and, from a second
capture it also asks for frames, messages made by hypothesis: random bytes, wrong part counts,
headers with fields of every wrong type and size, huge declared shapes,
pixel buffers shorter or longer than declared. The same garbage goes
straight to the record process. Every real frame must come out anonymized
and in order, and both processes must live on and count what they rejected.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anonstream.demo import AstronautClip, astronaut_bgr
from anonstream.errors import WireError
from anonstream.stream.dispatch import Dispatcher
from anonstream.stream.wire import EndOfStream, FrameMessage, decode, encode
from tests.conftest import decode_video, free_port, raw_frame, start_cli
from tests.test_pipeline import assert_face_masked

REAL = "real"
FRAMES = 40
GARBAGE = 3000


_SMALL = np.zeros((4, 6, 3), np.uint8)
VALID = msgpack.unpackb(encode(raw_frame("fuzz", 0, _SMALL))[0])
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
values = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.lists(ints, max_size=5),
    st.dictionaries(st.text(max_size=5), ints, max_size=3),
)
mutated_header = st.dictionaries(st.sampled_from([*VALID, "extra"]), values, min_size=1, max_size=4).map(
    lambda changes: VALID | changes
)
huge_shape = st.tuples(st.integers(1, 2**40), st.integers(1, 2**40), st.sampled_from([1, 3, 4])).map(
    lambda shape: VALID | {"shape": list(shape)}
)
pixels = st.binary(max_size=200)


def _pack(head: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(head)
    return packed


hostile = st.one_of(
    st.lists(st.binary(max_size=100), min_size=1, max_size=4),  # anything at all
    st.tuples(mutated_header.filter(lambda h: h.get("stream") != REAL).map(_pack), pixels).map(list),
    st.tuples(huge_shape.map(_pack), pixels).map(list),
    st.tuples(st.just(_pack(VALID)), pixels).map(list),  # a valid header, a buffer of the wrong length
    st.tuples(st.just(_pack(VALID)), pixels, pixels).map(list),  # one part too many
)


def _corpus(count: int) -> list[list[bytes]]:
    """``count`` hostile messages, drawn by hypothesis (which favours boundary values)."""
    drawn: list[list[bytes]] = []

    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(hostile)
    def draw(parts: list[bytes]) -> None:
        drawn.append(parts)

    draw()
    return drawn


def test_real_frames_come_through_thousands_of_hostile_messages(tmp_path: Path) -> None:
    real_port, bad_port, rec_port = free_port(), free_port(), free_port()
    out = tmp_path / "out"
    # --insecure-plaintext: hostile senders that got past the keys (or a lab network without them)
    plain = "--insecure-plaintext"
    record = start_cli("record", "--bind", f"tcp://127.0.0.1:{rec_port}", "--record", str(out), "--expect", REAL, plain)
    worker_args = ["--input", f"tcp://127.0.0.1:{real_port}", "--input", f"tcp://127.0.0.1:{bad_port}", plain]
    worker = start_cli("worker", *worker_args, "--output", f"tcp://127.0.0.1:{rec_port}")
    corpus = _corpus(GARBAGE)
    clip = AstronautClip(width=320, height=180, frames=FRAMES)
    photo = astronaut_bgr()
    raw = [clip.frame(i, photo) for i in range(FRAMES)]
    context = zmq.Context()
    context.setsockopt(zmq.LINGER, 0)
    try:
        with Dispatcher().bind(f"tcp://127.0.0.1:{real_port}") as real:
            # A hostile capture: it waits for the worker to ask for frames, then sends it garbage.
            to_worker = context.socket(zmq.ROUTER)
            to_worker.bind(f"tcp://127.0.0.1:{bad_port}")
            assert to_worker.poll(60_000), "the worker never asked the hostile capture for frames"
            worker_id = to_worker.recv_multipart()[0]
            to_record = context.socket(zmq.PUSH)
            to_record.connect(f"tcp://127.0.0.1:{rec_port}")
            share = len(corpus) // FRAMES
            for seq, frame in enumerate(raw):
                assert real.send(raw_frame(REAL, seq, frame.copy()))
                for parts in corpus[seq * share : (seq + 1) * share]:
                    to_worker.send_multipart([worker_id, *parts])
                    to_record.send_multipart(parts)
            assert real.send(EndOfStream(REAL, FRAMES))
            record_out, record_err = record.communicate(timeout=120)
    finally:
        context.destroy()
        worker.send_signal(signal.SIGINT)
        _, worker_err = worker.communicate(timeout=60)
        if record.poll() is None:
            record.kill()
            print(record.communicate())
    assert record.returncode == 0, record_err
    assert worker.returncode == 0, worker_err
    assert "Traceback" not in record_err + worker_err
    assert "rejected" in record_out  # counted, and said
    assert "rejected malformed message" in worker_err
    anonymized, _ = decode_video(out / f"{REAL}.mp4")
    assert len(anonymized) == FRAMES  # every real frame, once, in order
    for index, (before, after) in enumerate(zip(raw, anonymized, strict=True)):
        assert_face_masked(before, after, clip.face_box(index), f"frame {index}")


def test_decode_answers_any_hostile_message_with_a_wire_error_only() -> None:
    """So the receivers catch WireError alone: anything else escaping decode is a bug, and is not hidden.

    A draw that happens to be a valid message must be one: it encodes back to itself.
    """
    corpus = _corpus(GARBAGE)
    rejected = 0
    for parts in corpus:
        try:
            message = decode(parts)
        except WireError:
            rejected += 1
            continue
        again = decode(encode(message))
        if isinstance(message, FrameMessage):
            assert isinstance(again, FrameMessage) and again.header == message.header, parts
            assert np.array_equal(again.pixels, message.pixels), parts
        else:
            assert again == message, parts
    assert rejected >= 0.99 * len(corpus), f"only {rejected} of {len(corpus)} hostile messages were rejected"
