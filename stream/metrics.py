"""Per-frame latency metrics: every stage's timestamp, per-stream counts, percentiles.

Each frame carries one wall-clock timestamp per Stage (see wire.py). The record
process feeds every released frame here; at exit the summary gives frames
in / out / dropped / lost and p50 / p95 / p99 per stage and end to end.
While a run goes on, the record stage and each worker send a stats event
(``RecordStats``, ``WorkerStats``) every STATS_INTERVAL_S: the live endpoint,
the preview page and the final summary are all made from those same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from anonstream.closing import Closing
from anonstream.errors import RecorderError
from anonstream.stream.detections import Detections
from anonstream.stream.sequencer import Lost
from anonstream.stream.wire import Dropped, EndOfStream, Flag, FrameHeader, Stage

# (label in tables, key in /metrics, from stage, to stage), in pipeline order
INTERVALS: tuple[tuple[str, str, Stage, Stage], ...] = (
    ("capture → send", "send", Stage.CAPTURED, Stage.SENT),
    ("queue → worker", "queue", Stage.SENT, Stage.RECEIVED),
    # filling a batch, resizing, the previous inference
    ("batch + prepare", "prepare", Stage.RECEIVED, Stage.INFER_START),
    ("detect", "detect", Stage.INFER_START, Stage.INFER_END),
    ("mask", "mask", Stage.INFER_END, Stage.MASKED),
    ("→ sequencer", "sequence", Stage.MASKED, Stage.SEQUENCED),
    ("track + record", "record", Stage.SEQUENCED, Stage.RECORDED),
    ("end to end", "end_to_end", Stage.CAPTURED, Stage.RECORDED),
)
PERCENTILES = (50, 95, 99)
MAX_LOST_RUNS = 100  # runs of lost frames a summary names; the count covers them all
JSONL_FLUSH_S = 1.0  # --metrics-jsonl is written out this often at least: tail -f or a crash misses a second at most
STATS_INTERVAL_S = 1.0  # how often the record stage and each worker send their stats event
RECENT_S = 60.0  # the preview page's figures (fps, drops, p99) cover this much of the run just past
# Prometheus histogram bounds: latency from 1 ms to 10 s, in seconds; frames per inference
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@dataclass(frozen=True, slots=True)
class Buckets:
    """A histogram as Prometheus has it: how many values fell at or below each bound, their count and sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    total: float

    def __add__(self, other: Buckets) -> Buckets:
        """Two lives of one worker, counted as one."""
        if other.bounds != self.bounds:
            raise ValueError("cannot add histograms with different bounds")
        cumulative = tuple(a + b for a, b in zip(self.cumulative, other.cumulative, strict=True))
        return Buckets(self.bounds, cumulative, self.count + other.count, self.total + other.total)

    @classmethod
    def of_values(cls, values: Counter[int], bounds: tuple[float, ...]) -> Buckets:
        """From a count of each value seen (batch sizes)."""
        cumulative = tuple(sum(n for v, n in values.items() if v <= bound) for bound in bounds)
        return cls(bounds, cumulative, sum(values.values()), float(sum(v * n for v, n in values.items())))


class LatencyHistogram:
    """Latencies counted in log-spaced bins 1 % wide.

    Percentiles come out within 1 % of the exact ones, in the same few
    kilobytes for a run of a minute or of a month (keeping every frame's
    stamps grew by half a kilobyte a frame: 1.3 GB a day for one camera).
    """

    LOWEST_MS = 0.01  # this and anything below (clock skew between hosts) share the first bin
    STEP = 1.01
    BINS = 1800  # up to 0.01 ms * 1.01**1800, about 10 minutes; slower frames share the last bin

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS, np.int64)
        self.count = 0
        self.total_ms = 0.0

    def add(self, ms: float) -> None:
        index = 0 if ms <= self.LOWEST_MS else 1 + int(math.log(ms / self.LOWEST_MS) / math.log(self.STEP))
        self.counts[min(index, self.BINS - 1)] += 1
        self.count += 1
        self.total_ms += ms

    def reset(self) -> None:
        self.counts[:] = 0
        self.count = 0
        self.total_ms = 0.0

    def buckets(self, bounds_s: tuple[float, ...] = LATENCY_BUCKETS_S) -> Buckets:
        """In seconds, for Prometheus: each bound counts the bins that end at or below it (within 1 %)."""
        cumulative = np.cumsum(self.counts)
        below = [int(math.log(b * 1000 / self.LOWEST_MS) / math.log(self.STEP) + 1e-9) for b in bounds_s]
        counts = tuple(int(cumulative[min(i, self.BINS - 1)]) if i >= 0 else 0 for i in below)
        return Buckets(bounds_s, counts, self.count, self.total_ms / 1000)

    def percentiles(self) -> tuple[float, float, float]:
        """p50, p95, p99 in ms: the geometric centre of the bin each falls in."""
        cumulative = np.cumsum(self.counts)
        values = []
        for p in PERCENTILES:
            index = int(np.searchsorted(cumulative, max(1, math.ceil(p / 100 * self.count))))
            values.append(self.LOWEST_MS * self.STEP ** (index - 0.5) if index else self.LOWEST_MS)
        return values[0], values[1], values[2]


@dataclass(frozen=True, slots=True)
class StreamSummary:
    stream: str
    frames_in: int
    frames_out: int
    dropped: int  # by any stage; a live stream's frames are dropped rather than queued when the workers are behind
    dropped_by: dict[str, int]  # stage -> frames: "capture" (its queue was full), "worker" (a newer frame was waiting)
    lost: int
    lost_runs: list[tuple[int, int]]  # (first seq, frames) of each run of lost frames, the first MAX_LOST_RUNS
    skipped: int
    refused: int
    full_masked: int
    # frames where the tracker masked something the detectors did not find in that frame (held from earlier ones)
    tracker_added: int
    masks: dict[str, int]  # class -> boxes masked over the run (detected, and held by the tracker)
    outages: int  # times a live source came back after an outage
    down_s: float  # time without frames across those outages
    fps: float
    # label -> (p50, p95, p99) in milliseconds
    latency_ms: dict[str, tuple[float, float, float]]

    def with_capture_counts(self, sent: int, dropped: int) -> StreamSummary:
        """Correct the counts with what the capture reported, should its end of stream have been lost."""
        missing = sent + dropped - self.frames_in
        if missing <= 0:
            return self
        by = self.dropped_by | {"capture": dropped}
        return dataclasses.replace(
            self, frames_in=sent + dropped, dropped=sum(by.values()), dropped_by=by, lost=self.lost + missing
        )


@dataclass(frozen=True, slots=True)
class RunSummary:
    streams: list[StreamSummary]

    def write_json(self, path: Path, workers: list[str], worker_counts: dict[str, int]) -> None:
        """``--summary-json``: the printed tables and what the workers ran on and did, for scripts and benchmarks."""
        try:
            head = {"workers": workers, "worker_counts": worker_counts}
            text = json.dumps(head | dataclasses.asdict(self), indent=2)
            path.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise RecorderError(f"cannot write the summary to {path}: {exc.strerror}") from None


class RecentWindow:
    """The last RECENT_S seconds of one stream: frames recorded (with their latency) and frames dropped."""

    def __init__(self, started: float) -> None:
        self._started = started
        self._frames: deque[tuple[float, float]] = deque()  # (monotonic s, end-to-end ms)
        self._drops: deque[tuple[float, int]] = deque()

    def frame(self, now: float, latency_ms: float) -> None:
        self._frames.append((now, latency_ms))

    def drop(self, now: float, count: int = 1) -> None:
        if count:
            self._drops.append((now, count))

    def figures(self, now: float) -> tuple[float, int, float | None]:
        """Frames per second, frames dropped, p99 latency in ms (None: no frame) over the window."""
        for queue in (self._frames, self._drops):
            while queue and now - queue[0][0] > RECENT_S:
                queue.popleft()
        span = min(RECENT_S, now - self._started)
        fps = len(self._frames) / span if span > 0 else 0.0
        p99 = float(np.percentile([ms for _, ms in self._frames], 99)) if self._frames else None
        return fps, sum(n for _, n in self._drops), p99


@dataclass(frozen=True, slots=True)
class StreamLive:
    """What the summary does not say about a stream while it runs: for health and the preview page."""

    live: bool  # frames flagged LIVE (a camera, or --realtime): it should deliver without pause
    ended: bool
    last_frame_at: float  # time.time() of the last frame recorded, or of its first message
    fps: float  # fps, dropped and p99 cover the last RECENT_S seconds
    dropped: int
    p99_ms: float | None
    latency: dict[str, Buckets]  # interval key -> histogram


@dataclass(frozen=True, slots=True)
class RecordStats:
    """The record stage's stats event: the summary so far, and each stream's live figures."""

    title: str
    summary: RunSummary
    streams: dict[str, StreamLive]


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """A worker's stats event: its counters since it started, and how long and how large its inferences are."""

    title: str
    number: int
    device: str  # the onnxruntime providers its detectors run on: "CPU", "CUDA", "TensorRT"
    counters: dict[str, int]  # frames, batches, full_masked, unmaskable, dropped, rejected
    inference: Buckets  # seconds per inference (a batch, every detector)
    batch_frames: Buckets


@dataclass
class StreamMetrics:
    stream: str
    latency: dict[str, LatencyHistogram] = field(default_factory=lambda: {s[0]: LatencyHistogram() for s in INTERVALS})
    frames_out: int = 0
    first_captured_ns: int = 0
    last_recorded_ns: int = 0
    lost: int = 0
    lost_runs: list[tuple[int, int]] = field(default_factory=list)
    refused: int = 0
    full_masked: int = 0
    tracker_added: int = 0
    masks: Counter[str] = field(default_factory=Counter)
    outages: int = 0
    down_s: float = 0.0
    dropped: int = 0  # by the capture in its current session, as far as the frames tell
    dropped_by: Counter[str] = field(default_factory=Counter)  # by later stages, from drop notices
    end: EndOfStream | None = None
    total: int | None = None  # frames the capture sent in its last session, from its end of stream or the ledger
    highest_seq: int = -1  # of the current session
    session: int | None = None  # the capture's session (epoch) that highest_seq and dropped count in
    earlier_sent: int = 0  # frames of the sessions before it (a restarted capture counts from 0 again)
    earlier_dropped: int = 0
    last_pts: int | None = None
    recent: LatencyHistogram = field(default_factory=LatencyHistogram)  # end to end since the last status line
    live: bool = False
    finished: bool = False
    last_frame_at: float = field(default_factory=time.time)
    window: RecentWindow = field(default_factory=lambda: RecentWindow(time.monotonic()))

    def ended(self, end: EndOfStream | None, frames: int | None) -> None:
        self.finished = True
        self.end = end
        self.total = end.frames if end is not None else frames

    @property
    def capture_dropped(self) -> int:
        return self.earlier_dropped + (self.end.dropped if self.end else self.dropped)

    def _in_session(self, epoch: int, seq: int) -> None:
        """Count a frame's seq in its capture session; a new session (the capture restarted) banks the last one's
        counts, as far as they are known: its frames up to the highest seq seen, and its drops."""
        if self.session is not None and epoch != self.session:
            self.earlier_sent += self.highest_seq + 1
            self.earlier_dropped += self.dropped
            self.highest_seq, self.dropped = -1, 0
        self.session = epoch
        self.highest_seq = max(self.highest_seq, seq)

    def lose(self, gap: Lost) -> None:
        self.lost += gap.count
        self.highest_seq = max(self.highest_seq, gap.first_seq + gap.count - 1)  # released in its session's turn
        if len(self.lost_runs) < MAX_LOST_RUNS:
            self.lost_runs.append((gap.first_seq, gap.count))

    def worker_dropped(self, drop: Dropped, now: float) -> None:
        self._in_session(drop.epoch, drop.seq)
        self.dropped_by["worker"] += 1
        self.window.drop(now)

    def frame(self, header: FrameHeader, held: Detections, now: float) -> None:
        """A frame recorded at ``now`` (monotonic s)."""
        self._in_session(header.epoch, header.seq)
        stamps = header.stamps
        for label, _, start, stop in INTERVALS:
            if stamps[start] and stamps[stop]:
                self.latency[label].add((stamps[stop] - stamps[start]) / 1e6)
        if stamps[Stage.CAPTURED] and stamps[Stage.RECORDED]:
            self.recent.add((stamps[Stage.RECORDED] - stamps[Stage.CAPTURED]) / 1e6)
            self.window.frame(now, (stamps[Stage.RECORDED] - stamps[Stage.CAPTURED]) / 1e6)
        self.window.drop(now, max(0, header.dropped - self.dropped))
        self.live = bool(header.flags & Flag.LIVE)
        self.last_frame_at = time.time()
        self.frames_out += 1
        if stamps[Stage.CAPTURED]:
            self.first_captured_ns = min(self.first_captured_ns or stamps[Stage.CAPTURED], stamps[Stage.CAPTURED])
        self.last_recorded_ns = max(self.last_recorded_ns, stamps[Stage.RECORDED])
        if header.flags & Flag.RESUMED and self.last_pts is not None:
            self.outages += 1
            gap = (header.pts - self.last_pts) * header.time_base[0] / header.time_base[1]
            self.down_s += max(0.0, gap - header.rate[1] / max(1, header.rate[0]))  # less one frame interval
        self.last_pts = header.pts
        self.tracker_added += len(held) > 0
        self.masks.update(box[5] for box in header.boxes)
        self.masks.update(held.counts())
        self.dropped = max(self.dropped, header.dropped)
        if header.flags & Flag.FULL_MASK:
            self.full_masked += 1

    def live_figures(self, now: float) -> StreamLive:
        fps, dropped, p99 = self.window.figures(now)
        latency = {key: self.latency[label].buckets() for label, key, _, _ in INTERVALS}
        return StreamLive(self.live, self.finished, self.last_frame_at, fps, dropped, p99, latency)

    def summary(self) -> StreamSummary:
        sent = self.earlier_sent + (self.total if self.total is not None else self.highest_seq + 1)
        by = {"capture": self.capture_dropped, "worker": self.dropped_by["worker"]}
        latency = {label: h.percentiles() for label, h in self.latency.items() if h.count}
        wall = (self.last_recorded_ns - self.first_captured_ns) / 1e9
        fps = self.frames_out / wall if self.frames_out and self.first_captured_ns and wall > 0 else 0.0
        return StreamSummary(
            stream=self.stream,
            frames_in=sent + by["capture"],
            frames_out=self.frames_out,
            dropped=sum(by.values()),
            dropped_by=by,
            lost=self.lost,
            lost_runs=list(self.lost_runs),
            skipped=self.end.skipped if self.end else 0,
            refused=self.refused,
            full_masked=self.full_masked,
            tracker_added=self.tracker_added,
            masks=dict(sorted(self.masks.items())),
            outages=self.outages,
            down_s=self.down_s,
            fps=fps,
            latency_ms=latency,
        )


@dataclass
class StatusLines:
    """``--status-interval``: a line per stream every ``interval_s``, for logs where no progress display shows.

    Frames, rate, drops and losses, and the end-to-end p99 latency, all over the interval just past.
    """

    interval_s: float
    _last: float | None = None
    _counts: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # stream -> frames, dropped, lost

    def due(self, now: float) -> bool:
        if self._last is None:
            self._last = now
        return self.interval_s > 0 and now - self._last >= self.interval_s

    def lines(self, metrics: dict[str, StreamMetrics], now: float) -> list[str]:
        assert self._last is not None
        elapsed, self._last = now - self._last, now
        out = []
        for name, m in metrics.items():
            dropped = m.capture_dropped + sum(m.dropped_by.values())
            frames0, dropped0, lost0 = self._counts.get(name, (0, 0, 0))
            self._counts[name] = (m.frames_out, dropped, m.lost)
            p99 = f"{m.recent.percentiles()[2]:.0f} ms" if m.recent.count else "-"
            m.recent.reset()
            out.append(
                f"{name}: {m.frames_out} frames (+{m.frames_out - frames0}), {(m.frames_out - frames0) / elapsed:.1f} "
                f"fps, dropped +{dropped - dropped0}, lost +{m.lost - lost0}, p99 {p99} over {elapsed:.0f} s"
            )
        return out


def _by_class(found: Detections) -> dict[str, list[list[float]]]:
    """{"face": [[x1, y1, x2, y2], ...], ...}, to a tenth of a pixel."""
    return {
        label: [[round(float(v), 1) for v in box] for box in found.boxes[found.labels == label]]
        for label in found.classes()
    }


class FrameLog(Closing):
    """``--metrics-jsonl``: one JSON record per recorded frame, per frame a worker dropped, per run of frames
    the capture dropped (they never had a seq: ``count`` of them before ``before_seq``), and per run of lost
    frames; so recorded + dropped + lost accounts for every frame read.

    To stay on for days: ``every`` keeps one frame record in that many per stream (drops and losses are rare
    and always written), and past ``max_mb`` the file becomes FILE.1 and a new one begins, so the two never
    hold much more than twice that.
    """

    def __init__(self, path: Path | None, every: int = 1, max_mb: float = 0.0) -> None:
        self._path, self._every, self._max_bytes = path, every, int(max_mb * 1e6)
        self._file: IO[str] | None = self._open() if path else None
        self._written = 0
        self._flushed = 0.0
        self._capture_dropped: dict[str, tuple[int, int]] = {}  # stream -> its session (epoch), drops written

    def _open(self) -> IO[str]:
        assert self._path is not None
        try:
            return self._path.open("w", encoding="utf-8")
        except OSError as exc:
            raise RecorderError(f"cannot write metrics to {self._path}: {exc.strerror}") from None

    def _write(self, record: dict[str, object]) -> None:
        assert self._file is not None and self._path is not None
        line = json.dumps(record) + "\n"
        if self._max_bytes and self._written and self._written + len(line) > self._max_bytes:
            self._file.close()
            self._path.replace(self._path.with_name(self._path.name + ".1"))
            self._file, self._written = self._open(), 0
        self._file.write(line)
        self._written += len(line)

    def tick(self, now: float) -> None:
        """Called on every turn of the record loop (``now``: monotonic seconds): writes out what is buffered."""
        if self._file is not None and now - self._flushed >= JSONL_FLUSH_S:
            self._file.flush()
            self._flushed = now

    def frame(self, header: FrameHeader, tracked: Detections) -> None:
        if self._file is None:
            return
        self._capture_drops(header.stream, header.epoch, header.dropped, header.seq)
        if header.seq % self._every:
            return
        record = {
            "stream": header.stream,
            "epoch": header.epoch,
            "seq": header.seq,
            "index": header.index,
            "pts": header.pts,
            "time_base": list(header.time_base),
            "full_mask": bool(header.flags & Flag.FULL_MASK),
            "still": bool(header.flags & Flag.STILL),
            # masks by origin (found by a worker's detectors, or held by the tracker), then class
            "detected": _by_class(Detections.from_wire(header.boxes)),
            "tracked": _by_class(tracked),
            "stamps_ns": {stage.name.lower(): header.stamps[stage] for stage in Stage},
            "latency_ms": (header.stamps[Stage.RECORDED] - header.stamps[Stage.CAPTURED]) / 1e6,
        }
        self._write(record)

    def lost(self, gap: Lost) -> None:
        if self._file is not None:
            self._write({"stream": gap.stream, "seq": gap.first_seq, "lost": gap.count})

    def dropped(self, drop: Dropped) -> None:
        if self._file is not None:
            self._write({"stream": drop.stream, "epoch": drop.epoch, "seq": drop.seq, "dropped_by": drop.by})

    def ended(self, end: EndOfStream) -> None:
        """The capture's drops after the last frame recorded (the end of stream carries its final count)."""
        if self._file is not None:
            self._capture_drops(end.stream, end.epoch, end.dropped, end.frames)

    def _capture_drops(self, stream: str, epoch: int, total: int, before_seq: int) -> None:
        """A frame or an end of stream carries its session's drops so far: a record for those not yet written."""
        session, written = self._capture_dropped.get(stream, (epoch, 0))
        if session != epoch:  # a new session (the capture restarted) counts from 0 again
            written = 0
        if total > written:
            self._write(
                {
                    "stream": stream,
                    "epoch": epoch,
                    "before_seq": before_seq,
                    "dropped_by": "capture",
                    "count": total - written,
                }
            )
        self._capture_dropped[stream] = (epoch, max(total, written))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
