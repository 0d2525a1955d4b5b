"""What one host's stages share outside the wire: per stream, frames sent, held and done.

``anonstream run`` puts every stage on one host, so the captures and the
record process share three small counters per stream in shared memory:

- ``done``: frames the sequencer is past (recorded, dropped or lost). The
  progress display reads it, and a capture of a file or folder keeps its
  frames in flight within a window (``Window``): a slow frame makes the
  capture wait, never the sequencer give up, and what waits is bounded in
  frames and in bytes.
- ``sent``: how many frames a capture sent in all, once it has ended (-1
  before), so that a stream whose end-of-stream went down with a worker
  still ends.
- ``held``: the lowest seq of a file's frame that its capture still holds
  (sent to a worker that has not passed it on, or waiting to go to another
  after that worker died; -1: none). Such a frame is not lost, however long
  it takes on a loaded machine: the capture delivers it. Only a frame the
  capture no longer holds can have gone down with a worker.

and one for the run: ``died``, when a worker last died (time.monotonic; 0:
none yet), written by the orchestrator's watchdog: only then can a frame of
a file be missing for good.

Stages started on their own (``anonstream capture``, ``record``) have no ledger.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized, SynchronizedArray

WAIT_S = 0.005  # how often a capture whose window is full looks again


@dataclass(frozen=True)
class Ledger:
    done: SynchronizedArray[int]
    sent: SynchronizedArray[int]
    held: SynchronizedArray[int]
    died: Synchronized[float]

    @classmethod
    def create(cls, context: BaseContext, streams: int) -> Ledger:
        counters = (context.Array("q", streams), context.Array("q", [-1] * streams), context.Array("q", [-1] * streams))
        return cls(*counters, context.Value("d", 0.0))

    def holding(self, slot: int, seq: int) -> None:
        """The capture of ``slot`` still holds its frames from ``seq`` on (-1: none)."""
        self.held[slot] = seq

    def held_from(self, slot: int) -> int | None:
        value = int(self.held[slot])
        return None if value < 0 else value

    def worker_died(self) -> None:
        self.died.value = time.monotonic()

    @property
    def last_death(self) -> float | None:
        return self.died.value or None

    def sent_total(self, slot: int) -> int | None:
        value = int(self.sent[slot])
        return None if value < 0 else value


@dataclass
class Window:
    """A capture's frames in flight (sent, not yet done), bounded in frames and bytes."""

    ledger: Ledger
    slot: int
    max_frames: int
    max_bytes: int
    _flight: deque[tuple[int, int]] = field(default_factory=deque)  # (seq, bytes) sent, oldest first
    _bytes: int = 0

    def wait(self, nbytes: int, stop: threading.Event, serve: Callable[[float], None] | None = None) -> bool:
        """Block until a frame of ``nbytes`` fits (a frame always fits alone); False if stopped first.

        ``serve(seconds)`` is what the capture does while it waits: listen to its workers.
        """
        while True:
            done = int(self.ledger.done[self.slot])
            while self._flight and self._flight[0][0] < done:
                self._bytes -= self._flight.popleft()[1]
            if not self._flight or (len(self._flight) < self.max_frames and self._bytes + nbytes <= self.max_bytes):
                return True
            if _waited(stop, serve):
                return False

    def drain(self, frames: int, stop: threading.Event, serve: Callable[[float], None] | None = None) -> bool:
        """Block until the record stage is past all ``frames`` (recorded or counted lost); False if stopped first."""
        while int(self.ledger.done[self.slot]) < frames:
            if _waited(stop, serve):
                return False
        return True

    def sent(self, seq: int, nbytes: int) -> None:
        self._flight.append((seq, nbytes))
        self._bytes += nbytes


def _waited(stop: threading.Event, serve: Callable[[float], None] | None) -> bool:
    """Wait a little, serving if asked to; whether stopped."""
    if serve is None:
        return stop.wait(WAIT_S)
    serve(WAIT_S)
    return stop.is_set()
