"""Roles on separate hosts: CurveZMQ keys on every TCP link, refused without them.

On loopback here; tests/test_namespaces.py runs the same roles in network namespaces.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from anonstream.demo import AstronautClip
from anonstream.stream.transport import FrameSender
from anonstream.stream.wire import EndOfStream, Flag
from tests.conftest import ErrorOutput, decode_video, free_port, raw_frame, run_cli, start_cli

ROLES = ("capture", "worker", "record")


@dataclass(frozen=True)
class Keyring:
    """A keypair per role, made by `anonstream keys`, and each role's allow folder."""

    folder: Path

    def secret(self, role: str) -> Path:
        return self.folder / f"{role}.key_secret"

    def public(self, role: str) -> Path:
        return self.folder / f"{role}.key"

    def allow(self, *roles: str) -> Path:
        folder = self.folder / ("allow-" + "-".join(roles))
        folder.mkdir(exist_ok=True)
        for role in roles:
            (folder / f"{role}.key").write_bytes(self.public(role).read_bytes())
        return folder

    def args(self, role: str, servers: dict[str, str] | None = None, allow: tuple[str, ...] = ()) -> list[str]:
        out = ["--secret-key", str(self.secret(role))]
        if allow:
            out += ["--allow", str(self.allow(*allow))]
        for endpoint, server in (servers or {}).items():
            out += ["--server-key", f"{endpoint}={self.public(server)}"]
        return out


def wait_listening(endpoint: str, timeout_s: float = 60) -> None:
    """Until a role has bound its TCP endpoint (it loads its modules first)."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
            return
        assert time.monotonic() < deadline, f"nothing listens on {endpoint}"
        time.sleep(0.2)


def make_keyring(folder: Path, roles: tuple[str, ...] = ROLES) -> Keyring:
    for role in roles:
        made = run_cli("keys", role, "--dir", str(folder))
        assert made.returncode == 0, made.stderr
    return Keyring(folder)


def test_keys_are_written_with_the_secret_readable_by_its_owner_only(tmp_path: Path) -> None:
    keys = make_keyring(tmp_path, ("worker-1",))
    assert stat.S_IMODE(keys.secret("worker-1").stat().st_mode) == 0o600
    assert b"public-key" in keys.public("worker-1").read_bytes()
    assert b"secret-key" not in keys.public("worker-1").read_bytes()
    again = run_cli("keys", "worker-1", "--dir", str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.parametrize("role", ROLES)
def test_a_tcp_endpoint_without_keys_is_refused_at_start_with_one_line(
    tmp_path: Path, role: str, clip_path: Path
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = {
        "capture": ["capture", "--source", str(clip_path), "--bind", endpoint],
        "worker": ["worker", "--input", endpoint, "--output", f"ipc://{tmp_path}/rec"],
        "record": ["record", "--bind", endpoint, "--record-format", "null"],
    }[role]
    result = run_cli(*args, timeout=60)
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "unencrypted" in error[0] and "--insecure-plaintext" in error[0], result.stderr


def test_a_secret_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    keys = make_keyring(tmp_path, ("record",))
    keys.secret("record").chmod(0o644)
    args = ["record", "--bind", f"tcp://127.0.0.1:{free_port()}", "--record-format", "null"]
    result = run_cli(*args, *keys.args("record", allow=("record",)), timeout=60)
    assert result.returncode == 2 and "chmod 600" in result.stderr


def test_each_role_on_its_own_over_encrypted_tcp(clip: AstronautClip, clip_path: Path, tmp_path: Path) -> None:
    keys = make_keyring(tmp_path / "keys")
    cap, rec = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    record = start_cli(
        "record", "--bind", rec, "--record", str(out), "--expect", "astronaut", *keys.args("record", allow=("worker",))
    )
    worker = start_cli("worker", "--input", cap, "--output", rec, *keys.args("worker", {cap: "capture", rec: "record"}))
    capture = start_cli("capture", "--source", str(clip_path), "--bind", cap, *keys.args("capture", allow=("worker",)))
    try:
        assert capture.wait(120) == 0, capture.stderr.read() if capture.stderr else ""
        record_out, record_err = record.communicate(timeout=120)
        assert record.returncode == 0, record_err
        assert "end to end" in record_out
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(30)
        for p in (record, capture):
            p.kill() if p.poll() is None else None
    assert worker.returncode == 0
    assert len(decode_video(out / "astronaut.mp4")[0]) == clip.frames


def test_senders_without_an_allowed_key_get_nothing_written_and_are_counted(tmp_path: Path) -> None:
    keys = make_keyring(tmp_path / "keys", ("record", "worker", "intruder"))
    rec = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    record = start_cli(
        "record", "--bind", rec, "--record", str(out), "--expect", "cam", *keys.args("record", allow=("worker",))
    )
    errors = ErrorOutput(record)
    frame = raw_frame("cam", 0, np.full((64, 64, 3), 200, np.uint8), Flag.ANONYMIZED)
    try:
        wait_listening(rec)
        from anonstream.config import SecurityConfig
        from anonstream.stream.keys import network_for

        # one with a key of its own that the record role does not allow, one with no keys at all
        intruder = SecurityConfig(secret_key=keys.secret("intruder"), servers={rec: keys.public("record")})
        with network_for(intruder) as network, network.sender(linger_ms=0).connect(rec) as sender:
            sender.send(frame, block=False)
            sender.send(EndOfStream("cam", frames=1), block=False)
            errors.wait_for("refused a client with a key not in security.allow")
        with FrameSender(linger_ms=0).connect(rec) as plain:
            plain.send(frame, block=False)
            plain.send(EndOfStream("cam", frames=1), block=False)
            errors.wait_for("failed the encrypted handshake")
    finally:
        record.send_signal(signal.SIGINT)
        _, stderr = errors.communicate(timeout=60)
    assert not out.exists() or not any(out.iterdir()), "a frame from an unknown sender was written"
    assert "refused a client with a key not in security.allow" in stderr, stderr
    assert "failed the encrypted handshake" in stderr, stderr


def test_a_restarted_record_role_goes_on_into_a_new_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for session in range(2):
        endpoint = f"ipc://{tmp_path}/rec-{session}"
        record = start_cli("record", "--bind", endpoint, "--record", str(out), "--expect", "cam")
        with FrameSender().connect(endpoint) as sender:
            for seq in range(3):
                pixels = np.full((32, 32, 3), 40 * session, np.uint8)
                frame = raw_frame("cam", seq, pixels, Flag.ANONYMIZED)
                frame.header.epoch = session + 1
                sender.send(frame)
            sender.send(EndOfStream("cam", frames=3, epoch=session + 1))
            _, stderr = record.communicate(timeout=60)
        assert record.returncode == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["cam-1.mp4", "cam.mp4"]
    assert [len(decode_video(out / name)[0]) for name in ("cam.mp4", "cam-1.mp4")] == [3, 3]


def test_insecure_plaintext_is_allowed_with_a_warning_at_start() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    record = start_cli("record", "--bind", endpoint, "--record-format", "null", "--insecure-plaintext")
    try:
        wait_listening(endpoint)
    finally:
        record.send_signal(signal.SIGINT)
        _, stderr = record.communicate(timeout=60)
    assert record.returncode == 0, stderr
    assert f"{endpoint} carries frames unencrypted and unauthenticated (--insecure-plaintext)" in stderr


class SlowHost:
    """A process on a host with a quarter of the CPU: stopped 3/4 of the time (SIGSTOP, SIGCONT), by a thread."""

    def __init__(self, pid: int, running_s: float = 0.01, stopped_s: float = 0.03) -> None:
        self.pid, self.running_s, self.stopped_s = pid, running_s, stopped_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            os.kill(self.pid, signal.SIGSTOP)
            time.sleep(self.stopped_s)
            os.kill(self.pid, signal.SIGCONT)
            time.sleep(self.running_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def test_a_worker_on_a_slow_host_gets_fewer_frames(tmp_path: Path) -> None:
    """Two real workers, one of them on a host with a quarter of the CPU: it asks for fewer frames, and gets them.

    Dealt round robin, each would get half (and the file would go at the slow host's pace).
    """
    clip = AstronautClip(width=640, height=360, frames=240, fps=30).write(tmp_path / "walk.mp4")
    cap, rec, out = f"ipc://{tmp_path}/cap", f"ipc://{tmp_path}/rec", tmp_path / "out"
    record = start_cli("record", "--bind", rec, "--record", str(out), "--expect", "walk")
    workers = [
        start_cli(
            "worker", "--number", n, "--input", cap, "--output", rec, "--detect", "faces", "--set", "runtime.threads=1"
        )
        for n in ("1", "2")
    ]
    outputs = [ErrorOutput(worker) for worker in workers]
    for output in outputs:
        output.wait_for("ready")  # both have loaded their model
    slow = SlowHost(workers[1].pid)
    try:
        result = run_cli("capture", "--source", str(clip), "--bind", cap)
        assert result.returncode == 0, result.stderr
        _, record_err = record.communicate(timeout=120)
        assert record.returncode == 0, record_err
    finally:
        slow.close()
        for process in (record, *workers):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        record.communicate(timeout=60)
        for output in outputs:
            output.communicate(timeout=60)
    taken = re.search(r"taken by worker: 1: (\d+), 2: (\d+)", result.stderr)
    assert taken, result.stderr
    fast_share, slow_share = (int(n) / 241 for n in taken.groups())  # 240 frames and the end of stream
    assert slow_share < 0.35 < fast_share, (fast_share, slow_share)
    assert len(decode_video(out / "walk.mp4")[0]) == 240  # every frame, once
