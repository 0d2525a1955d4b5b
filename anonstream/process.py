"""The base of every pipeline process, and the typed messages it sends home.

A stage (capture, worker, record) is a picklable object with a ``serve``
method. ``StageProcess`` runs it in a child process after the per-process
setup every stage needs: a process title an operator can read in ``ps``,
SIGTERM as the one stop request (Ctrl-C is the orchestrator's to coordinate),
death with the parent, and logging routed to the parent's console. The CLI's
single-role commands call ``serve`` directly, with Ctrl-C handled like SIGTERM.

A stage tells its parent how it started and ended (``StageEvent``), and while
it runs publishes live events (stats, preview images: ``LiveEvent``), which
must never hold the stage up: a thread sends them, and when the parent lags
behind, the oldest waiting one gives way.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import logging.handlers
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Protocol, TypeAlias

from setproctitle import setproctitle

from anonstream.errors import AnonstreamError
from anonstream.redaction import redact

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from anonstream.stream.metrics import RecordStats, RunSummary, WorkerStats
    from anonstream.stream.recorders import PreviewImage

    LiveEvent: TypeAlias = RecordStats | WorkerStats | PreviewImage

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1
LIVE_QUEUE = 16  # live events waiting for the parent; a stats event a second and a few previews fit


@dataclass(frozen=True, slots=True)
class Ready:
    title: str
    detail: str = ""
    total: int | None = None  # frames the stage expects to handle, where known (progress bars)


@dataclass(frozen=True, slots=True)
class Failed:
    title: str
    message: str


@dataclass(frozen=True, slots=True)
class Finished:
    title: str
    counters: dict[str, int] = field(default_factory=dict)
    summary: RunSummary | None = None


StageEvent = Ready | Failed | Finished


class Channel:
    """The stage's line to whoever started it: a pipe to the orchestrator, or, run from the CLI directly,
    the events kept here and live events handed to ``sink`` (the role's own monitor, if it has one)."""

    def __init__(
        self, title: str, conn: Connection | None = None, sink: Callable[[LiveEvent], None] | None = None
    ) -> None:
        self.title = title
        self._conn = conn
        self._sink = sink
        self._lock = threading.Lock()  # the stage's thread and the live sender share the pipe
        self._live: queue.Queue[LiveEvent] | None = None
        self.events: list[StageEvent] = []

    def send(self, event: StageEvent) -> None:
        self.events.append(event)
        if self._conn is None and isinstance(event, Ready):  # a role on its own: its log says it is up
            log.info("%s ready: %s", self.title, event.detail)
        self._send(event)

    def _send(self, event: StageEvent | LiveEvent) -> bool:
        if self._conn is None:
            return True
        try:
            with self._lock:
                self._conn.send(event)
        except (OSError, ValueError):  # ValueError: the pipe was closed as the stage exits
            log.debug("%s: parent no longer listening", self.title)
            return False
        return True

    def publish(self, event: LiveEvent) -> None:
        """A live event, without waiting: with nobody listening it goes nowhere."""
        if self._conn is None:
            if self._sink is not None:
                self._sink(event)
            return
        if self._live is None:
            self._live = queue.Queue(LIVE_QUEUE)
            threading.Thread(target=self._send_live, name="live events", daemon=True).start()
        while True:
            try:
                self._live.put_nowait(event)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):  # the sender may have just taken one
                    self._live.get_nowait()

    def _send_live(self) -> None:
        assert self._live is not None
        while self._send(self._live.get()):
            pass

    def ready(self, detail: str = "", total: int | None = None) -> None:
        self.send(Ready(self.title, detail, total))


class Stage(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def title(self) -> str: ...

    def serve(self, stop: threading.Event, channel: Channel) -> None: ...


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM if the orchestrator dies, so no stage is orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")


def log_sampled(count: int) -> bool:
    """Whether the count-th occurrence of a repeated failure is logged: the first ten, then every thousandth."""
    return count <= 10 or count % 1000 == 0


class Redacting(logging.Filter):
    """Credentials out of every log line, whichever process and library wrote it (the handlers' filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def name_process(title: str) -> None:
    """What `ps` and `top` show, and what log lines from this process are prefixed with."""
    setproctitle(f"anonstream: {title}")
    multiprocessing.current_process().name = title


CRASHED = "crashed"  # how a stage's failure begins when it was a bug, not a failure it reported


def run_stage(stage: Stage, stop: threading.Event, channel: Channel) -> int:
    """Serve a stage to completion; the exit status says how it ended."""
    try:
        stage.serve(stop, channel)
    except AnonstreamError as exc:
        channel.send(Failed(stage.title, str(exc)))
        return 2
    except Exception as exc:
        log.exception("%s crashed", stage.title)
        channel.send(Failed(stage.title, f"{CRASHED}: {type(exc).__name__}: {exc}"))
        return 1
    return 0


class StageProcess(multiprocessing.context.SpawnProcess):
    """One stage in its own process; see the module docstring."""

    def __init__(self, stage: Stage, conn: Connection, log_queue: Queue[logging.LogRecord], log_level: int) -> None:
        super().__init__(name=stage.title, daemon=False)
        self.stage = stage
        self._conn = conn
        self._log_queue = log_queue
        self._log_level = log_level

    def run(self) -> None:
        name_process(self.stage.title)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent()
        # The orchestrator blocked these around start(); pending ones now reach the handlers above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if os.getppid() == 1:
            stop.set()
        root = logging.getLogger()
        root.handlers[:] = [logging.handlers.QueueHandler(self._log_queue)]
        root.setLevel(self._log_level)
        channel = Channel(self.stage.title, self._conn)
        code = 0
        try:
            code = run_stage(self.stage, stop, channel)
        finally:
            # Served: a later SIGTERM (systemd and `timeout` signal the whole process group, then the
            # orchestrator stops each stage) must not kill the interpreter as it exits, which
            # resets Python-level handlers to the default; an ignored signal stays ignored.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._conn.close()
        raise SystemExit(code)
