"""Restores each stream's frame order after the worker pool, and decides when a missing frame is lost.

Workers finish frames out of order. The sequencer holds early frames until
the missing ones arrive. A worker's drop notice stands in for the frame it
dropped, so a dropped frame holds nothing up. When a missing frame is lost
depends on the stream:

- live (Flag.LIVE): once it has been missing ``loss_timeout_s``, so that
  latency stays bounded;
- lossless (files and folders): never because it is slow, or still on its
  way. A frame its capture still holds (``capture_holds``: under ``run``,
  the ledger says so) is on its way, or will be sent again: never lost. Only
  a worker that dies takes frames with it, so a missing frame is
  lost only after a worker died (``worker_died``), and once every one of the
  ``workers`` has said it held nothing (``Idle``) at least ``IDLE_GRACE_S``
  after both that death and the moment the stream began to wait; after a
  death, ``resend_s`` later still, the time a capture takes to give the dead
  worker up and send what it held to another. A worker
  keeps its number when the orchestrator restarts it. With no death, only
  every worker idle ``idle_timeout_s`` after the wait began says a frame is
  gone (it should never happen; it is counted and logged like any loss).
  Without ``workers`` (a record process on its own, which cannot see them)
  the timeout applies.

Each capture start is a session with an epoch of its own, and seq counts from
0 again in it: a new epoch ends the stream's old session (what it still held
is released, its gaps counted lost) and starts afresh, its first frame flagged
RESUMED so that recorders begin a new file; counts go on. A frame of a session
already replaced is late. A frame more than ``MAX_AHEAD`` ahead of what the
stream waits for is hostile (no capture runs that far ahead): rejected and
counted, so that a few forged seq numbers cannot make it skip the real ones. A
stream first seen far into its session (a record started after its capture)
starts where it is.

Either kind loses the oldest gap when more than ``max_pending`` frames or
``max_pending_bytes`` wait behind it; on one host the captures' window
(``ledger.Window``) keeps lossless streams below both. Time is passed in
(the host's monotonic clock, which idle notices use too), so the logic is
exact to test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anonstream.stream.wire import Dropped, EndOfStream, Flag, FrameMessage, Idle

# An idle worker's socket may still be taking in frames sent long ago (ZeroMQ moves them between
# processes in the background): only an idle moment this long after a death or a gap counts.
IDLE_GRACE_S = 1.0
# Frames a stream can have in flight ahead of the one it waits for, at most: far more than the captures'
# window, the workers' queues and their backlogs hold together.
MAX_AHEAD = 4096


@dataclass(frozen=True, slots=True)
class Lost:
    stream: str
    first_seq: int
    count: int


@dataclass(frozen=True, slots=True)
class Ended:
    stream: str
    end: EndOfStream | None  # None: its end-of-stream never arrived (flushed, or its capture's count was used)
    frames: int | None = None  # the frames it had in all, where known


Released = FrameMessage | Dropped | Lost | Ended


@dataclass
class _StreamState:
    name: str
    next_seq: int = 0
    pending: dict[int, FrameMessage | Dropped] = field(default_factory=dict)
    pending_bytes: int = 0
    end: EndOfStream | None = None
    sent: int | None = None  # frames its capture reports having sent, should the end-of-stream not arrive
    live: bool = False
    stalled_since: float | None = None
    finished: bool = False
    late: int = 0
    hostile: int = 0
    epoch: int | None = None  # the session it is in (None: nothing seen yet)
    retired: set[int] = field(default_factory=set)  # sessions it has left
    resume: bool = False  # its next frame released starts a new session

    @property
    def total(self) -> int | None:
        return self.end.frames if self.end is not None else self.sent


class Sequencer:
    def __init__(
        self,
        loss_timeout_s: float,
        max_pending: int,
        max_pending_bytes: int = 2**62,
        workers: int = 0,
        idle_timeout_s: float = 30.0,
        resend_s: float = 0.0,
    ) -> None:
        self.loss_timeout_s = loss_timeout_s
        self.resend_s = resend_s
        self.idle_timeout_s = idle_timeout_s
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.workers = workers
        self._idle: dict[int, float] = {}  # worker number -> latest moment it held nothing (seconds)
        self._died: float | None = None  # when a worker last died
        self._held: dict[str, int | None] = {}  # stream -> the lowest seq its capture still holds (None: none)
        self._streams: dict[str, _StreamState] = {}

    def _state(self, stream: str) -> _StreamState:
        if stream not in self._streams:
            self._streams[stream] = _StreamState(stream)
        return self._streams[stream]

    @property
    def late(self) -> dict[str, int]:
        """Frames that arrived after they had been declared lost, or after their session, per stream (discarded)."""
        return {name: s.late for name, s in self._streams.items()}

    @property
    def hostile(self) -> dict[str, int]:
        """Messages with a seq no capture could have sent yet, per stream (rejected)."""
        return {name: s.hostile for name, s in self._streams.items()}

    def done(self, stream: str) -> int:
        """Frames of ``stream`` the sequencer is past: released, dropped or lost."""
        state = self._streams.get(stream)
        return state.next_seq if state is not None else 0

    def push(self, message: FrameMessage | EndOfStream | Dropped | Idle, now: float) -> list[Released]:
        if isinstance(message, Idle):
            self._idle[message.worker] = max(self._idle.get(message.worker, 0.0), message.at_ns / 1e9)
            return self.poll(now)
        header = message.header if isinstance(message, FrameMessage) else message
        state = self._state(header.stream)
        out: list[Released] = []
        if header.epoch != state.epoch:
            if header.epoch in state.retired:
                state.late += 1
                return []
            out += self._new_session(state, header.epoch, message)
        if isinstance(message, EndOfStream):
            if state.finished or state.end is not None:
                return out
            state.end = message
        else:
            seq = message.seq if isinstance(message, Dropped) else message.header.seq
            if seq >= state.next_seq + MAX_AHEAD:
                state.hostile += 1
                return out
            if state.finished or seq < state.next_seq or seq in state.pending:
                state.late += 1
                return out
            if isinstance(message, FrameMessage):
                state.live = bool(message.header.flags & Flag.LIVE)
                state.pending_bytes += message.pixels.nbytes
            state.pending[seq] = message
        return out + self._release(state, now)

    def _new_session(
        self, state: _StreamState, epoch: int, first: FrameMessage | EndOfStream | Dropped
    ) -> list[Released]:
        """The stream's capture started again: release what the old session held, and begin at its seq."""
        out: list[Released] = []
        if state.epoch is not None:
            while state.pending:
                out += self._skip_gap(state)
                out += self._release(state, None)
            state.retired.add(state.epoch)
            state.resume = True
        seq = first.seq if isinstance(first, Dropped) else first.header.seq if isinstance(first, FrameMessage) else 0
        state.epoch, state.next_seq = epoch, seq if seq >= MAX_AHEAD else 0  # far in: started before this record
        state.end, state.sent, state.finished, state.stalled_since = None, None, False, None
        return out

    def capture_holds(self, stream: str, seq: int | None) -> None:
        """The stream's capture still holds its frames from ``seq`` on, to deliver or send again (None: none)."""
        self._held[stream] = seq

    def worker_died(self, at: float) -> None:
        """A worker died at ``at``: frames of files it held can now be found lost."""
        if self._died is None or at > self._died:
            self._died = at

    def capture_ended(self, stream: str, sent: int, now: float) -> list[Released]:
        """Its capture sent ``sent`` frames in all: the stream can end even if its end-of-stream went missing."""
        state = self._state(stream)
        if state.finished or state.sent is not None:
            return []
        state.sent = sent
        return self._release(state, now)

    def poll(self, now: float) -> list[Released]:
        """Declare lost what can no longer arrive (see the module docstring)."""
        out: list[Released] = []
        for state in self._streams.values():
            if state.stalled_since is not None and self._gone(state, now):
                out += self._skip_gap(state)
                out += self._release(state, now, end_missing=True)
        return out

    def flush(self) -> list[Released]:
        """Release everything held, gaps counted lost; every stream ends."""
        out: list[Released] = []
        for state in self._streams.values():
            while not state.finished and (state.pending or state.total is not None):
                out += self._skip_gap(state)
                out += self._release(state, None, end_missing=True)
            if not state.finished:
                state.finished = True
                out.append(Ended(state.name, state.end, state.total))
        return out

    def _gone(self, state: _StreamState, now: float) -> bool:
        """Whether what ``state`` waits for can no longer come."""
        assert state.stalled_since is not None
        if state.live or not self.workers:
            return now - state.stalled_since >= self.loss_timeout_s
        if (held := self._held.get(state.name)) is not None and held <= state.next_seq:
            return False  # its capture will deliver it, however long that takes
        if self._died is None:  # slow, or on its way: no worker died that could have taken it
            since = state.stalled_since + self.idle_timeout_s
        else:
            since = max(state.stalled_since, self._died + self.resend_s) + IDLE_GRACE_S
        return all(self._idle.get(n, -1.0) >= since for n in range(1, self.workers + 1))

    def _skip_gap(self, state: _StreamState) -> list[Released]:
        if state.pending:
            target = min(state.pending)
        elif state.total is not None:
            target = state.total
        else:
            target = state.next_seq
        state.stalled_since = None
        if target <= state.next_seq:
            return []
        lost = Lost(state.name, state.next_seq, target - state.next_seq)
        state.next_seq = target
        return [lost]

    def _release(self, state: _StreamState, now: float | None, end_missing: bool = False) -> list[Released]:
        """Release what is next in order; ``end_missing``: the stream may end on its capture's count alone."""
        out: list[Released] = []
        while True:
            while state.next_seq in state.pending:
                message = state.pending.pop(state.next_seq)
                if isinstance(message, FrameMessage):
                    state.pending_bytes -= message.pixels.nbytes
                    if state.resume:
                        message.header.flags |= Flag.RESUMED  # a new session: recorders begin a new file
                        state.resume = False
                out.append(message)
                state.next_seq += 1
                state.stalled_since = None
            if len(state.pending) > self.max_pending or state.pending_bytes > self.max_pending_bytes:
                out += self._skip_gap(state)
                continue
            break
        total = state.total
        if total is not None and not state.pending and state.next_seq >= total and (state.end or end_missing):
            state.finished = True
            out.append(Ended(state.name, state.end, total))
        elif (state.pending or total is not None) and state.stalled_since is None and now is not None:
            state.stalled_since = now
        return out
