"""Restores each stream's frame order after the worker pool.

Workers finish frames out of order. The sequencer holds early frames until
the missing ones arrive; a frame that has not come ``loss_timeout_s`` after
the stream stalled on it (or once ``max_pending`` frames wait behind it) is
declared lost, counted, and the stream moves on. A worker's drop notice
stands in for the frame it dropped, so a dropped frame holds nothing up.
Time is passed in, so the logic is exact to test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anonstream.stream.wire import Dropped, EndOfStream, FrameMessage


@dataclass(frozen=True, slots=True)
class Lost:
    stream: str
    first_seq: int
    count: int


@dataclass(frozen=True, slots=True)
class Ended:
    stream: str
    end: EndOfStream | None  # None: flushed before its end-of-stream arrived


Released = FrameMessage | Dropped | Lost | Ended


@dataclass
class _StreamState:
    name: str
    next_seq: int = 0
    pending: dict[int, FrameMessage | Dropped] = field(default_factory=dict)
    end: EndOfStream | None = None
    stalled_since: float | None = None
    finished: bool = False
    late: int = 0


class Sequencer:
    def __init__(self, loss_timeout_s: float, max_pending: int) -> None:
        self.loss_timeout_s = loss_timeout_s
        self.max_pending = max_pending
        self._streams: dict[str, _StreamState] = {}

    def _state(self, stream: str) -> _StreamState:
        if stream not in self._streams:
            self._streams[stream] = _StreamState(stream)
        return self._streams[stream]

    @property
    def late(self) -> dict[str, int]:
        """Frames that arrived after they had been declared lost, per stream (discarded)."""
        return {name: s.late for name, s in self._streams.items()}

    def push(self, message: FrameMessage | EndOfStream | Dropped, now: float) -> list[Released]:
        if isinstance(message, EndOfStream):
            state = self._state(message.stream)
            if state.finished or state.end is not None:
                return []
            state.end = message
        else:
            state = self._state(message.stream if isinstance(message, Dropped) else message.header.stream)
            seq = message.seq if isinstance(message, Dropped) else message.header.seq
            if state.finished or seq < state.next_seq or seq in state.pending:
                state.late += 1
                return []
            state.pending[seq] = message
        return self._release(state, now)

    def poll(self, now: float) -> list[Released]:
        """Declare lost whatever has been missing for too long."""
        out: list[Released] = []
        for state in self._streams.values():
            if state.stalled_since is not None and now - state.stalled_since >= self.loss_timeout_s:
                out += self._skip_gap(state)
                out += self._release(state, now)
        return out

    def flush(self) -> list[Released]:
        """Release everything held, gaps counted lost; every stream ends."""
        out: list[Released] = []
        for state in self._streams.values():
            while not state.finished and (state.pending or state.end is not None):
                out += self._skip_gap(state)
                out += self._release(state, None)
            if not state.finished:
                state.finished = True
                out.append(Ended(state.name, state.end))
        return out

    def _skip_gap(self, state: _StreamState) -> list[Released]:
        if state.pending:
            target = min(state.pending)
        elif state.end is not None:
            target = state.end.frames
        else:
            target = state.next_seq
        state.stalled_since = None
        if target <= state.next_seq:
            return []
        lost = Lost(state.name, state.next_seq, target - state.next_seq)
        state.next_seq = target
        return [lost]

    def _release(self, state: _StreamState, now: float | None) -> list[Released]:
        out: list[Released] = []
        while True:
            while state.next_seq in state.pending:
                out.append(state.pending.pop(state.next_seq))
                state.next_seq += 1
                state.stalled_since = None
            if len(state.pending) > self.max_pending:
                out += self._skip_gap(state)
                continue
            break
        if state.end is not None and not state.pending and state.next_seq >= state.end.frames:
            state.finished = True
            out.append(Ended(state.name, state.end))
        elif (state.pending or state.end is not None) and state.stalled_since is None and now is not None:
            state.stalled_since = now
        return out
