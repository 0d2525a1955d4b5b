"""Work by credit between a capture and its workers: a worker asks for frames, a capture sends to one that asked.

A capture binds a ROUTER socket (``Dispatcher``); every worker connects a
DEALER to each capture (``WorkerLink``) and says how many frames it can take
(a hello credit). The capture sends each frame to the worker with the most
credit left, a credit a frame, and the worker hands the credit back (Done)
once it has passed the frame on. So a host twice as fast gets twice the
frames, and a worker that vanishes holds at most its credits.

Every worker speaks to every capture at least once a ``HEARTBEAT_S``, even in
the middle of a long batch. A worker unheard for ``worker_timeout_s`` is given
up: the frames of files and the ends of stream it held go to another worker
(should the first one still deliver them, the sequencer discards the copy that
comes second), and its live frames are left to the sequencer to count lost. A
worker the capture does not know (the capture restarted, or gave it up) is
told so (Reset) and says afresh what it can take: workers join and leave
mid-run.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

import zmq

from anonstream.closing import Closing
from anonstream.errors import WireError
from anonstream.process import log_sampled
from anonstream.stream.transport import (
    DEFAULT_LINGER_MS,
    DEFAULT_WORKER_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    POLL_MS,
    Network,
    Socket,
)
from anonstream.stream.wire import (
    MAX_CREDIT,
    MAX_HEADER_BYTES,
    Credit,
    Done,
    Dropped,
    EndOfStream,
    Flag,
    FrameMessage,
    Reset,
    decode,
    encode,
)

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # how often a worker speaks to each capture when it has nothing else to say
NOTICE_HWM = 10_000  # a worker's notices a capture keeps while it is busy elsewhere (a camera's outage, say)

Work = FrameMessage | EndOfStream  # what a capture hands a worker
Key = tuple[str, int, int]  # stream, epoch, seq (an end of stream: its frame count)


def work_key(message: Work | Dropped) -> Key:
    """What a capture and a worker call a message between them (a drop notice: the frame it stands for)."""
    if isinstance(message, EndOfStream):
        return message.stream, message.epoch, message.frames
    if isinstance(message, Dropped):
        return message.stream, message.epoch, message.seq
    return message.header.stream, message.header.epoch, message.header.seq


@dataclass
class _Worker:
    number: int
    credit: int
    heard: float  # time.monotonic() of its latest word
    held: dict[Key, Work | None] = field(default_factory=dict)  # sent, not done: what to send again (None: live)
    last_sent: float = 0.0


class Dispatcher(Socket):
    """A capture's ROUTER socket: each message to the worker with the most credit, taken back from one that vanished."""

    def __init__(
        self,
        linger_ms: int = DEFAULT_LINGER_MS,
        worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
        network: Network | None = None,
        on_held: Callable[[int], None] | None = None,
    ) -> None:
        """``on_held(seq)``: told the lowest seq it still holds whenever that changes (-1: none)."""
        super().__init__(zmq.ROUTER, MAX_CREDIT, linger_ms, network)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a worker that is gone fails, not vanishes
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_HEADER_BYTES)  # workers send small notices only
        self.socket.setsockopt(zmq.RCVHWM, NOTICE_HWM)
        self.worker_timeout_s = worker_timeout_s
        self._workers: dict[bytes, _Worker] = {}
        self._again: list[Work] = []  # taken back from workers given up, oldest first: sent before anything new
        self.rejected = self.resent = self.given_up = 0
        self.taken: Counter[int] = Counter()  # worker number -> frames and ends it was sent
        self._alone_since: float | None = None  # since when it has known no worker (None: it knows one)
        self._on_held, self._held_told = on_held, -1

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet done, or waiting to be sent again."""
        return sum(len(w.held) for w in self._workers.values()) + len(self._again)

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def oldest_held(self) -> int:
        """The lowest seq of what it holds to send again if need be (a file's frames, ends of stream); -1: none."""
        held = [seq for w in self._workers.values() for (_, _, seq), kept in w.held.items() if kept is not None]
        return min(held + [work_key(m)[2] for m in self._again], default=-1)

    def _tell_held(self) -> None:
        if self._on_held is not None and (oldest := self.oldest_held) != self._held_told:
            self._held_told = oldest
            self._on_held(oldest)

    def wait_for_workers(self, stop: threading.Event) -> bool:
        """Block until a worker has asked for frames (False if stopped first)."""
        while not stop.is_set():
            if any(w.credit for w in self._workers.values()):
                return True
            self.serve(POLL_MS)
        return False

    def send(
        self, message: Work, stop: threading.Event | None = None, block: bool = True, alone_s: float = math.inf
    ) -> bool:
        """Send to a worker with credit; False if none has any (not ``block``), if stopped, or without any
        worker for ``alone_s``. A frame of a file and an end of stream are kept until done, to send again."""
        keep = None if isinstance(message, FrameMessage) and message.header.flags & Flag.LIVE else message
        self.serve(0)
        while True:
            self._send_again()
            while (identity := self._pick()) is not None:
                if self._deliver(identity, message, keep):
                    return True
            if not block or (stop is not None and stop.is_set()) or self._alone_for(alone_s):
                return False
            self.serve(POLL_MS)

    def drain(self, until: threading.Event, alone_s: float = math.inf) -> bool:
        """Serve the workers until all they were sent is done; False if ``until`` is set first, or
        there has been no worker for ``alone_s`` (what they held is then left for the record side to count)."""
        while self.in_flight:
            if until.is_set() or self._alone_for(alone_s):
                return False
            self.listen(POLL_MS / 1000)
        return True

    def serve(self, timeout_ms: int) -> None:
        """Take in what the workers said (waiting up to ``timeout_ms`` for the first word), and give up the silent."""
        if self.socket.poll(timeout_ms, zmq.POLLIN):
            while True:
                try:
                    parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._heard(bytes(parts[0].buffer), parts[1:])
        now = time.monotonic()
        for identity, worker in list(self._workers.items()):
            if now - worker.heard > self.worker_timeout_s:
                self._give_up(identity, f"unheard for {now - worker.heard:.1f} s")
        self._alone_since = None if self._workers else self._alone_since or now
        self._tell_held()

    def _alone_for(self, seconds: float) -> bool:
        """Whether it has known no worker for longer than ``seconds``."""
        return self._alone_since is not None and time.monotonic() - self._alone_since > seconds

    def listen(self, seconds: float) -> None:
        """Serve for up to ``seconds``, sending again what waits to be (what a capture does while it waits)."""
        self._send_again()
        self.serve(math.ceil(seconds * 1000))

    def _heard(self, identity: bytes, parts: list[zmq.Frame]) -> None:
        try:
            message = decode(parts)
            if not isinstance(message, Credit | Done):
                raise WireError(f"a {type(message).__name__} message is not expected from a worker")
        except WireError as exc:
            self.rejected += 1
            if log_sampled(self.rejected):
                log.warning("rejected malformed message #%d from a worker: %s", self.rejected, exc)
            return
        worker = self._workers.get(identity)
        now = time.monotonic()
        if isinstance(message, Credit) and message.hello:
            if worker is not None:
                self._give_up(identity, "started afresh")
            self._workers[identity] = _Worker(message.worker, message.credit, now)
            log.info("worker %d joined, taking up to %d frames at once", message.worker, message.credit)
            return
        if worker is None:  # one this capture gave up, or that spoke to its predecessor: it is to say hello
            self._tell(identity, Reset())
            return
        worker.heard = now
        if isinstance(message, Credit):
            worker.credit = min(MAX_CREDIT, worker.credit + message.credit)
        elif worker.held.pop((message.stream, message.epoch, message.seq), False) is not False:
            worker.credit = min(MAX_CREDIT, worker.credit + 1)

    def _pick(self) -> bytes | None:
        """The worker with the most credit left (of equals, the one sent to longest ago); None if none has any."""
        best: tuple[int, float] | None = None
        chosen = None
        for identity, worker in self._workers.items():
            rank = (worker.credit, -worker.last_sent)
            if worker.credit > 0 and (best is None or rank > best):
                best, chosen = rank, identity
        return chosen

    def _deliver(self, identity: bytes, message: Work, keep: Work | None) -> bool:
        worker = self._workers[identity]
        try:
            self.socket.send_multipart([identity, *encode(message)], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # its queue is full even so: no more until it hands credit back
            worker.credit = 0
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._give_up(identity, "disconnected")
            return False
        worker.credit -= 1
        worker.held[work_key(message)] = keep
        self.taken[worker.number] += 1
        worker.last_sent = time.monotonic()
        self._tell_held()
        return True

    def _send_again(self) -> None:
        while self._again and (identity := self._pick()) is not None:
            if self._deliver(identity, self._again[0], self._again[0]):
                self._again.pop(0)
                self.resent += 1

    def _give_up(self, identity: bytes, why: str) -> None:
        worker = self._workers.pop(identity)
        again = [m for m in worker.held.values() if m is not None]
        self._again = sorted(self._again + again, key=lambda m: work_key(m)[2])
        self.given_up += 1
        log.warning(
            "worker %d %s: %d message(s) it held go to another worker, %d live frame(s) are left to be counted lost",
            worker.number,
            why,
            len(again),
            len(worker.held) - len(again),
        )

    def _tell(self, identity: bytes, message: Reset) -> None:
        try:
            self.socket.send_multipart([identity, *encode(message)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # it is gone or its queue is full: it will speak again, and be told again
            log.debug("could not reset a worker: %s", exc)


class WorkerLink(Closing):
    """A worker's side: a DEALER per capture, served by a thread of its own.

    The thread keeps the worker heard while its model runs a long batch, and
    hands a credit back the moment a frame is passed on (``done``, from any
    thread). What the captures send is queued, in arrival order, for
    ``receive``: at most ``credits`` messages of each capture.
    """

    def __init__(
        self,
        number: int,
        credits: int,
        linger_ms: int = DEFAULT_LINGER_MS,
        network: Network | None = None,
    ) -> None:
        self.network = network or Network(plaintext_ok=True, bare=True)
        self.number, self.credits, self._linger_ms = number, credits, linger_ms
        self.rejected = 0
        self._dealers: list[zmq.Socket[bytes]] = []
        self._held: list[int] = []  # per capture: messages received, not yet done
        self._origin: dict[str, int] = {}  # stream -> the capture it comes from
        self._inbox: queue.SimpleQueue[Work] = queue.SimpleQueue()
        context = self.network.context
        inproc = f"inproc://done-{id(self)}"
        self._done_in: zmq.Socket[bytes] = context.socket(zmq.PULL)
        self._done_in.bind(inproc)
        self._done_out: zmq.Socket[bytes] = context.socket(zmq.PUSH)
        self._done_out.connect(inproc)
        self._done_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="link", daemon=True)

    def connect(self, endpoint: str) -> Self:
        dealer = self.network.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, self._linger_ms)
        dealer.setsockopt(zmq.RCVHWM, MAX_CREDIT + 1)
        dealer.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        try:
            self.network.attach(dealer, endpoint, server=False)
        except WireError:
            dealer.close(linger=0)
            raise
        self._dealers.append(dealer)
        self._held.append(0)
        return self

    def start(self) -> Self:
        self._thread.start()
        return self

    def receive(self, timeout_ms: int = POLL_MS) -> Work | None:
        """The next message a capture sent, or None after ``timeout_ms``."""
        try:
            return self._inbox.get(timeout=timeout_ms / 1000) if timeout_ms else self._inbox.get_nowait()
        except queue.Empty:
            return None

    def done(self, message: Work | Dropped) -> None:
        """``message`` was passed on (or its drop notice was): its capture may forget it, and send another."""
        stream, epoch, seq = work_key(message)
        with self._done_lock:
            self._done_out.send_multipart(encode(Done(self.number, stream, seq, epoch)))

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._done_in, zmq.POLLIN)
        for dealer in self._dealers:
            poller.register(dealer, zmq.POLLIN)
            self._say(dealer, Credit(self.number, self.credits, hello=True))
        beat = time.monotonic() + HEARTBEAT_S
        while not self._stop.is_set():
            ready = dict(poller.poll(max(0, min(POLL_MS, math.ceil((beat - time.monotonic()) * 1000)))))
            if self._done_in in ready:
                self._forward_done()
            for slot, dealer in enumerate(self._dealers):
                if dealer in ready:
                    self._take_in(slot, dealer)
            if time.monotonic() >= beat:
                beat = time.monotonic() + HEARTBEAT_S
                for dealer in self._dealers:
                    self._say(dealer, Credit(self.number, 0))

    def _forward_done(self) -> None:
        while True:
            try:
                parts = self._done_in.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            done = decode(parts)  # written by this process's done() just now
            assert isinstance(done, Done)
            slot = self._origin[done.stream]
            self._held[slot] -= 1
            self._send(self._dealers[slot], parts)

    def _take_in(self, slot: int, dealer: zmq.Socket[bytes]) -> None:
        while True:
            try:
                parts = dealer.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                message = decode(parts)
                if not isinstance(message, FrameMessage | EndOfStream | Reset):
                    raise WireError(f"a {type(message).__name__} message is not expected from a capture")
            except WireError as exc:  # decode turns whatever a hostile message provokes into WireError (tested)
                self.rejected += 1
                if log_sampled(self.rejected):
                    log.warning("rejected malformed message #%d: %s: %s", self.rejected, type(exc).__name__, exc)
                continue
            if isinstance(message, Reset):  # the capture restarted, or gave this worker up: start afresh
                self._say(dealer, Credit(self.number, max(0, self.credits - self._held[slot]), hello=True))
                continue
            self._held[slot] += 1
            self._origin[work_key(message)[0]] = slot
            self._inbox.put(message)

    def _say(self, dealer: zmq.Socket[bytes], message: Credit) -> None:
        self._send(dealer, encode(message))

    def _send(self, dealer: zmq.Socket[bytes], parts: list[bytes] | list[bytes | memoryview]) -> None:
        try:
            dealer.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:  # the link has been down for long: the capture will have given this worker up, and reset it
            log.debug("a notice to a capture could not be queued")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for dealer in self._dealers:
            dealer.close()
        self._done_out.close(linger=0)
        self._done_in.close(linger=0)
        if self.network.bare:
            self.network.close()
