"""The capture stage: one process per source, stamping and publishing frames.

Frames go to the workers that ask for them (dispatch.py). Files and folders
wait for a worker with room (nothing dropped) unless ``realtime`` is set, and
what a worker that vanished held is sent to another; live sources and
``realtime`` never wait for the workers: their frames are flagged LIVE, so
that a worker behind drops the oldest, and a frame no worker has room for
waits here until one has or a newer frame replaces it (dropped, counted).
Under ``anonstream run``, a file's frames in flight also stay within the
ledger's window (ledger.py), so that a slow frame holds the capture back
instead of frames piling up behind it.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass

from anonstream.config import Settings, SourceSpec
from anonstream.errors import SourceError
from anonstream.process import Channel, Finished
from anonstream.redaction import redact
from anonstream.stream.dispatch import Dispatcher
from anonstream.stream.keys import network_for
from anonstream.stream.ledger import Ledger, Window
from anonstream.stream.sources import SourceFrame, SourceInfo, open_source
from anonstream.stream.wire import MAX_EPOCH, EndOfStream, Flag, FrameHeader, FrameMessage, Stage, pixel_layout

log = logging.getLogger(__name__)


def frame_header(
    info: SourceInfo, frame: SourceFrame, seq: int, flags: Flag, dropped: int = 0, epoch: int = 0
) -> FrameHeader:
    """The header a source's frame travels with (its rate read now: a network stream's is known once connected)."""
    return FrameHeader(
        stream=info.stream_id,
        seq=seq,
        index=frame.index,
        pts=frame.pts,
        time_base=(info.time_base.numerator, info.time_base.denominator),
        rate=(info.rate.numerator, info.rate.denominator),
        shape=tuple(frame.pixels.shape),
        dtype=str(frame.pixels.dtype),
        pixfmt=pixel_layout(frame.pixels),
        name=frame.name,
        dropped=dropped,
        flags=flags,
        epoch=epoch,
    )


def source_flags(info: SourceInfo, settings: Settings) -> Flag:
    """STILL for photos (each stands alone), LIVE for what must never wait (cameras, --realtime)."""
    still = settings.capture.stills or info.kind == "image"
    live = info.live or settings.capture.realtime
    return (Flag.STILL if still else Flag.NONE) | (Flag.LIVE if live else Flag.NONE)


@dataclass(frozen=True)
class CaptureStage:
    spec: SourceSpec
    stream_id: str
    endpoint: str
    settings: Settings
    ledger: Ledger | None = None
    slot: int = 0  # this stream's place in the ledger
    role: str = "capture"

    @property
    def title(self) -> str:
        return f"capture {self.stream_id}"

    def serve(self, stop: threading.Event, channel: Channel) -> None:
        try:
            self._serve(stop, channel)
        finally:
            if self.ledger is not None:
                self.ledger.holding(self.slot, -1)  # nothing it held will be sent again now

    def _serve(self, stop: threading.Event, channel: Channel) -> None:
        cfg = self.settings
        linger_ms = round(cfg.capture.linger_s * 1000)
        on_held = functools.partial(self.ledger.holding, self.slot) if self.ledger is not None else None
        with (
            network_for(cfg.security) as network,
            open_source(self.spec, self.stream_id, cfg.capture, stop) as source,
            Dispatcher(linger_ms, cfg.transport.worker_timeout_s, network, on_held).bind(self.endpoint) as sender,
        ):
            info = source.info
            flags = source_flags(info, cfg)
            live = bool(flags & Flag.LIVE)
            channel.ready(_describe(info, live), info.frames)
            sender.wait_for_workers(stop)  # reading a live source before any worker asks would only drop frames
            seq = dropped = 0
            reason = "eof"
            started: float | None = None
            first_pts = 0
            failure: SourceError | None = None
            frames = source.frames()
            window = None
            if self.ledger is not None and not live:
                window = Window(self.ledger, self.slot, *cfg.in_flight)
            # This start's session: seq counts from 0 again, so the record side tells a restart from a replay.
            epoch = secrets.randbelow(MAX_EPOCH) + 1
            log.info("session %016x", epoch)

            def emit(frame: SourceFrame, captured: int, resumed: bool, until: threading.Event, block: bool) -> bool:
                """Send a frame as the next seq; False if no worker had room (not ``block``), or stopped."""
                nonlocal seq
                flagged = flags | Flag.RESUMED if resumed else flags
                header = frame_header(source.info, frame, seq, flagged, dropped, epoch)
                header.stamp(Stage.CAPTURED, captured)
                if window is not None and not window.wait(frame.pixels.nbytes, until, sender.listen):
                    return False
                header.stamp(Stage.SENT)
                if not sender.send(FrameMessage(header, frame.pixels), until, block=block):
                    return False
                if window is not None:
                    window.sent(seq, frame.pixels.nbytes)
                seq += 1
                return True

            # A live frame no worker had room for waits for one, until a newer frame replaces it (dropped, counted):
            # the newest frame is never the one dropped.
            waiting: tuple[SourceFrame, int, bool] | None = None
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except SourceError as exc:
                    failure, reason = exc, f"error: {exc}"
                    break
                captured = time.time_ns()
                if stop.is_set():
                    reason = "stopped"
                    break
                if cfg.capture.realtime and not info.live:
                    # Pace a file like a camera: frame k is due at its own presentation time.
                    if started is None:
                        started, first_pts = time.monotonic(), frame.pts
                    due = started + float((frame.pts - first_pts) * info.time_base)
                    if (wait := due - time.monotonic()) > 0 and stop.wait(wait):
                        reason = "stopped"
                        break
                    captured = time.time_ns()
                if not live:
                    if not emit(frame, captured, frame.resumed, stop, block=True):
                        reason = "stopped"
                        break
                    continue
                resumed = frame.resumed
                if waiting is not None and not emit(*waiting, stop, block=False):
                    dropped += 1
                    resumed = resumed or waiting[2]  # it was to start the new segment: now this one does
                    waiting = (frame, captured, resumed)
                    continue
                waiting = None if emit(frame, captured, resumed, stop, block=False) else (frame, captured, resumed)
            if stop.is_set():
                reason = "stopped"
            # A file's last frames may keep the workers busy for long: it waits until they are all done, while any
            # worker lives (under `run`, where dead workers are restarted, always). A live stream waits linger_s.
            # Stopped on request, it waits for no worker that is gone: nobody restarts one now (systemctl stop
            # signals every process of the service at once).
            until = _deadline(linger_ms) if live else stop
            alone_s = math.inf if self.ledger is not None else cfg.capture.linger_s
            if stop.is_set():
                alone_s = 0.0
            if waiting is not None and not emit(*waiting, until, block=True):
                dropped += 1
            end = EndOfStream(self.stream_id, seq, dropped, source.skipped, reason, epoch)
            if not sender.send(end, until, alone_s=alone_s):
                log.warning("%s: end of stream could not be delivered", self.stream_id)
            elif not sender.drain(until, alone_s):
                log.warning("%s: %d message(s) still with workers at the end", self.stream_id, sender.in_flight)
            if self.ledger is not None:  # the stream ends even if its end of stream goes down with a worker
                self.ledger.sent[self.slot] = seq
            if window is not None:
                window.drain(seq, stop, sender.listen)
            log.info(
                "end of stream (%s): %d frames sent, %d dropped, %d undecodable, %d sent again to another worker",
                reason,
                seq,
                dropped,
                source.skipped,
                sender.resent,
            )
            log.info("taken by worker: %s", ", ".join(f"{n}: {count}" for n, count in sorted(sender.taken.items())))
            if failure is not None:
                raise failure
            channel.send(Finished(self.title, {"sent": seq, "dropped": dropped, "skipped": source.skipped}))


def _deadline(ms: int) -> threading.Event:
    """An event that sets itself after ``ms`` milliseconds: a bound on a final blocking send."""
    event = threading.Event()
    timer = threading.Timer(ms / 1000, event.set)
    timer.daemon = True
    timer.start()
    return event


def _describe(info: SourceInfo, live: bool) -> str:
    total = f"{info.frames} frames" if info.frames else "length unknown"
    mode = "live, drops when behind" if live else "lossless"
    rate = "" if info.kind == "network" else f" at {float(info.rate):.2f} fps"  # a stream's is known once connected
    return f"{info.kind} {redact(info.uri)}{rate}, {total}, {mode}"
