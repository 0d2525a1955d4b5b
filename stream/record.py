"""The record stage: sequence what the workers send, write it, measure it.

It binds the socket every worker pushes to, restores each stream's order,
lets each stream's tracker add the masks it still holds (tracker.py), hands
frames to one recorder per stream and collects per-frame metrics. With
``expect`` it ends by itself once every expected stream has ended. Under
``anonstream run`` it knows the workers' count and shares a ledger with the
captures (ledger.py), so that frames of files are never lost for being slow.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2

from anonstream.config import MetricsConfig, RecordConfig, Settings
from anonstream.errors import NotAnonymizedError, RecorderError, WireError
from anonstream.process import Channel, Finished, log_sampled
from anonstream.stream.detections import Detections
from anonstream.stream.keys import network_for
from anonstream.stream.ledger import Ledger
from anonstream.stream.masking import Masking
from anonstream.stream.metrics import STATS_INTERVAL_S, FrameLog, RecordStats, RunSummary, StatusLines, StreamMetrics
from anonstream.stream.recorders import Output, PreviewRecorder, Recorder, ensure_output_dir, make_recorder
from anonstream.stream.sequencer import Ended, Lost, Released, Sequencer
from anonstream.stream.sources import lossless, stream_ids
from anonstream.stream.tracker import Tracker
from anonstream.stream.transport import MAX_STREAMS
from anonstream.stream.wire import Dropped, Flag, FrameMessage, Idle, Message, Stage

log = logging.getLogger(__name__)

RECEIVE_MS = 50


@dataclass(frozen=True)
class RecordStage:
    endpoint: str
    settings: Settings
    expect: tuple[str, ...] = ()
    ledger: Ledger | None = None  # shared with the captures of ``expect``, in that order
    workers: int = 0  # how many workers, numbered 1..workers, feed it (0: unknown)
    outputs: dict[str, Output] = field(default_factory=dict)  # where each stream goes (else: from record.dir)
    role: str = "record"

    @property
    def title(self) -> str:
        return "record"

    @property
    def _record_config(self) -> RecordConfig:
        """On its own (no outputs planned before start), a restarted record goes on into new files."""
        record = self.settings.record
        if self.outputs or record.overwrite or record.append:
            return record
        return record.model_copy(update={"append": True})

    def serve(self, stop: threading.Event, channel: Channel) -> None:
        cfg = self.settings
        if cfg.record.dir is not None:
            ensure_output_dir(cfg.record.dir)
        frames, nbytes = cfg.in_flight
        loss_timeout_s, idle_timeout_s = cfg.sequencer.loss_timeout_s, cfg.record.drain_timeout_s
        resend_s = cfg.transport.worker_timeout_s  # how long a capture takes to send a dead worker's frames again
        sequencer = Sequencer(loss_timeout_s, frames, nbytes, self.workers, idle_timeout_s, resend_s)
        recorders: dict[str, Recorder] = {}
        hold = Hold(cfg)
        live = {
            sid
            for spec, sid in zip(cfg.sources, stream_ids(cfg.sources), strict=True)
            if not lossless(spec.uri, cfg.capture)
        }
        metrics: dict[str, StreamMetrics] = {name: StreamMetrics(name, live=name in live) for name in self.expect}
        ended: set[str] = set()
        counters = {"rejected": 0}
        status = StatusLines(cfg.metrics.status_interval_s)
        previews = _Previews(cfg.metrics, channel)
        stats_due = 0.0

        def stats(stream: str) -> StreamMetrics:
            if stream not in metrics:
                metrics[stream] = StreamMetrics(stream)
            return metrics[stream]

        def admitted(message: Message) -> bool:
            """Frames of streams nobody expects are rejected: a stray sender cannot grow state without bound."""
            if isinstance(message, Idle):
                return True
            stream = message.header.stream if isinstance(message, FrameMessage) else message.stream
            if stream in metrics or (not self.expect and len(metrics) < MAX_STREAMS):
                stats(stream)  # counted towards MAX_STREAMS from its first message, even while its frames wait
                return True
            counters["rejected"] += 1
            if log_sampled(counters["rejected"]):
                log.warning("rejected a message for unexpected stream %r", stream)
            return False

        def handle(events: list[Released], frame_log: FrameLog) -> None:
            for event in events:
                if isinstance(event, FrameMessage):
                    recorded = self._record(event, hold, recorders, stats(event.header.stream), frame_log, counters)
                    if recorded is not None:
                        previews.show(recorded)
                elif isinstance(event, Dropped):
                    stats(event.stream).worker_dropped(event, time.monotonic())
                    frame_log.dropped(event)
                elif isinstance(event, Lost):
                    stats(event.stream).lose(event)
                    frame_log.lost(event)
                    log.warning("%s: %d frame(s) lost from seq %d", event.stream, event.count, event.first_seq)
                elif isinstance(event, Ended):
                    ended.add(event.stream)
                    if event.end is not None:
                        frame_log.ended(event.end)
                    stats(event.stream).ended(event.end, event.frames)
                    hold.trackers.pop(event.stream, None)
                    if event.stream in recorders:
                        recorders.pop(event.stream).close()

        hwm, linger = cfg.transport.frame_hwm, cfg.transport.linger_ms
        metrics_cfg = cfg.metrics
        with (
            network_for(cfg.security) as network,
            network.receiver(hwm, linger).bind(self.endpoint) as receiver,
            FrameLog(metrics_cfg.jsonl, metrics_cfg.jsonl_every, metrics_cfg.jsonl_max_mb) as frame_log,
        ):
            try:
                channel.ready(f"listening on {self.endpoint}")
                while not stop.is_set() and not (self.expect and ended.issuperset(self.expect)):
                    message = receiver.receive(RECEIVE_MS)
                    now = time.monotonic()
                    events = sequencer.push(message, now) if message is not None and admitted(message) else []
                    handle(events + self._ledger_ended(sequencer, now) + sequencer.poll(now), frame_log)
                    self._share_progress(sequencer)
                    frame_log.tick(now)
                    if status.due(now):
                        for line in status.lines(metrics, now):
                            log.info("%s", line)
                    if now >= stats_due:
                        stats_due = now + STATS_INTERVAL_S
                        channel.publish(self._stats(metrics, now))
                handle(sequencer.flush(), frame_log)
                self._share_progress(sequencer)
            finally:
                _close_all(recorders.values())
        summary = RunSummary([m.summary() for m in metrics.values()])
        channel.publish(self._stats(metrics, time.monotonic()))
        late = sum(sequencer.late.values())
        rejected = receiver.rejected + counters["rejected"]
        hostile = sum(sequencer.hostile.values())
        counts = {"rejected": rejected, "late": late, "hostile": hostile, "denied": network.denied}
        channel.send(Finished(self.title, counts, summary))

    def _stats(self, metrics: dict[str, StreamMetrics], now: float) -> RecordStats:
        """The stats event: the same summary the run ends with, as it stands now."""
        summary = RunSummary([m.summary() for m in metrics.values()])
        return RecordStats(self.title, summary, {name: m.live_figures(now) for name, m in metrics.items()})

    def _record(
        self,
        message: FrameMessage,
        hold: Hold,
        recorders: dict[str, Recorder],
        stats: StreamMetrics,
        frame_log: FrameLog,
        counters: dict[str, int],
    ) -> FrameMessage | None:
        """The frame as recorded (with the tracker's masks), or None if it was refused."""
        message.header.stamp(Stage.SEQUENCED)
        message, tracked = hold(message)
        header = message.header
        recorder = recorders.get(header.stream)
        if recorder is None:
            recorder = make_recorder(header.stream, header, self._record_config, self.outputs.get(header.stream))
            recorders[header.stream] = recorder
        try:
            recorder.write(message)
        except NotAnonymizedError as exc:
            stats.refused += 1
            log.error("%s", exc)
            return None
        except WireError as exc:
            counters["rejected"] += 1
            log.error("%s", exc)
            return None
        header.stamp(Stage.RECORDED)
        stats.frame(header, tracked, time.monotonic())
        frame_log.frame(header, tracked)
        return message

    def _ledger_ended(self, sequencer: Sequencer, now: float) -> list[Released]:
        """What the ledger says: a worker died; what each capture still holds; streams whose capture has ended,
        and how many frames it sent."""
        events: list[Released] = []
        if self.ledger is not None:
            if (died := self.ledger.last_death) is not None:
                sequencer.worker_died(died)
            for slot, stream in enumerate(self.expect):
                sequencer.capture_holds(stream, self.ledger.held_from(slot))
                if (sent := self.ledger.sent_total(slot)) is not None:
                    events += sequencer.capture_ended(stream, sent, now)
        return events

    def _share_progress(self, sequencer: Sequencer) -> None:
        if self.ledger is not None:
            for slot, stream in enumerate(self.expect):
                self.ledger.done[slot] = sequencer.done(stream)


def _close_all(recorders: Iterable[Recorder]) -> None:
    """Finish every recorder, even after one fails (a full disk, say); the first failure is raised."""
    failure: RecorderError | None = None
    for recorder in recorders:
        try:
            recorder.close()
        except RecorderError as exc:
            log.error("%s", exc)
            failure = failure or exc
    if failure is not None and sys.exc_info()[0] is None:  # else the error already on its way says more
        raise failure


class _Previews:
    """The preview page's recorder for each stream, when the page is served (metrics.port)."""

    def __init__(self, config: MetricsConfig, channel: Channel) -> None:
        self._config, self._channel = config, channel
        self._enabled = config.port is not None and config.preview_fps > 0
        self._recorders: dict[str, PreviewRecorder] = {}
        self._failures = 0

    def show(self, message: FrameMessage) -> None:
        if not self._enabled:
            return
        stream = message.header.stream
        if (recorder := self._recorders.get(stream)) is None:
            cfg = self._config
            recorder = PreviewRecorder(stream, cfg.preview_fps, cfg.preview_max_side, self._channel.publish)
            self._recorders[stream] = recorder
        try:
            recorder.write(message)
        except (RecorderError, cv2.error) as exc:  # a preview's failure costs the preview, not the recording
            self._failures += 1
            if log_sampled(self._failures):
                log.warning("%s: no preview image (%s)", stream, exc)


@dataclass
class Hold:
    """The tracker step: masks, with the workers' masking code, what a stream's tracks still hold."""

    settings: Settings
    trackers: dict[str, Tracker] = field(default_factory=dict)
    masking: Masking = field(init=False)

    def __post_init__(self) -> None:
        self.masking = Masking(self.settings.mask, self.settings.mask_scales)

    def __call__(self, message: FrameMessage) -> tuple[FrameMessage, Detections]:
        """The frame with held masks added, and those boxes (the header's boxes stay the detected ones)."""
        header = message.header
        # Unflagged frames go on to be refused; stills carry no state from one image to the next.
        if not header.flags & Flag.ANONYMIZED or header.flags & Flag.STILL:
            return message, Detections.empty()
        tracker = self.trackers.setdefault(header.stream, Tracker(self.settings.tracker))
        detected = Detections.from_wire(header.boxes)
        blind = bool(header.flags & Flag.FULL_MASK)
        held = tracker.update(header.seq, header.shape, detected, blind=blind, image=message.pixels)
        if not len(held):
            return message, held
        pixels = message.pixels if message.pixels.flags.writeable else message.pixels.copy()
        self.masking.apply(pixels, held)
        return FrameMessage(header, pixels), held
