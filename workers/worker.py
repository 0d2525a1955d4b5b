"""The detection worker: receive a raw frame, mask every face and plate, send it on.

Workers are stateless, so any frame of any stream can go to any of them: a
worker asks each capture for frames and hands each credit back once it has
passed the frame on (dispatch.py), so a faster worker gets more. The
one rule: nothing leaves a worker unless it is anonymized. When detection
fails, the whole frame is masked instead and flagged FULL_MASK; when even
that fails, the frame is dropped and counted (the sequencer counts it lost).
A worker that falls behind a live stream drops its older frames unseen
(``Backlog``), so latency stays bounded; each drop is announced downstream.
A worker with nothing to do says so (``Idle``): that is how the record stage
tells a slow frame of a file from one that went down with a dead worker.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Protocol

import cv2
import numpy as np

from anonstream.config import Settings
from anonstream.process import Channel, Finished, log_sampled
from anonstream.stream.detections import Detections
from anonstream.stream.dispatch import WorkerLink
from anonstream.stream.keys import network_for
from anonstream.stream.masking import Masking, mask_whole_frame
from anonstream.stream.metrics import BATCH_BUCKETS, STATS_INTERVAL_S, Buckets, LatencyHistogram, WorkerStats
from anonstream.stream.transport import MAX_BACKLOG, POLL_MS
from anonstream.stream.wire import Box, Dropped, EndOfStream, Flag, FrameHeader, FrameMessage, Idle, Message, Stage
from anonstream.workers.detectors import Detector, Frame, Prepared, make_detectors

log = logging.getLogger(__name__)


@dataclass
class FrameAnonymizer:
    """Every detector, then masking, for a batch of frames, failing closed frame by frame."""

    detectors: list[Detector]
    masking: Masking
    counters: dict[str, int] = field(
        default_factory=lambda: {"frames": 0, "batches": 0, "full_masked": 0, "unmaskable": 0}
    )
    inference: LatencyHistogram = field(default_factory=LatencyHistogram)  # ms per batch, every detector
    batch_sizes: Counter[int] = field(default_factory=Counter)

    @property
    def device(self) -> str:
        """Where the detectors run, as metrics label it: CPU, CUDA, Tensorrt."""
        return ", ".join(sorted({d.provider.removesuffix("ExecutionProvider") for d in self.detectors}))

    @property
    def batch_size(self) -> int:
        """Frames taken at once: as many as the detector batching most takes in one inference."""
        return max(detector.batch_size for detector in self.detectors)

    def process(self, message: FrameMessage) -> FrameMessage | None:
        return self.process_batch([message])[0]

    def prepare(self, messages: list[FrameMessage]) -> list[Prepared] | None:
        """Each detector's inputs for a batch, made ahead; None if that fails (``process_batch`` then fails closed)."""
        try:
            return self._prepare(messages)
        except Exception:
            return None  # not swallowed: process_batch prepares again, and its failure is handled and counted there

    def _prepare(self, messages: list[FrameMessage]) -> list[Prepared]:
        frames = [_frame(m) for m in messages]
        return [detector.prepare(frames) for detector in self.detectors]

    def detect(self, messages: list[FrameMessage], prepared: list[Prepared] | None = None) -> list[Detections]:
        """What every detector found in each frame."""
        per_detector = [
            detector.infer(ready)
            for detector, ready in zip(self.detectors, prepared or self._prepare(messages), strict=True)
        ]
        return [Detections.concat(found) for found in zip(*per_detector, strict=True)]

    def process_batch(
        self, messages: list[FrameMessage], prepared: list[Prepared] | None = None
    ) -> list[FrameMessage | None]:
        """Each frame anonymized (None: dropped, counted), in the order given.

        Detection runs once for the whole batch (on ``prepared`` inputs when
        given); if it fails, each frame is tried on its own, so that one bad
        frame costs only itself a full mask.
        """
        for message in messages:
            message.header.stamp(Stage.INFER_START)
        started = time.perf_counter()
        try:
            found = self.detect(messages, prepared)
        except Exception as exc:
            if len(messages) == 1:
                return [self._mask_whole(messages[0], exc)]
            log.warning("detection failed on a batch of %d frames (%s); trying them one by one", len(messages), exc)
            return [self.process(message) for message in messages]
        self.inference.add((time.perf_counter() - started) * 1000)
        self.batch_sizes[len(messages)] += 1
        self.counters["batches"] += 1
        results = []
        for message, detections in zip(messages, found, strict=True):
            message.header.stamp(Stage.INFER_END)
            results.append(self._mask(message, detections))
        return results

    def _mask(self, message: FrameMessage, detections: Detections) -> FrameMessage | None:
        try:
            # The received buffer belongs to this worker: mask it in place unless it is read-only.
            pixels = message.pixels if message.pixels.flags.writeable else message.pixels.copy()
            self.masking.apply(pixels, detections)
        except Exception as exc:
            return self._mask_whole(message, exc)
        return self._finish(message.header, Flag.ANONYMIZED, detections.to_wire(), pixels)

    def _mask_whole(self, message: FrameMessage, exc: Exception) -> FrameMessage | None:
        header = message.header
        failures = self.counters["full_masked"] = self.counters["full_masked"] + 1
        if log_sampled(failures):
            log.error(
                "%s frame %d: could not anonymize it (%s: %s); sending it fully masked (%d so far)",
                header.stream,
                header.seq,
                type(exc).__name__,
                exc,
                failures,
            )
        try:
            pixels = mask_whole_frame(message.pixels)
        except Exception:
            self.counters["unmaskable"] += 1
            log.exception("%s frame %d: cannot even mask it whole; dropped", header.stream, header.seq)
            return None
        return self._finish(header, Flag.ANONYMIZED | Flag.FULL_MASK, [], pixels)

    def _finish(self, header: FrameHeader, flags: Flag, boxes: list[Box], pixels: np.ndarray) -> FrameMessage:
        self.counters["frames"] += 1
        carried = header.flags & (Flag.STILL | Flag.RESUMED | Flag.LIVE)  # what the capture said goes on
        out = dataclasses.replace(header, flags=carried | flags, boxes=boxes)
        out.stamp(Stage.MASKED)
        return FrameMessage(out, pixels)


def _frame(message: FrameMessage) -> Frame:
    return Frame(message.pixels, bool(message.header.flags & Flag.STILL), message.header.seq)


class Inbox(Protocol):
    """Where a worker's frames come from: its link to the captures (or, in tests, a plain receiver)."""

    def receive(self, timeout_ms: int = POLL_MS) -> Message | None: ...


@dataclass(frozen=True, slots=True)
class Taken:
    """What a worker takes at once: frames to anonymize, then maybe an end of stream; drops to announce first."""

    frames: list[FrameMessage]
    end: EndOfStream | None = None
    dropped: list[Dropped] = field(default_factory=list)
    idle_at_ns: int = 0  # nothing taken: when the queues were found empty (time.monotonic_ns)


class Backlog:
    """What a worker has received and not yet taken, and the rule that keeps live streams fresh.

    Frames of files and folders wait their turn, and no more of them are
    taken in than one batch (the rest wait in the inbox). A live
    stream (Flag.LIVE) keeps only its ``live_depth`` newest frames here: when
    a newer one arrives, the oldest is dropped unseen, so a worker that falls
    behind catches up with the camera instead of queueing ever older frames.
    The newer frame keeps the stream's place in line, so that streams take
    turns: a stream whose frames were replaced is not sent to the back.
    (Live frames queued behind a batch's worth of lossless ones wait in the
    inbox until those are taken: a run that mixes both is rare.)
    """

    def __init__(self, receiver: Inbox, size: int, wait_s: float, live_depth: int) -> None:
        self._receiver = receiver
        self._size, self._wait_s, self._live_depth = size, wait_s, live_depth
        self._items: deque[FrameMessage | EndOfStream] = deque()
        self._lossless = 0
        self._dropped: list[Dropped] = []

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> Taken:
        """Up to ``size`` frames, oldest first: those waiting, and what arrives within ``wait_s`` of the first.

        An end-of-stream closes the batch, so that it leaves after the frames
        received before it. Returns empty-handed after one poll interval of
        quiet, so the caller can look at its stop flag, stamped with when the
        queues were found empty.
        """
        self._receive(0)  # see what is queued before choosing, so stale live frames are dropped, not taken
        batch: list[FrameMessage] = []
        deadline = 0.0
        while len(batch) < self._size:
            if self._items:
                item = self._pop()
                if isinstance(item, EndOfStream):
                    return self._taken(batch, item)
                batch.append(item)
                deadline = deadline or time.monotonic() + self._wait_s
                continue
            timeout_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000)) if batch else POLL_MS
            if not self._receive(timeout_ms):
                break
        return self._taken(batch, None)

    def _taken(self, batch: list[FrameMessage], end: EndOfStream | None) -> Taken:
        dropped, self._dropped = self._dropped, []
        idle = 0 if batch or end or self._items else time.monotonic_ns()
        return Taken(batch, end, dropped, idle)

    def _receive(self, timeout_ms: int) -> bool:
        """Receive what is queued, waiting up to ``timeout_ms`` for the first; False if nothing came."""
        received = False
        while self._lossless < self._size and len(self._items) < MAX_BACKLOG:
            message = self._receiver.receive(0 if received else timeout_ms)
            if message is None:
                break
            received = True
            assert isinstance(message, FrameMessage | EndOfStream)  # the worker's inbox holds nothing else
            log.debug("received %s", message.header.seq if isinstance(message, FrameMessage) else message)
            if isinstance(message, FrameMessage):
                message.header.stamp(Stage.RECEIVED)
                if message.header.flags & Flag.LIVE:
                    self._admit_live(message)
                    continue
                self._lossless += 1
            self._items.append(message)
        return received

    def _admit_live(self, message: FrameMessage) -> None:
        """Queue a live frame; if its stream has ``live_depth`` waiting, drop the oldest and move the rest up."""
        stream = message.header.stream
        slots = [
            i
            for i, item in enumerate(self._items)
            if isinstance(item, FrameMessage) and item.header.stream == stream and item.header.flags & Flag.LIVE
        ]
        if len(slots) < self._live_depth:
            self._items.append(message)
            return
        oldest = self._items[slots[0]]
        assert isinstance(oldest, FrameMessage)
        self._dropped.append(Dropped(stream, oldest.header.seq, epoch=oldest.header.epoch))
        for here, there in pairwise(slots):
            self._items[here] = self._items[there]
        self._items[slots[-1]] = message
        if oldest.header.flags & Flag.RESUMED:  # the first frame after an outage: the next one now starts the segment
            successor = self._items[slots[0]]
            assert isinstance(successor, FrameMessage)
            successor.header.flags |= Flag.RESUMED

    def _pop(self) -> FrameMessage | EndOfStream:
        item = self._items.popleft()
        if isinstance(item, FrameMessage) and not item.header.flags & Flag.LIVE:
            self._lossless -= 1
        return item


@dataclass(frozen=True)
class WorkerStage:
    number: int
    inputs: tuple[str, ...]
    output: str
    settings: Settings
    threads: int = 0
    role: str = "worker"

    @property
    def title(self) -> str:
        return f"worker {self.number}"

    def serve(self, stop: threading.Event, channel: Channel) -> None:
        cfg = self.settings
        threads = self.threads or cfg.runtime.threads or max(1, (os.cpu_count() or 1) // cfg.worker.count)
        cv2.setNumThreads(threads)  # resizing and masking share the worker's share of the cores
        anonymizer = FrameAnonymizer(make_detectors(cfg, threads), Masking(cfg.mask, cfg.mask_scales))
        hwm, linger = cfg.transport.frame_hwm, cfg.transport.linger_ms
        size, wait_s = anonymizer.batch_size, cfg.runtime.batch_wait_ms / 1000
        # Enough credit for the batch in hand, the one prepared ahead and a frame more to choose the newest from.
        credits = cfg.transport.credits or 2 * size + 2
        with (
            network_for(cfg.security) as network,
            WorkerLink(self.number, credits, linger, network) as receiver,
            network.sender(hwm, linger) as sender,
        ):
            for endpoint in self.inputs:
                receiver.connect(endpoint)
            sender.connect(self.output)
            receiver.start()
            described = "; ".join(detector.description for detector in anonymizer.detectors)
            channel.ready(f"{described}; {threads} thread(s) each; asks {credits} frames of each capture")
            backlog = Backlog(receiver, size, wait_s, cfg.transport.live_depth)

            def take() -> tuple[Taken, list[Prepared] | None]:
                taken = backlog.take()
                return taken, anonymizer.prepare(taken.frames) if taken.frames else None

            device = anonymizer.device

            def stats() -> WorkerStats:
                counters = {**anonymizer.counters, "dropped": dropped, "rejected": receiver.rejected}
                inference, batches = anonymizer.inference.buckets(), anonymizer.batch_sizes
                return WorkerStats(
                    self.title, self.number, device, counters, inference, Buckets.of_values(batches, BATCH_BUCKETS)
                )

            # One thread takes and prepares the next batch while this one infers, masks and sends: the
            # receiver is used by that thread only, the model and the sender by this one.
            dropped = 0
            stats_due = 0.0
            with ThreadPoolExecutor(1, thread_name_prefix="prepare") as ahead:
                upcoming = ahead.submit(take)
                while not stop.is_set():
                    if (now := time.monotonic()) >= stats_due:
                        stats_due = now + STATS_INTERVAL_S
                        channel.publish(stats())
                    taken, prepared = upcoming.result()
                    upcoming = ahead.submit(take)
                    for notice in taken.dropped:
                        sender.send(notice, stop)
                        receiver.done(notice)
                    dropped += len(taken.dropped)
                    for result in anonymizer.process_batch(taken.frames, prepared) if taken.frames else []:
                        if result is not None:
                            sender.send(result, stop)
                    for message in taken.frames:  # passed on, fully masked, or dropped and counted: a credit back
                        receiver.done(message)
                    if taken.end is not None:
                        log.debug("forwarding the end of stream %s", taken.end.stream)
                        sender.send(taken.end, stop)
                        receiver.done(taken.end)
                    if taken.idle_at_ns:
                        # After everything taken before: the record stage may now count missing frames lost.
                        sender.send(Idle(self.number, taken.idle_at_ns), stop)
            final = stats()
            channel.publish(final)
            channel.send(Finished(self.title, final.counters))
