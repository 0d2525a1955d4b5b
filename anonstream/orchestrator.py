"""``anonstream run``: every stage on one host, started in order, stopped in reverse.

Start order is downstream first (record, workers, captures) so that no frame
is ever sent before something can anonymize and keep it. Stop order is the
reverse: captures stop and send end-of-stream, the record process drains
what is in flight and finalizes its files, then workers and record are
stopped. A watchdog restarts dead workers, rate-limited, under the same
number; frames of files a dead worker held are sent again by their capture
(dispatch.py), live ones are counted lost by the sequencer, never forwarded.
Captures and the record process share a ledger (frames sent and done per
stream), which bounds what a file has in flight and ends a stream
whose end-of-stream was lost.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from anonstream.config import Settings
from anonstream.errors import StageError
from anonstream.monitor import Monitor
from anonstream.process import CRASHED, STOP_SIGNALS, Failed, Finished, Ready, Stage, StageEvent, StageProcess
from anonstream.stream.capture import CaptureStage
from anonstream.stream.ledger import Ledger
from anonstream.stream.metrics import RunSummary
from anonstream.stream.record import RecordStage
from anonstream.stream.recorders import plan_outputs
from anonstream.stream.sources import lossless, stream_ids
from anonstream.workers.worker import WorkerStage

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

log = logging.getLogger(__name__)

TICK_S = 0.1
STOP_TIMEOUT_S = 10.0
ABORT_TIMEOUT_S = 1.0  # after a second Ctrl-C
READY_TIMEOUT_S = {"record": 30.0, "worker": 300.0, "capture": 60.0}
STATS_ROLES = frozenset({"record", "worker"})  # the stages that send stats events (the monitor's idea of alive)

Progress = Callable[[list[int], list[int | None]], None]


class _StopRequested(Exception):
    """Ctrl-C or SIGTERM arrived while stages were still starting."""


@dataclass
class _Running:
    stage: Stage
    process: StageProcess
    conn: Connection
    monitor: Monitor | None  # where live events go (else nowhere)
    events: list[StageEvent] = field(default_factory=list)

    def poll(self) -> None:
        try:
            while self.conn.poll():
                event = self.conn.recv()
                if isinstance(event, Ready | Failed | Finished):
                    self.events.append(event)
                elif self.monitor is not None:
                    self.monitor.accept(event)
        except (EOFError, OSError):
            pass

    @property
    def failure(self) -> Failed | None:
        return next((e for e in self.events if isinstance(e, Failed)), None)

    @property
    def finished(self) -> Finished | None:
        return next((e for e in self.events if isinstance(e, Finished)), None)


@dataclass
class PipelineResult:
    summary: RunSummary | None
    reports: list[Finished]
    failures: list[Failed]
    worker_restarts: int
    interrupted: bool
    workers: list[str]  # what each kind of worker runs on, e.g. "CPU, input longest side 640, 1 thread(s) each"

    @property
    def worker_counts(self) -> dict[str, int]:
        """The workers' counters summed: frames, batches (inferences over frames), full masks..."""
        totals: dict[str, int] = {}
        for report in self.reports:
            if report.title.startswith("worker"):
                for key, value in report.counters.items():
                    totals[key] = totals.get(key, 0) + value
        return totals


def runtime_base() -> str | None:
    """Where the private runtime folder goes: $XDG_RUNTIME_DIR if usable, else the system temp dir."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return base if base and os.path.isdir(base) and os.access(base, os.W_OK) else None


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        log_queue: Queue[logging.LogRecord],
        log_level: int = logging.INFO,
        monitor: Monitor | None = None,
    ) -> None:
        self.settings = settings
        self._monitor = monitor
        self._ctx = multiprocessing.get_context("spawn")
        self._log_queue = log_queue
        self._log_level = log_level
        self._stop_requests = 0
        self._running: list[_Running] = []
        self._restarts: deque[float] = deque()
        self.worker_restarts = 0
        self._capture_restarts: deque[float] = deque()
        self.capture_restarts = 0
        self._reported: list[_Running] = []  # captures that died and were not restarted

    def request_stop(self) -> None:
        """First call: stop capturing and drain. Second: stop everything now."""
        self._stop_requests += 1

    def _start(self, stage: Stage) -> _Running:
        parent, child = self._ctx.Pipe(duplex=False)
        process = StageProcess(stage, child, self._log_queue, self._log_level)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        child.close()
        running = _Running(stage, process, parent, self._monitor)
        self._running.append(running)
        if self._monitor is not None and stage.role in STATS_ROLES:
            self._monitor.stage_started(stage.title)
        return running

    def _await_ready(self, stages: list[_Running]) -> list[Ready]:
        deadline = time.monotonic() + max(READY_TIMEOUT_S[s.stage.role] for s in stages)
        while True:
            ready: list[Ready] = []
            for running in stages:
                running.poll()
                if (failure := running.failure) is not None:
                    raise StageError(failure.message)
                if (found := next((e for e in running.events if isinstance(e, Ready)), None)) is not None:
                    ready.append(found)
                elif not running.process.is_alive():
                    raise StageError(
                        f"{running.stage.title} exited during start-up (exit status {running.process.exitcode})"
                    )
            if len(ready) == len(stages):
                return ready
            if self._stop_requests:
                raise _StopRequested
            if time.monotonic() > deadline:
                role = stages[0].stage.role
                raise StageError(f"{role} did not start within {READY_TIMEOUT_S[role]:.0f} s")
            time.sleep(TICK_S / 2)

    def run(self, on_progress: Progress | None = None) -> PipelineResult:
        """Run to completion; ``on_progress(done, totals)`` is called a few times a second."""
        cfg = self.settings
        ids = stream_ids(cfg.sources)
        rundir = Path(tempfile.mkdtemp(prefix="anonstream-", dir=runtime_base()))
        record_endpoint = f"ipc://{rundir}/record"
        capture_endpoints = tuple(f"ipc://{rundir}/capture-{i}" for i in range(len(ids)))
        ledger = Ledger.create(self._ctx, len(ids))
        interrupted = failed = False
        details: list[str] = []
        try:
            outputs = plan_outputs(cfg.sources, cfg.record)
            record = self._start(RecordStage(record_endpoint, cfg, tuple(ids), ledger, cfg.worker.count, outputs))
            self._await_ready([record])
            workers = [
                self._start(WorkerStage(n, capture_endpoints, record_endpoint, cfg))
                for n in range(1, cfg.worker.count + 1)
            ]
            details = sorted({r.detail for r in self._await_ready(workers)})
            log.info("%d worker(s) ready: %s", len(workers), "; ".join(details))
            captures = [
                self._start(CaptureStage(spec, sid, endpoint, cfg, ledger, slot))
                for slot, (spec, sid, endpoint) in enumerate(zip(cfg.sources, ids, capture_endpoints, strict=True))
            ]
            started = self._await_ready(captures)
            for ready in started:
                log.info("%s: %s", ready.title, ready.detail)
            totals = [ready.total for ready in started]
            report = None if on_progress is None else (lambda counts: on_progress(counts, totals))
            interrupted = self._supervise(record, workers, captures, ledger, report)
        except _StopRequested:
            interrupted = True
        except BaseException:
            failed = True  # a stage failed: nothing in flight can be recorded any more, so nothing lingers
            raise
        finally:
            self._stop_all(abort=failed or self._stop_requests > 1)
            shutil.rmtree(rundir, ignore_errors=True)
        reports = [r.finished for r in self._running if r.finished is not None]
        failures = [r.failure for r in self._running if r.failure is not None]
        failures += [
            Failed(r.stage.title, f"exited with status {r.process.exitcode}")
            for r in self._running
            if r.failure is None and r.process.exitcode not in (0, None)
        ]
        summary = next((f.summary for f in reports if f.summary is not None), None)
        if summary is not None:
            summary = self._reconcile(summary)
        return PipelineResult(summary, reports, failures, self.worker_restarts, interrupted, details)

    def _reconcile(self, summary: RunSummary) -> RunSummary:
        """Frames a capture sent whose end of stream never arrived still count, as lost."""
        sent = {
            r.stage.stream_id: r.finished.counters
            for r in self._running
            if isinstance(r.stage, CaptureStage) and r.finished is not None
        }
        return RunSummary(
            [
                s.with_capture_counts(sent[s.stream]["sent"], sent[s.stream]["dropped"]) if s.stream in sent else s
                for s in summary.streams
            ]
        )

    def _supervise(
        self,
        record: _Running,
        workers: list[_Running],
        captures: list[_Running],
        ledger: Ledger,
        on_progress: Callable[[list[int]], None] | None,
    ) -> bool:
        """Watch the stages until the record process is done; True if stopped by request.

        Once the captures are gone, what is in flight drains. The record process ends by itself when
        every stream has; only a live stream's frames, or a capture that died without its count, are
        waited for at most record.drain_timeout_s: a file's slow frame is waited for as long as it takes.
        """
        cfg = self.settings
        live = any(not lossless(spec.uri, cfg.capture) for spec in cfg.sources)
        drain_deadline: float | None = None
        stopping_captures = False
        while True:
            for running in self._running:
                running.poll()
            if (failure := record.failure) is not None:
                raise StageError(failure.message)
            if not record.process.is_alive():
                return self._stop_requests > 0
            if self._stop_requests > 1:
                return True
            if self._stop_requests and not stopping_captures:
                stopping_captures = True
                log.info("stopping: capture ends, frames in flight are drained (Ctrl-C again to stop now)")
                for capture in captures:
                    capture.process.terminate()
            for index, worker in enumerate(workers):
                if not worker.process.is_alive():
                    ledger.worker_died()  # before the restart: the record process may now count its frames lost
                    workers[index] = self._restart(worker)
            if not stopping_captures:
                self._watch_captures(captures, ledger)
            uncounted = any(ledger.sent_total(slot) is None for slot in range(len(captures)))
            if drain_deadline is None and (live or uncounted) and not any(c.process.is_alive() for c in captures):
                drain_deadline = time.monotonic() + cfg.record.drain_timeout_s
            if drain_deadline is not None and time.monotonic() > drain_deadline:
                log.warning(
                    "frames still missing %.0f s after the sources ended; finalizing without them",
                    cfg.record.drain_timeout_s,
                )
                return self._stop_requests > 0
            if on_progress is not None:
                on_progress(ledger.done[:])
            time.sleep(TICK_S)

    def _watch_captures(self, captures: list[_Running], ledger: Ledger) -> None:
        """A capture that crashed or was killed: a live source's is restarted, a file's is reported at once."""
        for index, capture in enumerate(captures):
            capture.poll()
            if capture.process.is_alive() or capture.finished is not None or capture in self._reported:
                continue
            assert isinstance(capture.stage, CaptureStage)
            if capture.failure is not None and not capture.failure.message.startswith(CRASHED):
                continue  # it gave up on its source (capture.give_up_s, an unreadable file): reported at the end
            reason = capture.failure.message if capture.failure else f"exit status {capture.process.exitcode}"
            if lossless(capture.stage.spec.uri, self.settings.capture):
                self._reported.append(capture)
                ledger.holding(index, -1)  # what it held will not be sent again: the record side may count it lost
                log.error("%s died (%s): the rest of its file is not read", capture.stage.title, reason)
                continue
            limits = self.settings.capture.max_restarts, self.settings.capture.restart_window_s
            if not self._may_restart(self._capture_restarts, *limits):
                self._reported.append(capture)
                log.error(
                    "%s died (%s) and was restarted %d times in %.0f s; not again",
                    capture.stage.title,
                    reason,
                    len(self._capture_restarts),
                    limits[1],
                )
                continue
            log.error(
                "%s died (%s); restarting it: a new session, recorded into a new file", capture.stage.title, reason
            )
            self.capture_restarts += 1
            self._running.remove(capture)
            capture.conn.close()
            captures[index] = self._start(capture.stage)

    @staticmethod
    def _may_restart(restarts: deque[float], limit: int, window: float) -> bool:
        """Whether another restart fits in the budget (and if so, it is counted)."""
        now = time.monotonic()
        while restarts and now - restarts[0] > window:
            restarts.popleft()
        if len(restarts) >= limit:
            return False
        restarts.append(now)
        return True

    def _restart(self, worker: _Running) -> _Running:
        window = self.settings.worker.restart_window_s
        reason = worker.failure.message if worker.failure else f"exit status {worker.process.exitcode}"
        if not self._may_restart(self._restarts, self.settings.worker.max_restarts, window):
            raise StageError(
                f"{worker.stage.title} died ({reason}) and workers were already restarted "
                f"{len(self._restarts)} times in {window:.0f} s; giving up"
            )
        self.worker_restarts += 1
        log.error(
            "%s died (%s); restarting it; frames of files it held go to another worker, live ones are counted lost",
            worker.stage.title,
            reason,
        )
        self._running.remove(worker)
        worker.conn.close()
        if self._monitor is not None:
            assert isinstance(worker.stage, WorkerStage)
            self._monitor.worker_restarted(worker.stage.number)
        return self._start(worker.stage)

    def _stop_all(self, abort: bool) -> None:
        """Stop in reverse start order: captures, workers, then the record process finalizes.

        Aborting (a second Ctrl-C, or a failed stage) gives each group ABORT_TIMEOUT_S; otherwise
        STOP_TIMEOUT_S, and captures also get capture.linger_s to hand their last frames over.
        """
        for role in ("capture", "worker", "record"):
            group = [r for r in self._running if r.stage.role == role]
            for running in group:
                if running.process.is_alive():
                    running.process.terminate()
            if abort:
                wait = ABORT_TIMEOUT_S
            else:
                wait = STOP_TIMEOUT_S + (self.settings.capture.linger_s if role == "capture" else 0)
            deadline = time.monotonic() + wait
            for running in group:
                running.process.join(max(0.0, deadline - time.monotonic()))
                if running.process.is_alive():
                    # when aborting, a stage still handing frames over is expected: stopped, not a new fault
                    log.log(
                        logging.WARNING if abort else logging.ERROR,
                        "%s did not stop in %.0f s; killed",
                        running.stage.title,
                        wait,
                    )
                    running.process.kill()
                    running.process.join()
                    running.events.append(Failed(running.stage.title, f"did not stop in {wait:.0f} s; killed"))
                running.poll()
