"""Roles on three "hosts": network namespaces joined by veth pairs to a bridge, with real keys.

A raw packet socket on the capture host's link sees every byte it sends: with CurveZMQ on,
no run of a frame's pixels; with --insecure-plaintext (the control that shows the check can
fail), most of them. Needs root and iproute2 (CI runs as root); skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from anonstream.demo import AstronautClip
from tests.conftest import accounted, anonstream_cmd, decode_video, frame_log, wait_for
from tests.test_hosts import make_keyring

HOSTS = ("cap", "wrk", "rec")
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
PORTS = {"cap": 5555, "rec": 5600}


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"anonprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=True)
    return None


SKIP = _can_make_namespaces()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Hosts:
    tag: str
    names: tuple[str, ...] = HOSTS

    def ns(self, host: str) -> str:
        return f"an{self.tag}{host}"

    def link(self, host: str) -> str:
        """The host's cable, seen from the switch: what a packet capture listens on."""
        return f"an{self.tag}{host}"

    def address(self, host: str) -> str:
        return f"10.77.{int(self.tag, 16) % 200}.{self.names.index(host) + 1}"

    def endpoint(self, host: str) -> str:
        return f"tcp://{self.address(host)}:{PORTS[host]}"

    def start(self, host: str, *args: str) -> subprocess.Popen[str]:
        command = ["ip", "netns", "exec", self.ns(host), *anonstream_cmd(*args)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def _network(names: tuple[str, ...]) -> Iterator[Hosts]:
    """One namespace per host, each with a veth cable to a bridge (the switch) in the root namespace."""
    tag = uuid.uuid4().hex[:4]
    made = Hosts(tag, names)
    bridge = f"anbr{tag}"
    _ip("link", "add", bridge, "type", "bridge")
    _ip("link", "set", bridge, "up")
    try:
        for host in names:
            ns, outside = made.ns(host), made.link(host)
            _ip("netns", "add", ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", outside, "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{made.address(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield made
    finally:
        for host in names:
            subprocess.run(["ip", "netns", "del", made.ns(host)], capture_output=True)
            subprocess.run(["ip", "link", "del", made.link(host)], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    with _network(HOSTS) as made:
        yield made


class Sniffer:
    """Every byte that crosses one link, as a raw packet socket sees it."""

    def __init__(self, interface: str) -> None:
        self.socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.socket.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)  # root may: keep up with a burst
        self.socket.bind((interface, 0))
        self.socket.settimeout(0.2)
        self.packets: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.packets.append(self.socket.recv(65536))
            except TimeoutError:
                continue

    def stop(self) -> bytes:
        self._stop.set()
        self._thread.join()
        self.socket.close()
        return b"".join(self.packets)


def _pixel_runs(frames: list[np.ndarray], count: int = 60, length: int = 24) -> list[bytes]:
    """Runs of a frame's bytes that do not repeat (textured parts of the photo), to look for on the wire."""
    rng = np.random.default_rng(7)
    runs: list[bytes] = []
    while len(runs) < count:
        frame = frames[int(rng.integers(len(frames)))]
        flat = frame.tobytes()
        start = int(rng.integers(len(flat) - length))
        run = flat[start : start + length]
        if len(set(run)) > length // 2:  # not a flat background
            runs.append(run)
    return runs


def _run_three_hosts(hosts: Hosts, clip_path: Path, tmp: Path, security: dict[str, list[str]]) -> tuple[bytes, Path]:
    out = tmp / "out"
    cap, rec = hosts.endpoint("cap"), hosts.endpoint("rec")
    # each role binds the address of its own host: what it binds is reachable on its link only
    record = hosts.start(
        "rec", "record", "--bind", rec, "--record", str(out), "--expect", "astronaut", *security["rec"]
    )
    worker = hosts.start("wrk", "worker", "--input", cap, "--output", rec, *security["wrk"])
    sniffer = Sniffer(hosts.link("cap"))
    capture = hosts.start("cap", "capture", "--source", str(clip_path), "--bind", cap, *security["cap"])
    try:
        assert capture.wait(180) == 0, capture.communicate()[1]
        _, record_err = record.communicate(timeout=180)
        assert record.returncode == 0, record_err
    finally:
        wire = sniffer.stop()
        worker.send_signal(signal.SIGINT)
        worker.wait(30)
        for process in (record, capture, worker):
            if process.poll() is None:
                process.kill()
    return wire, out


def test_across_hosts_the_link_carries_no_pixels_with_keys_and_does_without(
    hosts: Hosts, clip: AstronautClip, clip_path: Path, tmp_path: Path
) -> None:
    keys = make_keyring(tmp_path / "keys")
    cap, rec = hosts.endpoint("cap"), hosts.endpoint("rec")
    secure = {
        "cap": keys.args("capture", allow=("worker",)),
        "wrk": keys.args("worker", {cap: "capture", rec: "record"}),
        "rec": keys.args("record", allow=("worker",)),
    }
    raw, _ = decode_video(clip_path)
    runs = _pixel_runs(raw)

    wire, out = _run_three_hosts(hosts, clip_path, tmp_path / "secure", secure)
    assert len(wire) > sum(f.nbytes for f in raw) // 2, "the capture did not see the frames go by"
    seen = [run for run in runs if run in wire]
    assert seen == [], f"{len(seen)} of {len(runs)} pixel runs crossed the link in clear"
    assert len(decode_video(out / "astronaut.mp4")[0]) == clip.frames

    plain = {host: ["--insecure-plaintext"] for host in HOSTS}
    wire, out = _run_three_hosts(hosts, clip_path, tmp_path / "plain", plain)
    seen = [run for run in runs if run in wire]
    assert len(seen) > len(runs) // 2, "the control failed: without keys the pixels should be visible"
    assert len(decode_video(out / "astronaut.mp4")[0]) == clip.frames


def test_a_worker_host_cut_off_mid_stream_costs_no_frame_uncounted_and_none_twice(tmp_path: Path) -> None:
    """Two worker hosts; each one's cable is pulled in turn (`ip link set down`) and put back.

    Nothing is written twice, and every frame the capture sent is recorded, dropped or counted
    lost. While a cable is out, the cut-off worker holds at most its credits, and the other worker
    takes the stream: frames are recorded all along. wk2, cut first, carries the stream alone while
    wk1 is cut: it rejoined once its cable was back.
    """
    keys = make_keyring(tmp_path / "keys", ("capture", "wk1", "wk2", "record"))
    clip = AstronautClip(width=320, height=240, frames=480, fps=30).write(tmp_path / "walk.mp4")
    out, jsonl = tmp_path / "out", tmp_path / "frames.jsonl"
    with _network(("cap", "wk1", "wk2", "rec")) as hosts:
        cap, rec = hosts.endpoint("cap"), hosts.endpoint("rec")
        record = hosts.start(
            "rec",
            "record",
            "--bind",
            rec,
            "--record",
            str(out),
            "--expect",
            "walk",
            "--metrics-jsonl",
            str(jsonl),
            *keys.args("record", allow=("wk1", "wk2")),
        )
        workers = [
            hosts.start(
                name,
                "worker",
                "--number",
                str(n),
                "--input",
                cap,
                "--output",
                rec,
                "--detect",
                "faces",
                *keys.args(name, {cap: "capture", rec: "record"}),
            )
            for n, name in ((1, "wk1"), (2, "wk2"))
        ]
        capture = hosts.start(
            "cap",
            "capture",
            "--source",
            str(clip),
            "--bind",
            cap,
            "--realtime",
            "--set",
            "capture.linger_s=2",
            *keys.args("capture", allow=("wk1", "wk2")),
        )
        windows = []
        try:
            wait_for(lambda: accounted(frame_log(jsonl))["recorded"] >= 30, "the workers up and the clip playing")
            for name in ("wk2", "wk1"):
                _ip("link", "set", hosts.link(name), "down")
                down = time.time_ns()
                time.sleep(3)
                windows.append((down + 1_000_000_000, time.time_ns()))  # after what was already on its way
                _ip("link", "set", hosts.link(name), "up")
                time.sleep(2)
            assert capture.wait(120) == 0, capture.communicate()[1]
            _, capture_err = capture.communicate()
            _, record_err = record.communicate(timeout=120)
            assert record.returncode == 0, record_err
        finally:
            for process in (capture, record, *workers):
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
            for process in (capture, record, *workers):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(30)
                if process.poll() is None:
                    process.kill()
    sent_and_dropped = re.search(r"(\d+) frames sent, (\d+) dropped", capture_err)
    assert sent_and_dropped is not None, capture_err
    read = [int(n) for n in sent_and_dropped.groups()]
    lines = frame_log(jsonl)
    recorded = [r for r in lines if "stamps_ns" in r]
    counts = accounted(lines)
    assert counts["dropped by capture"] == read[1], (counts, read)
    assert sum(counts.values()) == sum(read), (counts, read)
    assert len({r["seq"] for r in recorded}) == len(recorded)  # none written twice
    assert len(decode_video(out / "walk.mp4")[0]) == len(recorded)
    # While one worker was cut off, the other one's frames reached the recording. (Dealt round robin, they
    # did not: every other frame went into the cut-off worker's socket, and the record side held the rest
    # behind each of those gaps for sequencer.loss_timeout_s.) 2 s of a 30 fps clip: 60 frames at most.
    during = [sum(start <= r["stamps_ns"]["recorded"] <= end for r in recorded) for start, end in windows]
    assert min(during) > 0, f"frames recorded while a worker was cut off: {during}"
