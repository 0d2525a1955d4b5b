"""ZeroMQ sockets that carry wire messages between processes.

A capture binds a ROUTER socket and deals its frames by credit to the
workers, each of which connects a DEALER to every capture (dispatch.py).
Workers PUSH their output to the one record process, which binds a PULL
socket. Every high-water mark and limit
on what a process holds is named here and nowhere else; the configurable ones
(config.TransportConfig) take their defaults from here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from anonstream.closing import Closing
from anonstream.errors import WireError
from anonstream.process import log_sampled
from anonstream.stream.wire import (
    Credit,
    Done,
    Dropped,
    EndOfStream,
    FrameMessage,
    Idle,
    Message,
    Reset,
    decode,
    encode,
)

log = logging.getLogger(__name__)

DEFAULT_FRAME_HWM = 8  # frames queued per peer before a sender blocks or drops
DEFAULT_LINGER_MS = 2000  # how long a closing socket keeps delivering queued frames
MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # a larger message is refused by libzmq before it is allocated
DEFAULT_LIVE_DEPTH = 1  # frames of one live stream a worker holds unseen; a newer one drops the oldest
MAX_BACKLOG = 256  # messages a worker holds unseen at most, whatever their streams claim
MAX_STREAMS = 256  # streams a record process without --expect accepts
POLL_MS = 100  # how often blocking loops look at their stop flag
ZAP_DOMAIN = "anonstream"  # the authentication domain of every bound TCP socket
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
DEFAULT_WORKER_TIMEOUT_S = 3.0  # a worker a capture has not heard from this long is given up (dispatch.py)


@dataclass(frozen=True)
class Curve:
    """CurveZMQ keys of one process (z85): its own pair, the clients it lets in, the servers it talks to."""

    public: bytes
    secret: bytes
    allowed: frozenset[bytes]  # public keys of the clients its bound sockets accept
    servers: Mapping[str, bytes]  # endpoint -> public key of the server there


class Network(Closing):
    """One process's ZeroMQ context and keys: every socket of a stage comes from here, secured alike.

    A socket on ``tcp://`` is encrypted and authenticated with CurveZMQ: a bound one lets in only
    the allowed client keys (a ZAP handler; refusals are logged and counted), a connecting one
    checks the server's key. Without keys a TCP socket is refused, unless ``plaintext_ok``.
    ``ipc://`` and ``inproc://`` stay on the host, in a folder only this user can open.
    """

    def __init__(self, curve: Curve | None = None, plaintext_ok: bool = False, bare: bool = False) -> None:
        self.context = zmq.Context()
        self.curve, self.plaintext_ok = curve, plaintext_ok
        self.bare = bare  # the context of one socket made on its own (tests, tools), not a stage's
        self.denied = 0  # clients refused: an unknown key, or no encryption at all
        self._auth: ThreadAuthenticator | None = None
        self._watch: threading.Thread | None = None
        self._monitors: list[zmq.Socket[bytes]] = []
        self._stop = threading.Event()

    def sender(self, hwm: int = DEFAULT_FRAME_HWM, linger_ms: int = DEFAULT_LINGER_MS) -> FrameSender:
        return FrameSender(hwm, linger_ms, self)

    def receiver(
        self,
        hwm: int = DEFAULT_FRAME_HWM,
        linger_ms: int = DEFAULT_LINGER_MS,
        accept: tuple[type[Message], ...] = (FrameMessage, EndOfStream, Dropped, Idle),
    ) -> FrameReceiver:
        return FrameReceiver(hwm, linger_ms, accept, self)

    def secure(self, socket: zmq.Socket[bytes], endpoint: str, server: bool) -> None:
        """Before bind (``server``) or connect: the keys for a TCP endpoint, or an error if there are none."""
        if not endpoint.startswith("tcp://"):
            return
        if self.curve is None:
            if self.plaintext_ok:
                if not self.bare:  # a stage's socket (tools and tests make plain ones on purpose)
                    log.warning("%s carries frames unencrypted and unauthenticated (--insecure-plaintext)", endpoint)
                return
            raise WireError(
                f"{endpoint} would carry frames unencrypted: give this role keys (security.secret_key, "
                "security.allow or security.servers; see `anonstream keys`), or --insecure-plaintext on a "
                "network you trust"
            )
        socket.curve_secretkey, socket.curve_publickey = self.curve.secret, self.curve.public
        if not server:
            key = self.curve.servers.get(endpoint)
            if key is None:
                raise WireError(f"no server key for {endpoint}: add it to security.servers")
            socket.curve_serverkey = key
            return
        if not self.curve.allowed:
            raise WireError(f"{endpoint}: nobody could connect: give security.allow, the clients' public keys")
        if self._auth is None:
            self._auth = ThreadAuthenticator(self.context, log=logging.getLogger("anonstream.auth"))
            self._auth.start()
            self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)
        socket.curve_server = True
        socket.zap_domain = ZAP_DOMAIN.encode()
        self._monitors.append(socket.get_monitor_socket(HANDSHAKE_FAILED))
        if self._watch is None:
            self._watch = threading.Thread(target=self._watch_handshakes, name="handshakes", daemon=True)
            self._watch.start()

    def attach(self, socket: zmq.Socket[bytes], endpoint: str, server: bool) -> None:
        """Secure ``socket``, then bind it (``server``) or connect it; any failure as one WireError."""
        try:
            self.secure(socket, endpoint, server)
            if server:
                socket.bind(endpoint)
            else:
                socket.connect(endpoint)
        except zmq.ZMQError as exc:
            if server:
                raise WireError(f"cannot listen on {endpoint}: {exc} (is another process using it?)") from None
            raise WireError(f"cannot connect to {endpoint}: {exc}") from None

    def callback(self, domain: str, key: bytes) -> bool:
        """The ZAP handler's question: may this client key in?"""
        assert self.curve is not None
        if key in self.curve.allowed:
            return True
        self._deny(f"a client with a key not in security.allow ({key[:8].decode(errors='replace')}...)")
        return False

    def _deny(self, who: str) -> None:
        self.denied += 1
        if log_sampled(self.denied):
            log.warning("refused %s (%d refused so far)", who, self.denied)

    def _watch_handshakes(self) -> None:
        """Clients that fail the handshake before any key is seen (no encryption, wrong server key): counted."""
        poller = zmq.Poller()
        watched = 0
        while not self._stop.is_set():
            for monitor in self._monitors[watched:]:  # bound sockets secured since the last look
                poller.register(monitor, zmq.POLLIN)
                watched += 1
            for monitor, _ in poller.poll(POLL_MS):
                event = recv_monitor_message(monitor)
                if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # the ZAP handler counted those
                    self._deny(f"a client that failed the encrypted handshake (event {event['event']})")

    def close(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join()
        for monitor in self._monitors:
            monitor.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.context.term()


class Socket(Closing):
    def __init__(self, kind: int, hwm: int, linger_ms: int, network: Network | None = None) -> None:
        # Alone (tests, tools), a socket has a context of its own; in a stage, the process's network's.
        self.network = network or Network(plaintext_ok=True, bare=True)
        self.socket: zmq.Socket[bytes] = self.network.context.socket(kind)
        self.socket.setsockopt(zmq.LINGER, linger_ms)
        if kind == zmq.PUSH:
            self.socket.setsockopt(zmq.SNDHWM, hwm)
        else:
            self.socket.setsockopt(zmq.RCVHWM, hwm)
            self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)

    def bind(self, endpoint: str) -> Self:
        return self._attach(endpoint, server=True)

    def connect(self, endpoint: str) -> Self:
        return self._attach(endpoint, server=False)

    def _attach(self, endpoint: str, server: bool) -> Self:
        try:
            self.network.attach(self.socket, endpoint, server)
        except WireError:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.socket.close()
        if self.network.bare:
            self.network.close()


class FrameSender(Socket):
    """A PUSH socket for wire messages; blocking sends give back-pressure."""

    def __init__(
        self, hwm: int = DEFAULT_FRAME_HWM, linger_ms: int = DEFAULT_LINGER_MS, network: Network | None = None
    ) -> None:
        super().__init__(zmq.PUSH, hwm, linger_ms, network)

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


class FrameReceiver(Socket):
    """A PULL socket that validates every message and counts the ones it rejects.

    ``accept`` names the message types this end expects; any other is rejected
    like a malformed one (a worker has no use for a drop notice, say).
    """

    def __init__(
        self,
        hwm: int = DEFAULT_FRAME_HWM,
        linger_ms: int = DEFAULT_LINGER_MS,
        accept: tuple[type[Message], ...] = (FrameMessage, EndOfStream, Dropped, Idle),
        network: Network | None = None,
    ) -> None:
        super().__init__(zmq.PULL, hwm, linger_ms, network)
        self.rejected = 0
        self._accept = accept

    def receive(self, timeout_ms: int = POLL_MS) -> Message | None:
        """The next valid message, or None after ``timeout_ms`` or a rejected one."""
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        parts = self.socket.recv_multipart(copy=False)
        try:
            message = decode(parts)
            if isinstance(message, Credit | Done | Reset) or not isinstance(message, self._accept):
                raise WireError(f"a {type(message).__name__} message is not expected here")
            return message
        except WireError as exc:  # decode turns whatever a hostile message provokes into WireError (tested)
            self.rejected += 1
            if log_sampled(self.rejected):
                log.warning("rejected malformed message #%d: %s: %s", self.rejected, type(exc).__name__, exc)
            return None
