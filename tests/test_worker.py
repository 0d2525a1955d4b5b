"""Batching in the detection worker: frames of any streams share inferences, results are unchanged."""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from anonstream.config import MaskConfig
from anonstream.demo import AstronautClip, astronaut_bgr
from anonstream.stream.masking import Masking
from anonstream.stream.transport import FrameReceiver, FrameSender
from anonstream.stream.wire import Dropped, EndOfStream, Flag, Message
from anonstream.workers.detectors import Frame
from anonstream.workers.worker import Backlog, FrameAnonymizer, Taken
from tests.conftest import MARK, face_detector, marked_model, raw_frame, run_cli


def _frames() -> list[Frame]:
    """Frames of two streams of different sizes, a still among them, so views of several sizes mix."""
    clip = AstronautClip(width=640, height=360, frames=6)
    photo = astronaut_bgr()
    small = [Frame(clip.frame(i, photo), seq=i) for i in range(clip.frames)]
    return [*small[:3], Frame(photo, still=True), *small[3:], Frame(np.zeros((90, 160, 3), np.uint8), seq=1)]


@pytest.mark.parametrize("batch_size", [2, 4, 16])
def test_a_batch_of_frames_finds_what_each_frame_finds_alone(batch_size: int) -> None:
    frames = _frames()
    views = {"tile_scale": 2.0, "tile_size": 256, "tiles": 1}
    alone = face_detector(video=views, batch_size=1)
    together = face_detector(video=views, batch_size=batch_size)
    expected = [alone.detect(f.image, f.still, f.seq) for f in frames]
    found = together.detect_many(frames)
    assert all(len(d) >= 1 for d in expected[:-1]) and len(expected[-1]) == 0  # the last one is blank
    for want, got in zip(expected, found, strict=True):
        np.testing.assert_allclose(got.boxes, want.boxes, atol=0.05)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)


def test_one_failing_frame_in_a_batch_costs_only_itself(tmp_path: Path) -> None:
    """The model fails on the marked frame only: it goes out fully masked, its batch mates normally."""
    model = marked_model(tmp_path / "poisoned.onnx", fill=float("nan"))
    anonymizer = FrameAnonymizer([face_detector(model=model)], Masking(MaskConfig()))
    photo = astronaut_bgr()
    marked = photo.copy()
    marked[:MARK, :MARK] = 255
    batch = [raw_frame("a", 0, photo.copy()), raw_frame("b", 0, marked), raw_frame("a", 1, photo)]
    out = anonymizer.process_batch(batch)
    assert [(m.header.stream, m.header.seq) for m in out if m is not None] == [("a", 0), ("b", 0), ("a", 1)]
    flags = [m.header.flags for m in out if m is not None]
    assert flags == [Flag.ANONYMIZED, Flag.ANONYMIZED | Flag.FULL_MASK, Flag.ANONYMIZED]
    assert all(m is not None and len(m.header.boxes) == 1 for m in (out[0], out[2]))
    assert anonymizer.counters["full_masked"] == 1


def _seqs(taken: Taken) -> list[tuple[str, int]]:
    return [(m.header.stream, m.header.seq) for m in taken.frames]


class Arrived:
    """A worker's inbox over a real socket, as it is after a busy spell: what was sent has all arrived.

    ``expect(n)`` waits until n more messages have come over the socket; the Backlog then finds them
    waiting at once, as a worker does that was busy with a batch while they arrived.
    """

    def __init__(self, receiver: FrameReceiver) -> None:
        self._receiver = receiver
        self._arrived: deque[Message] = deque()

    def expect(self, count: int, timeout_s: float = 30) -> None:
        target, deadline = len(self._arrived) + count, time.monotonic() + timeout_s
        while len(self._arrived) < target:
            assert time.monotonic() < deadline, f"{target - len(self._arrived)} message(s) did not arrive"
            if (message := self._receiver.receive(100)) is not None:
                self._arrived.append(message)

    def receive(self, timeout_ms: int = 0) -> Message | None:
        return self._arrived.popleft() if self._arrived else None


def test_a_batch_fills_up_to_its_size_and_closes_at_end_of_stream(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/frames"
    pixels = np.zeros((4, 6, 3), np.uint8)
    with FrameReceiver(hwm=64).bind(endpoint) as receiver, FrameSender(hwm=64).connect(endpoint) as sender:
        backlog = Backlog(receiver, size=4, wait_s=10.0, live_depth=1)
        for seq in range(5):
            assert sender.send(raw_frame("s", seq, pixels))
        assert sender.send(EndOfStream("s", 5))
        first = backlog.take()  # the wait is cut short by a full batch
        assert _seqs(first) == [("s", 0), ("s", 1), ("s", 2), ("s", 3)] and first.end is None
        second = backlog.take()  # ... and by an end of stream
        assert _seqs(second) == [("s", 4)] and second.end == EndOfStream("s", 5)
        quiet = backlog.take()  # back to look at the stop flag, saying when it found nothing
        assert (quiet.frames, quiet.end, quiet.dropped) == ([], None, []) and quiet.idle_at_ns > 0


@pytest.mark.parametrize("depth", [1, 3])
def test_a_worker_behind_drops_the_oldest_live_frames_and_never_a_lossless_one(tmp_path: Path, depth: int) -> None:
    """While the worker was busy, 10 frames of a camera and 10 of a file arrived: it takes the camera's newest."""
    endpoint = f"ipc://{tmp_path}/frames"
    pixels = np.zeros((4, 6, 3), np.uint8)
    with FrameReceiver(hwm=64).bind(endpoint) as receiver, FrameSender(hwm=64).connect(endpoint) as sender:
        inbox = Arrived(receiver)
        backlog = Backlog(inbox, size=2, wait_s=0.0, live_depth=depth)
        for seq in range(10):
            assert sender.send(raw_frame("cam", seq, pixels, Flag.LIVE))
        for seq in range(10):
            assert sender.send(raw_frame("file", seq, pixels))
            assert sender.send(raw_frame("cam2", seq, pixels, Flag.LIVE))  # behind the file's frames: waits
        assert sender.send(EndOfStream("cam", 10))
        inbox.expect(31)  # the burst reaches the worker's socket while it is "busy"
        taken: list[tuple[str, int]] = []
        dropped: list[Dropped] = []
        while (batch := backlog.take()).frames or batch.end:
            taken += _seqs(batch)
            dropped += batch.dropped
            assert len(batch.frames) <= 2
        assert [seq for stream, seq in taken if stream == "file"] == list(range(10))  # lossless: all, in order
        for camera in ("cam", "cam2"):
            kept = [seq for stream, seq in taken if stream == camera]
            gone = [d.seq for d in dropped if d.stream == camera]
            assert kept == sorted(kept) and gone == sorted(gone)  # in order
            assert set(range(10 - depth, 10)) <= set(kept)  # the newest are never dropped: fewer than depth behind them
            assert sorted(kept + gone) == list(range(10))  # every other frame is announced dropped
        assert any(d.stream == "cam" for d in dropped)  # 10 frames at once, at most depth of them kept waiting
        assert all(d.by == "worker" for d in dropped)
        assert len(backlog) == 0


def test_the_first_frame_after_an_outage_passes_its_mark_on_when_dropped(tmp_path: Path) -> None:
    """A camera's first frame back from an outage starts a new segment and counts the outage: dropping it
    unseen must not lose that, or the recording would freeze one frame over the gap."""
    endpoint = f"ipc://{tmp_path}/frames"
    pixels = np.zeros((4, 6, 3), np.uint8)
    with FrameReceiver(hwm=64).bind(endpoint) as receiver, FrameSender(hwm=64).connect(endpoint) as sender:
        inbox = Arrived(receiver)
        backlog = Backlog(inbox, size=1, wait_s=0.0, live_depth=1)
        assert sender.send(raw_frame("cam", 0, pixels, Flag.LIVE | Flag.RESUMED))
        assert sender.send(raw_frame("cam", 1, pixels, Flag.LIVE))
        inbox.expect(2)
        taken = backlog.take()
        assert [d.seq for d in taken.dropped] == [0]
        assert _seqs(taken) == [("cam", 1)] and taken.frames[0].header.flags & Flag.RESUMED


def test_live_streams_take_turns_when_a_worker_is_behind(tmp_path: Path) -> None:
    """Three cameras, a frame of each arriving per turn, room for one: each camera gets every third turn.

    A replaced frame keeps its stream's place in line; sent to the back instead, the first camera's
    frame would always be the oldest waiting, and the others would starve.
    """
    endpoint = f"ipc://{tmp_path}/frames"
    pixels = np.zeros((4, 6, 3), np.uint8)
    with FrameReceiver(hwm=64).bind(endpoint) as receiver, FrameSender(hwm=64).connect(endpoint) as sender:
        inbox = Arrived(receiver)
        backlog = Backlog(inbox, size=1, wait_s=0.0, live_depth=1)
        served: list[str] = []
        for turn in range(9):
            for camera in ("a", "b", "c"):
                assert sender.send(raw_frame(camera, turn, pixels, Flag.LIVE))
            inbox.expect(3)  # they reach the worker's socket while it is busy with the previous frame
            served += [m.header.stream for m in backlog.take().frames]
        assert sorted(served.count(camera) for camera in "abc") == [3, 3, 3], served


def test_batching_changes_no_mask_in_a_real_run(clip_path: Path, tmp_path: Path) -> None:
    """The same video with and without batching: the same faces found in every frame, in fewer inferences."""
    runs = {}
    for batch in (1, 8):
        out = tmp_path / f"batch{batch}"
        out.mkdir()
        args = ["--source", str(clip_path), "--record", str(out), "--workers", "1", "--set", "record.format=null"]
        args += ["--detect", "faces"]
        args += ["--metrics-jsonl", str(out / "frames.jsonl"), "--summary-json", str(out / "summary.json")]
        result = run_cli("run", *args, "--set", f"runtime.batch_size={batch}", "--set", "transport.frame_hwm=16")
        assert result.returncode == 0, result.stderr
        lines = (out / "frames.jsonl").read_text().splitlines()
        records = {r["seq"]: np.asarray(r["detected"]["face"]) for r in map(json.loads, lines)}
        runs[batch] = records, json.loads((out / "summary.json").read_text())["worker_counts"]
    (alone, alone_counts), (batched, batched_counts) = runs[1], runs[8]
    assert sorted(alone) == sorted(batched) == list(range(48))
    for seq, boxes in alone.items():
        assert len(boxes) >= 1 and boxes.shape == batched[seq].shape, f"frame {seq}"
        np.testing.assert_allclose(batched[seq], boxes, atol=0.3)  # the JSONL rounds to 0.1 px
    assert alone_counts["batches"] == alone_counts["frames"] == 48
    assert batched_counts["frames"] == 48 and batched_counts["batches"] < 48  # a file source keeps the queue full
