"""systemd's notify protocol, for ``Type=notify`` units: ready once running, a watchdog ping while healthy.

A datagram to $NOTIFY_SOCKET, as sd_notify(3) sends it; without that variable (not run by systemd) every
call does nothing. With ``WatchdogSec=`` set, systemd restarts the service when the pings stop.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address  # "@": an abstract socket
        watchdog_pid = environ.get("WATCHDOG_PID")
        usec = environ.get("WATCHDOG_USEC", "")
        mine = watchdog_pid is None or watchdog_pid == str(os.getpid())
        self._interval_s = int(usec) / 2e6 if usec.isdigit() and mine else None  # ping twice per timeout
        self._pinged = float("-inf")
        self._ready = False

    def _send(self, text: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(text.encode(), self._address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self._address.lstrip("\0"), exc.strerror)

    def running(self, now: float, healthy: bool) -> None:
        """Called on every turn of the supervisor (``now``: monotonic s): READY=1 once, then WATCHDOG=1."""
        if not self._ready:
            self._ready = True
            self._send("READY=1\nSTATUS=running")
        if healthy and self._interval_s is not None and now - self._pinged >= self._interval_s:
            self._pinged = now
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")
