"""The detection worker: receive a raw frame, mask every face, send it on.

Workers are stateless, so any frame of any stream can go to any of them. The
one rule: nothing leaves a worker unless it is anonymized. When detection
fails, the whole frame is masked instead and flagged FULL_MASK; when even
that fails, the frame is dropped and counted (the sequencer counts it lost).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field

import cv2

from anonstream.config import Settings
from anonstream.process import Channel, Finished, log_sampled
from anonstream.stream.transport import FrameReceiver, FrameSender
from anonstream.stream.wire import EndOfStream, Flag, FrameMessage, Stage
from anonstream.workers.detector import FaceDetector
from anonstream.workers.masking import Masker, make_masker, mask_whole_frame

log = logging.getLogger(__name__)


@dataclass
class Anonymizer:
    """Detection plus masking for one frame, failing closed."""

    detector: FaceDetector
    masker: Masker
    counters: dict[str, int] = field(default_factory=lambda: {"frames": 0, "full_masked": 0, "unmaskable": 0})

    def process(self, message: FrameMessage) -> FrameMessage | None:
        header = message.header
        try:
            header.stamp(Stage.INFER_START)
            detections = self.detector.detect(message.pixels, bool(header.flags & Flag.STILL), header.seq)
            header.stamp(Stage.INFER_END)
            # The received buffer belongs to this worker: mask it in place unless it is read-only.
            pixels = message.pixels if message.pixels.flags.writeable else message.pixels.copy()
            self.masker.apply(pixels, detections)
            flags, boxes = Flag.ANONYMIZED, detections.to_wire()
        except Exception as exc:
            failures = self.counters["full_masked"] = self.counters["full_masked"] + 1
            if log_sampled(failures):
                log.error(
                    "%s frame %d: detection failed (%s: %s); sending it fully masked (%d so far)",
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
            flags, boxes = Flag.ANONYMIZED | Flag.FULL_MASK, []
        self.counters["frames"] += 1
        out = dataclasses.replace(header, flags=flags, boxes=boxes)
        out.stamp(Stage.MASKED)
        return FrameMessage(out, pixels)


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
        threads = self.threads or cfg.detector.threads or max(1, (os.cpu_count() or 1) // cfg.worker.count)
        cv2.setNumThreads(threads)  # resizing and masking share the worker's share of the cores
        anonymizer = Anonymizer(FaceDetector(cfg.detector, threads), make_masker(cfg.mask))
        hwm, linger = cfg.transport.frame_hwm, cfg.transport.linger_ms
        with FrameReceiver(hwm, linger) as receiver, FrameSender(hwm, linger) as sender:
            for endpoint in self.inputs:
                receiver.connect(endpoint)
            sender.connect(self.output)
            channel.ready(f"{anonymizer.detector.description}, {threads} thread(s) each")
            while not stop.is_set():
                message = receiver.receive()
                if message is None:
                    continue
                if isinstance(message, EndOfStream):
                    sender.send(message, stop)
                    continue
                message.header.stamp(Stage.RECEIVED)
                result = anonymizer.process(message)
                if result is not None:
                    sender.send(result, stop)
            channel.send(Finished(self.title, {**anonymizer.counters, "rejected": receiver.rejected}))
