"""A real RTSP server on loopback that is late, goes away, and stalls: the stream comes back each time."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import accounted, decode_video, frame_log, free_port, run_cli, start_cli, wait_for

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # GStreamer's Python bindings come from Debian, not from pip


@contextmanager
def rtsp_server(port: int) -> Iterator[subprocess.Popen[str]]:
    check = subprocess.run([SYSTEM_PYTHON, str(SERVER), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, f"GStreamer's RTSP server is not installed (`make system-deps`): {check.stderr}"
    server = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield server
    finally:
        server.kill()
        server.wait()


@contextmanager
def anonstream_run(args: list[str]) -> Iterator[subprocess.Popen[str]]:
    """`anonstream run ARGS` in the background; killed if the test leaves before stopping it."""
    run = start_cli("run", *args)
    try:
        yield run
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


def _interrupt(run: subprocess.Popen[str]) -> str:
    """Ctrl-C, then its error output once it has exited."""
    run.send_signal(signal.SIGINT)
    return run.communicate(timeout=60)[1]


def _recorded(jsonl: Path) -> int:
    """Frames recorded so far (the JSONL also has a line per dropped frame and per run of lost ones)."""
    return jsonl.read_text().count('"stamps_ns"') if jsonl.exists() else 0


def test_rtsp_stream_comes_back_after_a_late_start_a_drop_and_a_stall(tmp_path: Path) -> None:
    port = free_port()
    out, jsonl, summary = tmp_path / "out", tmp_path / "frames.jsonl", tmp_path / "summary.json"
    args = ["--source", f"rtsp://127.0.0.1:{port}/cam", "--record", str(out), "--workers", "1"]
    args += ["--metrics-jsonl", str(jsonl), "--summary-json", str(summary)]
    for setting in ("stall_timeout_s=2", "open_timeout_s=2", "reconnect_min_s=0.2", "reconnect_max_s=1"):
        args += ["--set", f"capture.{setting}"]
    with anonstream_run(args) as run:
        time.sleep(2)  # anonstream is up before the camera: it keeps trying
        with rtsp_server(port):
            wait_for(lambda: _recorded(jsonl) >= 30, "the first frames")
        time.sleep(3)  # the server is gone: connection refused, retried with backoff
        with rtsp_server(port) as server:
            wait_for(lambda: _recorded(jsonl) >= 60, "frames after the server came back")
            server.send_signal(signal.SIGSTOP)  # a stall: the connection stays open, no frame comes
            time.sleep(4)
            server.send_signal(signal.SIGCONT)
            wait_for(lambda: _recorded(jsonl) >= 90, "frames after the stall")
        stderr = _interrupt(run)
    assert run.returncode == 0, stderr
    assert "reconnecting" in stderr and "back after" in stderr, stderr
    stream = json.loads(summary.read_text())["streams"][0]
    assert stream["outages"] == 2, stream
    assert stream["down_s"] > 4, stream  # at least 3 s down, then 2 s of stall before it counts
    assert stream["lost"] == stream["refused"] == 0
    # each outage starts a new segment instead of freezing one frame over the gap; all of them play
    stem = f"127.0.0.1-{port}-cam"
    segments = [out / f"{stem}.mp4", out / f"{stem}-1.mp4", out / f"{stem}-2.mp4"]
    assert sorted(out.iterdir()) == sorted(segments)
    for segment in segments:
        frames, _ = decode_video(segment)
        assert len(frames) >= 10, segment
    records = [r for r in frame_log(jsonl) if "seq" in r]  # frames recorded or dropped by a worker: a seq each
    assert [r["seq"] for r in records] == list(range(len(records)))  # in order, none missing


def test_a_stream_that_never_comes_up_is_given_up_when_asked(tmp_path: Path) -> None:
    source = f"rtsp://127.0.0.1:{free_port()}/cam"
    args = ["--source", source, "--record", str(tmp_path / "out"), "--set", "capture.give_up_s=2"]
    result = run_cli("run", *args, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("reconnecting in") >= 2  # it did try again, with backoff, before giving up
    assert "no frame for 2 s (capture.give_up_s), giving up" in result.stderr.splitlines()[-1]


def test_rtsp_over_udp(tmp_path: Path) -> None:
    """`capture.rtsp_transport = "udp"`: RTP over UDP instead of interleaved in the TCP connection."""
    port = free_port()
    out, jsonl = tmp_path / "out", tmp_path / "frames.jsonl"
    args = ["--source", f"rtsp://127.0.0.1:{port}/cam", "--record", str(out), "--workers", "1"]
    args += ["--metrics-jsonl", str(jsonl), "--set", "capture.rtsp_transport=udp"]
    with rtsp_server(port), anonstream_run(args) as run:
        wait_for(lambda: _recorded(jsonl) >= 30, "frames over UDP")
        stderr = _interrupt(run)
    assert run.returncode == 0, stderr
    frames, _ = decode_video(out / f"127.0.0.1-{port}-cam.mp4")
    assert len(frames) >= 30


def test_a_capture_killed_mid_stream_is_restarted_into_a_new_session_and_file(tmp_path: Path) -> None:
    port = free_port()
    out, jsonl, summary = tmp_path / "out", tmp_path / "frames.jsonl", tmp_path / "summary.json"
    source = f"rtsp://127.0.0.1:{port}/cam"
    args = ["--source", source, "--record", str(out), "--workers", "1"]
    args += ["--metrics-jsonl", str(jsonl), "--summary-json", str(summary)]
    with rtsp_server(port), anonstream_run(args) as run:
        wait_for(lambda: _recorded(jsonl) >= 30, "the first frames")
        killed = subprocess.run(["pkill", "-KILL", "-f", "anonstream: capture 127.0.0.1"], capture_output=True)
        assert killed.returncode == 0, "no capture process to kill"
        before = _recorded(jsonl)
        wait_for(lambda: _recorded(jsonl) >= before + 30, "frames from the restarted capture")
        stderr = _interrupt(run)
    assert run.returncode == 0, stderr
    assert "died (exit status -9); restarting it: a new session" in stderr, stderr
    stem = f"127.0.0.1-{port}-cam"
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}-1.mp4", f"{stem}.mp4"]
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    records = [r for r in lines if "stamps_ns" in r]  # recorded frames (the rest: drops by the worker)
    sessions = list(dict.fromkeys(r["epoch"] for r in records))
    assert len(sessions) == 2 and all(sessions), sessions
    for epoch in sessions:  # each session's frames in order from 0, none twice, none missing but the dropped
        seqs = sorted(
            [r["seq"] for r in records if r["epoch"] == epoch]
            + [r["seq"] for r in lines if r.get("dropped_by") == "worker" and r["epoch"] == epoch]
        )
        assert seqs == list(range(len(seqs))), seqs[:5]
    stream = json.loads(summary.read_text())["streams"][0]
    assert stream["lost"] == stream["refused"] == 0
    written = sum(len(decode_video(out / name)[0]) for name in (f"{stem}.mp4", f"{stem}-1.mp4"))
    assert written == stream["frames_out"] == len(records)
    counts = accounted(lines)  # both sessions' frames in, as many as were recorded, dropped or lost
    assert stream["frames_in"] == sum(counts.values()) == stream["frames_out"] + stream["dropped"], (stream, counts)


def test_a_camera_password_appears_nowhere_a_run_writes_or_shows(tmp_path: Path) -> None:
    import urllib.request

    port, metrics_port = free_port(), free_port()
    out, jsonl, summary = tmp_path / "out", tmp_path / "frames.jsonl", tmp_path / "summary.json"
    source = f"rtsp://admin:s3cretPassw0rd@127.0.0.1:{port}/cam?password=s3cretPassw0rd"
    args = ["--source", source, "--record", str(out), "--workers", "1", "--metrics-port", str(metrics_port)]
    args += ["--metrics-jsonl", str(jsonl), "--summary-json", str(summary), "-v"]
    args += ["--set", "capture.open_timeout_s=2", "--set", "capture.reconnect_min_s=0.2"]
    seen: list[str] = []
    with anonstream_run(args) as run, rtsp_server(port):
        wait_for(lambda: _recorded(jsonl) >= 20, "frames")
        seen.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
        for page in ("metrics", "api/status", "healthz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/{page}", timeout=5) as answer:
                seen.append(answer.read().decode())
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    assert "connected to rtsp://***@127.0.0.1" in stderr, stderr
    # and a camera that is not there: failed attempts and the final error, each with its reason
    gone = source.replace(str(port), str(free_port()))
    failed = run_cli("run", gone, "--record", str(tmp_path / "none"), "--set", "capture.give_up_s=2", timeout=120)
    assert failed.returncode == 1 and "reconnecting in" in failed.stderr and "rtsp://***@" in failed.stderr
    written = [stderr, stdout, jsonl.read_text(), summary.read_text(), *seen, *(p.name for p in out.iterdir())]
    written += [failed.stdout, failed.stderr]
    assert all(s for s in written)
    leaks = [text[:200] for text in written if "s3cretPassw0rd" in text or "admin:" in text]
    assert leaks == [], leaks
