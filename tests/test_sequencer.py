"""Ordering after the pool: exact, with time passed in."""

from __future__ import annotations

import numpy as np

from anonstream.stream.sequencer import Ended, Lost, Sequencer
from anonstream.stream.wire import Dropped, EndOfStream, Flag, FrameHeader, FrameMessage, Idle


def frame(seq: int, stream: str = "s", flags: Flag = Flag.NONE) -> FrameMessage:
    pixels = np.zeros((2, 2, 3), np.uint8)
    header = FrameHeader(stream, seq, seq, seq, (1, 30), (30, 1), (2, 2, 3), "uint8", "bgr", flags)
    return FrameMessage(header, pixels)


def idle(worker: int, at_s: float) -> Idle:
    return Idle(worker, round(at_s * 1e9))


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


def test_a_slow_frame_of_a_file_is_never_lost_while_no_worker_died() -> None:
    """With the workers known, a file's missing frame is slow or on its way, however long, and idle or not."""
    s = Sequencer(loss_timeout_s=1.0, max_pending=10, workers=2, idle_timeout_s=30.0)
    s.push(frame(0), 0.0)
    s.push(frame(2), 0.1)
    assert s.poll(1000.0) == []
    assert seqs(s.push(idle(1, 500.0), 500.0)) == []  # worker 2 is busy: with frame 1, maybe
    assert seqs(s.push(frame(1), 1001.0)) == [1, 2]
    assert s.late == {"s": 0}


def test_with_no_death_a_frame_is_lost_only_when_every_worker_has_long_been_idle() -> None:
    """A safety net, not a path frames take: nothing can arrive once every worker idled that long."""
    s = Sequencer(loss_timeout_s=1.0, max_pending=10, workers=2, idle_timeout_s=30.0)
    s.push(frame(0), 0.0)
    s.push(frame(2), 1.0)
    assert seqs(s.push(idle(1, 20.0), 20.0) + s.push(idle(2, 20.0), 20.0)) == []
    assert seqs(s.push(idle(1, 31.5), 31.5) + s.push(idle(2, 31.5), 31.5)) == [("lost", 1, 1), 2]


def test_after_a_death_a_missing_frame_is_lost_once_every_worker_was_idle_well_after() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=10, workers=2)
    s.push(frame(0), 0.0)
    s.push(frame(2), 1.0)  # the stream waits for frame 1 from 1.0
    s.push(idle(1, 5.0), 5.0)
    s.push(idle(2, 5.0), 5.0)
    assert s.poll(5.0) == []  # idle, but no worker died: frame 1 is on its way (idle_timeout_s is 30)
    s.worker_died(6.0)
    assert seqs(s.push(idle(1, 6.5), 6.5) + s.push(idle(2, 6.9), 6.9)) == []  # within IDLE_GRACE_S of the death
    assert seqs(s.push(idle(2, 7.0), 7.1)) == []  # worker 1 has not been idle since
    assert seqs(s.push(idle(1, 7.2), 7.2)) == [("lost", 1, 1), 2]


def test_a_frame_its_capture_still_holds_is_never_lost_however_long_it_takes() -> None:
    """A worker died, and every worker said it was idle well after: but the capture still holds frame 1 (on a
    loaded machine, the one it sends again after the death may take seconds to arrive). Lost only once the
    capture no longer holds it (another worker passed it on, and it never came)."""
    s = Sequencer(loss_timeout_s=1.0, max_pending=10, workers=2)
    s.push(frame(0), 0.0)
    s.push(frame(2), 1.0)
    s.worker_died(2.0)
    s.capture_holds("s", 1)
    assert seqs(s.push(idle(1, 10.0), 10.0) + s.push(idle(2, 10.0), 10.0)) == []
    assert seqs(s.poll(100.0)) == []
    s.capture_holds("s", None)
    assert seqs(s.push(idle(1, 101.0), 101.0) + s.push(idle(2, 101.0), 101.0)) == [("lost", 1, 1), 2]


def test_a_live_stream_keeps_the_timeout_when_the_workers_are_known() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=10, workers=2)
    s.push(frame(0, flags=Flag.LIVE), 0.0)
    s.push(frame(2, flags=Flag.LIVE), 0.1)
    assert seqs(s.poll(1.2)) == [("lost", 1, 1), 2]


def test_a_file_ends_on_its_captures_count_when_its_end_of_stream_is_lost() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=10, workers=1)
    s.push(frame(0), 0.0)
    s.worker_died(0.1)
    assert s.capture_ended("s", 3, 0.5) == []
    assert seqs(s.push(frame(1), 0.6)) == [1]
    assert seqs(s.push(idle(1, 1.5), 1.5)) == []  # within IDLE_GRACE_S of the wait: frame 2 may be on its way
    out = s.push(idle(1, 1.7), 1.8)
    assert seqs(out) == [("lost", 2, 1), "end"]
    assert [e.end for e in out if isinstance(e, Ended)] == [None]


def test_the_end_of_stream_still_wins_over_the_captures_count() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=10, workers=1)
    s.push(frame(0), 0.0)
    s.capture_ended("s", 1, 0.1)
    out = s.push(EndOfStream("s", frames=1, skipped=2), 0.2)
    assert [e.end.skipped for e in out if isinstance(e, Ended) and e.end] == [2]


def test_pending_frames_are_bounded_in_bytes_too() -> None:
    s = Sequencer(loss_timeout_s=100.0, max_pending=100, max_pending_bytes=3 * 12, workers=1)
    out = []
    for seq in (1, 2, 3, 4):  # 12 bytes each
        out += s.push(frame(seq), 0)
    assert seqs(out) == [("lost", 0, 1), 1, 2, 3, 4]
    assert s.done("s") == 5


def in_session(message: FrameMessage, epoch: int) -> FrameMessage:
    message.header.epoch = epoch
    return message


def test_a_new_epoch_starts_the_stream_afresh_and_the_old_sessions_stragglers_are_late() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=100)
    assert seqs(s.push(in_session(frame(0, flags=Flag.LIVE), 11), 0)) == [0]
    assert seqs(s.push(in_session(frame(2, flags=Flag.LIVE), 11), 0)) == []  # seq 1 went down with the capture
    restarted = s.push(in_session(frame(0, flags=Flag.LIVE), 22), 0.1)
    assert seqs(restarted) == [("lost", 1, 1), 2, 0]  # the old session's last frame, then the new one's first
    assert not restarted[1].header.flags & Flag.RESUMED  # type: ignore[union-attr]
    assert restarted[2].header.flags & Flag.RESUMED  # type: ignore[union-attr]  # recorders begin a new file
    assert seqs(s.push(in_session(frame(1, flags=Flag.LIVE), 22), 0.1)) == [1]
    assert seqs(s.push(in_session(frame(3, flags=Flag.LIVE), 11), 0.2)) == []  # a straggler of the old session
    assert s.late == {"s": 1}
    assert seqs(s.push(EndOfStream("s", frames=2, epoch=22), 0.2)) == ["end"]


def test_a_few_forged_far_future_frames_cannot_make_a_stream_skip_its_real_ones() -> None:
    s = Sequencer(loss_timeout_s=1.0, max_pending=100)
    assert seqs(s.push(frame(0, flags=Flag.LIVE), 0)) == [0]
    for seq in (10**6, 10**6 + 1, 10**9):
        assert seqs(s.push(frame(seq, flags=Flag.LIVE), 0)) == []
    assert s.hostile == {"s": 3}
    assert seqs(s.poll(5.0)) == []  # nothing waits: the forged frames were never taken in
    assert seqs(s.push(frame(1, flags=Flag.LIVE), 5.0)) == [1]


def test_a_stream_first_seen_far_into_its_session_starts_where_it_is() -> None:
    """A record started after its camera's capture: nothing before counts as lost."""
    s = Sequencer(loss_timeout_s=1.0, max_pending=100)
    assert seqs(s.push(in_session(frame(50_000, flags=Flag.LIVE), 7), 0)) == [50_000]
    assert seqs(s.push(in_session(frame(50_001, flags=Flag.LIVE), 7), 0)) == [50_001]
    assert s.hostile == {"s": 0} and s.late == {"s": 0}
