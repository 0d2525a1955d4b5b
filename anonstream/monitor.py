"""The live monitor: ``/metrics`` for Prometheus, ``/healthz`` for watchdogs, ``/`` the preview page.

It is fed what the stages publish while they run (a stats event a second, and
preview images) and the orchestrator's word on which stage started or died,
and serves it over one HTTP port from the standard library's threading server.
It shows nothing a stage did not publish: the preview's images were made by
the record stage from frames that passed the recorders' anonymized guard.
Counters come from the record stage's running summary, and at the end from
the run's final summary itself, so that a scrape and ``--summary-json`` agree.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from anonstream.closing import Closing
from anonstream.config import Settings
from anonstream.errors import ConfigError
from anonstream.stream.metrics import (
    INTERVALS,
    RECENT_S,
    STATS_INTERVAL_S,
    Buckets,
    RecordStats,
    RunSummary,
    StreamLive,
    WorkerStats,
)
from anonstream.stream.recorders import PreviewImage
from anonstream.stream.wire import STREAM_ID

if TYPE_CHECKING:
    from anonstream.process import LiveEvent

log = logging.getLogger(__name__)

STATS_STALE_S = 30.0  # a stage silent this long is at fault: hung, or busy far longer than any frame should take
PAGE = resources.files("anonstream").joinpath("preview.html")


@dataclass
class _Stage:
    started_at: float  # time.monotonic()
    last_stats: float | None = None


@dataclass
class _Worker:
    """A worker's figures over all its lives: what it had sent when it last died, plus its current life's."""

    stats: WorkerStats | None = None
    before: WorkerStats | None = None
    restarts: int = 0

    def total(self) -> WorkerStats | None:
        if self.stats is None or self.before is None:
            return self.stats or self.before
        now, then = self.stats, self.before
        counters = dict(Counter(then.counters) + Counter(now.counters))
        return WorkerStats(
            now.title,
            now.number,
            now.device,
            {key: counters.get(key, 0) for key in now.counters},
            now.inference + then.inference,
            now.batch_frames + then.batch_frames,
        )


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    stages_ok: bool  # every stage reports: what a watchdog restarting the whole service should look at
    body: dict[str, Any]


@dataclass
class Monitor:
    """Everything the endpoints show, kept under one lock: events arrive on one thread, requests on others."""

    settings: Settings
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _record: RecordStats | None = None
    _final: RunSummary | None = None
    _stages: dict[str, _Stage] = field(default_factory=dict)
    _workers: dict[int, _Worker] = field(default_factory=dict)
    _previews: dict[str, PreviewImage] = field(default_factory=dict)
    # stream -> the last RECENT_S of (time.time(), fps over the last second, p99 ms over the last minute)
    _series: dict[str, deque[tuple[float, float, float | None]]] = field(default_factory=dict)
    _last_out: dict[str, tuple[float, int]] = field(default_factory=dict)

    # --- fed by the stages and the orchestrator ---

    def accept(self, event: LiveEvent) -> None:
        with self._lock:
            if isinstance(event, PreviewImage):
                self._previews[event.stream] = event
                return
            stage = self._stages.setdefault(event.title, _Stage(time.monotonic()))
            stage.last_stats = time.monotonic()
            if isinstance(event, WorkerStats):
                self._workers.setdefault(event.number, _Worker()).stats = event
            else:
                self._record = event
                self._chart(event)

    def _chart(self, stats: RecordStats) -> None:
        now = time.time()
        for s in stats.summary.streams:
            then, out = self._last_out.get(s.stream, (now, s.frames_out))
            fps = (s.frames_out - out) / (now - then) if now > then else 0.0
            self._last_out[s.stream] = (now, s.frames_out)
            points = self._series.setdefault(s.stream, deque(maxlen=round(RECENT_S / STATS_INTERVAL_S)))
            points.append((now, fps, stats.streams[s.stream].p99_ms))

    def stage_started(self, title: str) -> None:
        """A stage that sends stats started: it counts as starting until its first stats event."""
        with self._lock:
            self._stages[title] = _Stage(time.monotonic())

    def worker_restarted(self, number: int) -> None:
        """Worker ``number`` died and is started again: its counters go on from where they were."""
        with self._lock:
            worker = self._workers.setdefault(number, _Worker())
            worker.before, worker.stats = worker.total(), None
            worker.restarts += 1

    def finished(self, summary: RunSummary | None) -> None:
        """The run is over; from now on the counters are its final summary's."""
        with self._lock:
            self._final = summary if summary is not None else self._record.summary if self._record else None
            self._stages.clear()

    # --- read by the endpoints ---

    def health(self) -> Health:
        """200 when every stream delivers and every stage reports; else 503, naming what is at fault."""
        with self._lock:
            now = time.monotonic()
            faults: list[str] = []
            stages = {}
            for title, stage in sorted(self._stages.items()):
                if stage.last_stats is None:
                    state = f"starting for {now - stage.started_at:.0f} s"
                    faults.append(f"{title}: {state}")
                elif now - stage.last_stats > STATS_STALE_S:
                    state = f"silent for {now - stage.last_stats:.0f} s"
                    faults.append(f"{title}: {state} (hung?)")
                else:
                    state = "running"
                stages[title] = state
            stages_ok = not faults and bool(self._stages)
            streams = {}
            for name, live in self._live().items():
                state, fault = self._stream_state(live)
                streams[name] = state
                if fault:
                    faults.append(f"{name}: {fault}")
            if self._final is not None:
                faults.append("the run has finished")
            elif not self._stages:
                faults.append("starting")
            status = "ok" if not faults else "fault"
            return Health(
                not faults, stages_ok, {"status": status, "faults": faults, "streams": streams, "stages": stages}
            )

    def _live(self) -> dict[str, StreamLive]:
        return self._record.streams if self._record is not None else {}

    def _stream_state(self, live: StreamLive) -> tuple[str, str | None]:
        """ "up", "ended", "waiting" (a file's next frame is being worked on) or "down", and the fault if any."""
        stall_s = self.settings.capture.stall_timeout_s
        if live.ended:
            return "ended", None
        quiet = time.time() - live.last_frame_at
        if quiet <= stall_s:
            return "up", None
        if not live.live:
            return "waiting", None  # a file loses nothing by being slow: its frames wait their turn
        return "down", f"no frame for {quiet:.0f} s (capture.stall_timeout_s = {stall_s:g})"

    def summary(self) -> RunSummary | None:
        with self._lock:
            return self._final if self._final is not None else self._record.summary if self._record else None

    def preview(self, stream: str) -> PreviewImage | None:
        with self._lock:
            return self._previews.get(stream)

    def status(self) -> dict[str, Any]:
        """What the preview page shows, as JSON."""
        summary = self.summary()
        health = self.health()
        with self._lock:
            live = self._live()
            streams = []
            for s in summary.streams if summary is not None else []:
                figures = live.get(s.stream)
                points = list(self._series.get(s.stream, ()))
                streams.append(
                    {
                        "stream": s.stream,
                        "state": health.body["streams"].get(s.stream, "ended"),
                        "frames_in": s.frames_in,
                        "frames_out": s.frames_out,
                        "fps": figures.fps if figures else 0.0,
                        "dropped": figures.dropped if figures else 0,
                        "p99_ms": figures.p99_ms if figures else None,
                        "outages": s.outages,
                        "down_s": s.down_s,
                        "preview": s.stream in self._previews,
                        "chart": {"fps": [p[1] for p in points], "p99_ms": [p[2] for p in points]},
                    }
                )
        return {
            "health": health.body,
            "preview_fps": self.settings.metrics.preview_fps,
            "window_s": RECENT_S,
            "streams": streams,
        }

    def metrics(self) -> Iterator[Metric]:
        """Every Prometheus family, from one consistent reading."""
        summary = self.summary()
        health = self.health()
        with self._lock:
            live = dict(self._live())
            workers = {n: (w.total(), w.restarts) for n, w in sorted(self._workers.items())}
        yield from _stream_families(summary, live, health)
        yield from _worker_families(workers)
        up = GaugeMetricFamily("anonstream_healthy", "1 while /healthz answers 200")
        up.add_metric([], 1.0 if health.ok else 0.0)
        yield up


def _stream_families(summary: RunSummary | None, live: dict[str, StreamLive], health: Health) -> Iterator[Metric]:
    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
        return CounterMetricFamily(f"anonstream_{name}", doc, labels=["stream", *labels])

    frames_in = counter("frames_in", "frames the source delivered (sent on, or dropped by the capture)")
    frames_out = counter("frames_out", "frames recorded, anonymized")
    dropped = counter(
        "frames_dropped", "live frames dropped unseen to keep up, by the stage that dropped them", ("stage",)
    )
    lost = counter("frames_lost", "frames sent that never reached a recorder (a worker died holding them)")
    refused = counter("frames_refused", "frames a recorder refused because they were not flagged anonymized")
    full = counter("frames_full_masked", "frames masked whole because detection failed")
    masks = counter("masks", "boxes masked, detected or held by the tracker, by class", ("class",))
    outages = counter("outages", "times a live source came back after an outage")
    down = counter("down_seconds", "time without frames across those outages")
    up = GaugeMetricFamily(
        "anonstream_stream_up",
        "1 while the stream delivers (a frame within capture.stall_timeout_s)",
        labels=["stream"],
    )
    latency = HistogramMetricFamily(
        "anonstream_latency_seconds", "frame latency, by pipeline stage and end to end", labels=["stream", "stage"]
    )
    for s in summary.streams if summary is not None else []:
        key = [s.stream]
        frames_in.add_metric(key, s.frames_in)
        frames_out.add_metric(key, s.frames_out)
        for stage, count in s.dropped_by.items():
            dropped.add_metric([*key, stage], count)
        lost.add_metric(key, s.lost)
        refused.add_metric(key, s.refused)
        full.add_metric(key, s.full_masked)
        for label, count in s.masks.items():
            masks.add_metric([*key, label], count)
        outages.add_metric(key, s.outages)
        down.add_metric(key, s.down_s)
        up.add_metric(key, 1.0 if health.body["streams"].get(s.stream) == "up" else 0.0)
        if (figures := live.get(s.stream)) is not None:
            for _, stage_key, _, _ in INTERVALS:
                _histogram(latency, [*key, stage_key], figures.latency[stage_key])
    yield from (frames_in, frames_out, dropped, lost, refused, full, masks, outages, down, up, latency)


def _worker_families(workers: dict[int, tuple[WorkerStats | None, int]]) -> Iterator[Metric]:
    labels = ["worker"]
    frames = CounterMetricFamily("anonstream_worker_frames", "frames a worker anonymized", labels=labels)
    full = CounterMetricFamily("anonstream_worker_full_masked", "frames a worker masked whole", labels=labels)
    dropped = CounterMetricFamily("anonstream_worker_dropped", "live frames a worker dropped unseen", labels=labels)
    restarts = CounterMetricFamily("anonstream_worker_restarts", "times a worker died and was restarted", labels=labels)
    inference = HistogramMetricFamily(
        "anonstream_worker_inference_seconds", "time per inference (a batch, every detector)", labels=labels
    )
    batch = HistogramMetricFamily("anonstream_worker_batch_frames", "frames per inference", labels=labels)
    info = GaugeMetricFamily(
        "anonstream_worker_info", "what a worker's detectors run on (always 1)", labels=["worker", "device"]
    )
    for number, (stats, restarted) in workers.items():
        key = [str(number)]
        restarts.add_metric(key, restarted)
        if stats is None:
            continue
        frames.add_metric(key, stats.counters.get("frames", 0))
        full.add_metric(key, stats.counters.get("full_masked", 0))
        dropped.add_metric(key, stats.counters.get("dropped", 0))
        _histogram(inference, key, stats.inference)
        _histogram(batch, key, stats.batch_frames)
        info.add_metric([*key, stats.device], 1.0)
    yield from (frames, full, dropped, restarts, inference, batch, info)


def _histogram(family: HistogramMetricFamily, labels: list[str], buckets: Buckets) -> None:
    pairs = [(f"{bound:g}", float(count)) for bound, count in zip(buckets.bounds, buckets.cumulative, strict=True)]
    family.add_metric(labels, [*pairs, ("+Inf", float(buckets.count))], buckets.total)


class _Collector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        return self._monitor.metrics()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a viewer's open connection never holds the run's exit up

    def __init__(self, address: tuple[str, int], monitor: Monitor) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.monitor = monitor
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(monitor))
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "anonstream"

    def do_GET(self) -> None:
        server = cast(_Server, self.server)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
        elif path == "/healthz":
            health = server.monitor.health()
            self._json(200 if health.ok else 503, health.body)
        elif path == "/api/status":
            self._json(200, server.monitor.status())
        elif path == "/":
            self._reply(200, "text/html; charset=utf-8", PAGE.read_bytes())
        elif path.startswith("/preview/") and path.endswith(".jpg"):
            stream = path[len("/preview/") : -len(".jpg")]
            image = server.monitor.preview(stream) if STREAM_ID.fullmatch(stream) else None
            if image is None:
                self._json(404, {"error": f"no preview image of stream {stream!r} yet"})
            else:
                self._reply(200, "image/jpeg", image.jpeg)
        else:
            self._json(404, {"error": f"no such page: {path}", "pages": ["/", "/metrics", "/healthz", "/api/status"]})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._reply(code, "application/json", (json.dumps(body) + "\n").encode())

    def _reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        csp = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'"
        self.send_header("Content-Security-Policy", csp)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.address_string(), *args)


class MonitorServer(Closing):
    """The monitor's endpoints on ``bind``:``port``, served from a background thread until closed."""

    def __init__(self, monitor: Monitor, bind: str, port: int) -> None:
        try:
            self._server = _Server((bind, port), monitor)
        except OSError as exc:
            raise ConfigError(
                f"metrics.port: cannot listen on {bind}:{port} ({exc.strerror or exc}); choose another "
                "--metrics-port, or a metrics.bind address this host has"
            ) from None
        host = f"[{bind}]" if ":" in bind else bind
        self.url = f"http://{host}:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
