"""Work by credit over real ZeroMQ sockets: a capture's Dispatcher and workers' links, in one process.

Each worker here is a real ``WorkerLink`` (its DEALER sockets and its thread); the test plays the
worker's main loop: it takes messages from the link and says when each is done, or never does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from anonstream.stream.dispatch import HEARTBEAT_S, Dispatcher, Work, WorkerLink, work_key
from anonstream.stream.wire import EndOfStream, Flag, FrameMessage
from tests.conftest import raw_frame

PIXELS = np.zeros((4, 6, 3), np.uint8)


class Hands:
    """A worker's main loop, played by a thread: takes what its link received, and hands each credit back."""

    def __init__(self, link: WorkerLink, seconds_each: float = 0.0) -> None:
        self.link, self.seconds_each = link, seconds_each
        self.got: list[Work] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if (message := self.link.receive(50)) is not None:
                time.sleep(self.seconds_each)
                self.got.append(message)
                self.link.done(message)

    def seqs(self, stream: str) -> list[int]:
        return [m.header.seq for m in self.got if isinstance(m, FrameMessage) and m.header.stream == stream]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _until(capture: Dispatcher, condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        capture.listen(0.05)


@contextmanager
def _link(endpoint: str, number: int, credits: int) -> Iterator[WorkerLink]:
    with WorkerLink(number, credits, linger_ms=0).connect(endpoint) as link:
        yield link.start()


def _drained(capture: Dispatcher, timeout_s: float) -> bool:
    until = threading.Event()
    deadline = threading.Timer(timeout_s, until.set)
    deadline.start()
    try:
        return capture.drain(until)
    finally:
        deadline.cancel()


def test_a_worker_that_hands_no_credit_back_holds_only_its_credits(tmp_path: Path) -> None:
    """One worker stalls: it gets its 3 credits' worth, and every other frame goes to the one that keeps up."""
    endpoint = f"ipc://{tmp_path}/capture"
    stop = threading.Event()
    with (
        Dispatcher(linger_ms=0, worker_timeout_s=60).bind(endpoint) as capture,
        _link(endpoint, 1, credits=3) as stalled,
        _link(endpoint, 2, credits=3) as keeping_up,
    ):
        _until(capture, lambda: capture.workers == 2, "both workers to ask for frames")
        hands = Hands(keeping_up)
        try:
            for seq in range(40):
                assert capture.send(raw_frame("file", seq, PIXELS), stop)
            assert not _drained(capture, 2.0)  # the stalled worker's frames are never done
            assert capture.in_flight == 3
        finally:
            hands.stop()
        held = []
        while (message := stalled.receive(0)) is not None:
            held.append(work_key(message)[2])
        assert len(held) == 3
        assert sorted(held + hands.seqs("file")) == list(range(40))  # each frame went to one worker, once


def test_a_faster_worker_gets_more_frames(tmp_path: Path) -> None:
    """Two workers, one taking 4 times as long a frame: the shares follow their speeds, not a round robin."""
    endpoint = f"ipc://{tmp_path}/capture"
    stop = threading.Event()
    with (
        Dispatcher(linger_ms=0).bind(endpoint) as capture,
        _link(endpoint, 1, credits=2) as slow_link,
        _link(endpoint, 2, credits=2) as fast_link,
    ):
        _until(capture, lambda: capture.workers == 2, "both workers to ask for frames")
        slow, fast = Hands(slow_link, seconds_each=0.04), Hands(fast_link, seconds_each=0.01)
        try:
            for seq in range(200):
                assert capture.send(raw_frame("file", seq, PIXELS), stop)
            assert _drained(capture, 30.0)
        finally:
            slow.stop()
            fast.stop()
        assert sorted(slow.seqs("file") + fast.seqs("file")) == list(range(200))
        share = len(slow.seqs("file")) / 200
        assert 0.1 < share < 0.33, share  # 0.2 by their speeds; 0.5 dealt round robin


def test_what_a_vanished_worker_held_of_a_file_goes_to_another(tmp_path: Path) -> None:
    """A worker vanishes holding two frames of a file, two of a camera and an end of stream: the file's
    frames and the end go to the next worker once it has been unheard for worker_timeout_s; the camera's
    are left to be counted lost."""
    endpoint = f"ipc://{tmp_path}/capture"
    stop = threading.Event()
    with Dispatcher(linger_ms=0, worker_timeout_s=1.0).bind(endpoint) as capture:
        with _link(endpoint, 1, credits=5):  # it takes them, and vanishes
            assert capture.wait_for_workers(stop)
            for seq in range(2):
                assert capture.send(raw_frame("file", seq, PIXELS), stop)
                assert capture.send(raw_frame("cam", seq, PIXELS, Flag.LIVE), stop, block=False)
            assert capture.send(EndOfStream("file", 2), stop)
            assert capture.in_flight == 5
        with _link(endpoint, 2, credits=5) as heir:
            hands = Hands(heir)
            try:
                assert _drained(capture, 15.0)
            finally:
                hands.stop()
        assert hands.seqs("file") == [0, 1] and hands.seqs("cam") == []
        assert EndOfStream("file", 2) in hands.got
        assert (capture.resent, capture.given_up) == (3, 1)


def test_a_worker_busy_with_one_long_frame_is_not_given_up(tmp_path: Path) -> None:
    """Its link speaks every second while its model runs: a frame that takes 3 worker timeouts is not sent twice."""
    endpoint = f"ipc://{tmp_path}/capture"
    stop = threading.Event()
    with Dispatcher(linger_ms=0, worker_timeout_s=3 * HEARTBEAT_S).bind(endpoint) as capture:
        with _link(endpoint, 1, credits=2) as link:
            hands = Hands(link, seconds_each=9 * HEARTBEAT_S)
            try:
                assert capture.wait_for_workers(stop)
                assert capture.send(raw_frame("file", 0, PIXELS), stop)
                assert _drained(capture, 30.0)
            finally:
                hands.stop()
        assert hands.seqs("file") == [0]
        assert (capture.resent, capture.given_up) == (0, 0)


def test_a_worker_rejoins_a_capture_that_restarted(tmp_path: Path) -> None:
    """The new capture does not know the worker: it tells it so when it speaks, and the worker asks afresh."""
    endpoint = f"ipc://{tmp_path}/capture"
    stop = threading.Event()
    with _link(endpoint, 1, credits=2) as link:
        hands = Hands(link)
        try:
            for epoch in (1, 2):
                with Dispatcher(linger_ms=0).bind(endpoint) as capture:
                    assert capture.wait_for_workers(stop)
                    for seq in range(5):
                        frame = raw_frame("file", seq, PIXELS)
                        frame.header.epoch = epoch
                        assert capture.send(frame, stop)
                    assert _drained(capture, 15.0)
        finally:
            hands.stop()
    assert [(work_key(m)[1], work_key(m)[2]) for m in hands.got] == [(e, s) for e in (1, 2) for s in range(5)]
