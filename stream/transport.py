"""ZeroMQ sockets that carry wire messages between processes.

Frames flow over PUSH/PULL: a capture binds a PUSH socket, workers connect
PULL sockets to every capture (fair-queued) and PUSH their output to the one
record process, which binds a PULL socket. Every high-water mark and limit
on what a process holds is named here and nowhere else; the configurable ones
(config.TransportConfig) take their defaults from here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Self

import zmq
from zmq.utils.monitor import recv_monitor_message

from anonstream.closing import Closing
from anonstream.errors import WireError
from anonstream.process import log_sampled
from anonstream.stream.wire import Dropped, EndOfStream, FrameMessage, Idle, Message, decode, encode

log = logging.getLogger(__name__)

DEFAULT_FRAME_HWM = 8  # frames queued per peer before a sender blocks or drops
DEFAULT_LINGER_MS = 2000  # how long a closing socket keeps delivering queued frames
MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # a larger message is refused by libzmq before it is allocated
DEFAULT_LIVE_DEPTH = 1  # frames of one live stream a worker holds unseen; a newer one drops the oldest
MAX_BACKLOG = 256  # messages a worker holds unseen at most, whatever their streams claim
MAX_STREAMS = 256  # streams a record process without --expect accepts
POLL_MS = 100  # how often blocking loops look at their stop flag
PEERS_TIMEOUT_S = 30.0  # how long a capture waits for every worker to connect before it settles for fewer


class _Socket(Closing):
    def __init__(self, kind: int, hwm: int, linger_ms: int) -> None:
        self._context = zmq.Context()
        self.socket: zmq.Socket[bytes] = self._context.socket(kind)
        self.socket.setsockopt(zmq.LINGER, linger_ms)
        if kind == zmq.PUSH:
            self.socket.setsockopt(zmq.SNDHWM, hwm)
        else:
            self.socket.setsockopt(zmq.RCVHWM, hwm)
            self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)

    def bind(self, endpoint: str) -> Self:
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise WireError(f"cannot listen on {endpoint}: {exc} (is another process using it?)") from None
        return self

    def connect(self, endpoint: str) -> Self:
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise WireError(f"cannot connect to {endpoint}: {exc}") from None
        return self

    def close(self) -> None:
        self.socket.close()
        self._context.term()


class FrameSender(_Socket):
    """A PUSH socket for wire messages; blocking sends give back-pressure."""

    def __init__(self, hwm: int = DEFAULT_FRAME_HWM, linger_ms: int = DEFAULT_LINGER_MS) -> None:
        super().__init__(zmq.PUSH, hwm, linger_ms)

    def wait_for_peers(self, stop: threading.Event, peers: int = 1, timeout_s: float = PEERS_TIMEOUT_S) -> bool:
        """Block until ``peers`` receivers have connected (False if stopped first).

        PUSH deals messages round robin to the peers connected at the time: a burst sent as
        the first one connects all goes to it, and a peer whose connection is still being
        made when messages are dealt to it may never see them. So a capture of a file waits
        for every worker. After ``timeout_s`` it settles for those there are (at least one).
        """
        monitor = self.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            deadline = time.monotonic() + timeout_s
            joined = 0
            while not stop.is_set() and joined < peers:
                if monitor.poll(POLL_MS):
                    recv_monitor_message(monitor)
                    joined += 1
                elif time.monotonic() > deadline and self.socket.poll(0, zmq.POLLOUT):
                    log.warning("%d of %d workers connected after %.0f s; going on with them", joined, peers, timeout_s)
                    break
        finally:
            self.socket.disable_monitor()
            monitor.close()
        return not stop.is_set()

    def send(self, message: Message, stop: threading.Event | None = None, block: bool = True) -> bool:
        """Send one message; False if it could not go (non-blocking and full, or stopped while waiting)."""
        parts = encode(message)
        while True:
            try:
                self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if not block:
                    return False
            if stop is not None and stop.is_set():
                return False
            self.socket.poll(POLL_MS, zmq.POLLOUT)


class FrameReceiver(_Socket):
    """A PULL socket that validates every message and counts the ones it rejects.

    ``accept`` names the message types this end expects; any other is rejected
    like a malformed one (a worker has no use for a drop notice, say).
    """

    def __init__(
        self,
        hwm: int = DEFAULT_FRAME_HWM,
        linger_ms: int = DEFAULT_LINGER_MS,
        accept: tuple[type[Message], ...] = (FrameMessage, EndOfStream, Dropped, Idle),
    ) -> None:
        super().__init__(zmq.PULL, hwm, linger_ms)
        self.rejected = 0
        self._accept = accept

    def receive(self, timeout_ms: int = POLL_MS) -> Message | None:
        """The next valid message, or None after ``timeout_ms`` or a rejected one."""
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        parts = self.socket.recv_multipart(copy=False)
        try:
            message = decode(parts)
            if not isinstance(message, self._accept):
                raise WireError(f"a {type(message).__name__} message is not expected here")
            return message
        except Exception as exc:  # WireError, or whatever else a hostile message provokes: counted, never fatal
            self.rejected += 1
            if log_sampled(self.rejected):
                log.warning("rejected malformed message #%d: %s: %s", self.rejected, type(exc).__name__, exc)
            return None
