"""Ordering after the pool: exact, with time passed in."""

from __future__ import annotations

import numpy as np

from anonstream.stream.sequencer import Ended, Lost, Sequencer
from anonstream.stream.wire import Dropped, EndOfStream, FrameHeader, FrameMessage


def frame(seq: int, stream: str = "s") -> FrameMessage:
    pixels = np.zeros((2, 2, 3), np.uint8)
    header = FrameHeader(stream, seq, seq, seq, (1, 30), (30, 1), (2, 2, 3), "uint8", "bgr")
    return FrameMessage(header, pixels)


def seqs(events: list[object]) -> list[object]:
    out: list[object] = []
    for e in events:
        if isinstance(e, FrameMessage):
            out.append(e.header.seq)
        elif isinstance(e, Lost):
            out.append(("lost", e.first_seq, e.count))
        elif isinstance(e, Dropped):
            out.append(("dropped", e.seq))
        elif isinstance(e, Ended):
            out.append("end")
    return out


def test_out_of_order_frames_come_out_in_order() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=10)
    assert seqs(s.push(frame(2), 0)) == []
    assert seqs(s.push(frame(1), 0)) == []
    assert seqs(s.push(frame(0), 0)) == [0, 1, 2]
    assert seqs(s.push(frame(3), 0)) == [3]


def test_a_drop_notice_stands_in_for_its_frame_at_once() -> None:
    """A frame a worker dropped holds nothing up: no wait for the loss timeout, and it is not counted lost."""
    s = Sequencer(loss_timeout_s=1.0, max_pending=10)
    assert seqs(s.push(frame(0), 0)) == [0]
    assert seqs(s.push(frame(2), 0)) == []
    assert seqs(s.push(Dropped("s", 1), 0)) == [("dropped", 1), 2]
    assert seqs(s.push(Dropped("s", 3), 0)) == [("dropped", 3)]
    assert seqs(s.push(EndOfStream("s", frames=4), 0)) == ["end"]


def test_missing_frame_is_declared_lost_after_the_timeout() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=10)
    s.push(frame(0), 0.0)
    s.push(frame(2), 0.1)
    s.push(frame(3), 0.2)
    assert s.poll(0.9) == []
    assert seqs(s.poll(1.2)) == [("lost", 1, 1), 2, 3]
    assert seqs(s.push(frame(1), 1.3)) == []
    assert s.late == {"s": 1}


def test_too_many_pending_frames_skip_the_gap_at_once() -> None:
    s = Sequencer(loss_timeout_s=100.0, max_pending=3)
    out = []
    for seq in (1, 2, 3, 4):
        out += s.push(frame(seq), 0)
    assert seqs(out) == [("lost", 0, 1), 1, 2, 3, 4]


def test_end_of_stream_waits_for_frames_in_flight() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=10)
    s.push(frame(0), 0)
    assert seqs(s.push(EndOfStream("s", frames=3), 0)) == []
    assert seqs(s.push(frame(2), 0.1)) == []
    assert seqs(s.push(frame(1), 0.2)) == [1, 2, "end"]


def test_end_of_stream_with_frames_that_never_come() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=10)
    s.push(frame(0), 0)
    s.push(EndOfStream("s", frames=3), 0)
    assert seqs(s.poll(1.5)) == [("lost", 1, 2), "end"]


def test_streams_are_independent() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=10)
    assert seqs(s.push(frame(1, "a"), 0)) == []
    assert seqs(s.push(frame(0, "b"), 0)) == [0]
    assert seqs(s.push(frame(0, "a"), 0)) == [0, 1]


def test_flush_releases_everything_and_ends_every_stream() -> None:
    s = Sequencer(loss_timeout_s=100.0, max_pending=10)
    s.push(frame(1), 0)
    s.push(frame(3), 0)
    s.push(frame(0, "b"), 0)
    out = s.flush()
    assert seqs([e for e in out if not (isinstance(e, FrameMessage) and e.header.stream == "b")]) == [
        ("lost", 0, 1),
        1,
        ("lost", 2, 1),
        3,
        "end",
        "end",
    ]
    assert [e.end for e in out if isinstance(e, Ended)] == [None, None]


def test_duplicates_and_frames_after_the_end_are_discarded() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=10)
    s.push(frame(0), 0)
    assert s.push(frame(0), 0) == []
    s.push(EndOfStream("s", frames=1), 0)
    assert s.push(frame(1), 0) == []
    assert s.late == {"s": 2}
