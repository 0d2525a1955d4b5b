"""Live figures: /metrics scraped and parsed, /healthz, the preview page in a real browser, systemd units."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anonstream.config import MetricsConfig, Settings, load_settings
from anonstream.demo import AstronautClip
from anonstream.errors import NotAnonymizedError
from anonstream.monitor import Monitor
from anonstream.process import Channel
from anonstream.stream.metrics import LATENCY_BUCKETS_S, Buckets, WorkerStats
from anonstream.stream.recorders import PreviewImage, PreviewRecorder
from anonstream.stream.transport import FrameSender
from anonstream.stream.wire import EndOfStream, Flag
from tests.conftest import face_detector, free_port, raw_frame, start_cli, wait_for
from tests.test_rtsp import rtsp_server

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (ConnectionError, urllib.error.URLError):
        return 0, b""


def _scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client's own parser: (name, labels) -> value."""
    code, body = _get(base + "metrics")
    assert code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), -1.0)


@contextmanager
def _notify_socket(path: Path) -> Iterator[list[str]]:
    """A socket where systemd would listen for sd_notify messages; yields what arrives."""
    received: list[str] = []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)

    def listen() -> None:
        while sock.fileno() >= 0:
            try:
                received.append(sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        sock.close()
        thread.join()


@contextmanager
def _browser() -> Iterator[Any]:
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "chromium is not installed: `make system-deps`"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,700"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _faces(image: np.ndarray) -> int:
    """Faces CenterFace finds confidently (score 0.5, the mask-strength measure of benchmarks/mask_strength.py):
    at its own low threshold it takes a head's outline for a face whatever fills it, a solid black box too."""
    return len(face_detector(video={"max_side": 0}, threshold=0.5).detect(image))


def test_a_realtime_run_is_scraped_watched_in_a_browser_and_its_figures_match_the_summary(tmp_path: Path) -> None:
    clip = AstronautClip(width=640, height=360, frames=240, fps=30)  # no plate: --detect faces, for speed
    source = clip.write(tmp_path / "astronaut.mp4")
    port, summary = free_port(), tmp_path / "summary.json"
    base = f"http://127.0.0.1:{port}/"
    args = ["run", str(source), "--record", str(tmp_path / "out"), "--realtime", "--summary-json", str(summary)]
    args += ["--metrics-port", str(port), "--set", "metrics.linger_s=120", "--detect", "faces", "--workers", "1"]
    with _notify_socket(tmp_path / "notify") as notices:
        env = os.environ | {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
        run = start_cli(*args, env=env)
        try:
            wait_for(lambda: _get(base + "healthz")[0] == 200, "a healthy pipeline")
            wait_for(lambda: _value(_scrape(base), "anonstream_frames_out_total", stream="astronaut") > 0, "frames")
            first = _scrape(base)
            counters = {
                "anonstream_frames_out_total": {},
                "anonstream_masks_total": {"class": "face"},
                "anonstream_latency_seconds_count": {"stage": "end_to_end"},
            }
            assert all(_value(first, name, stream="astronaut", **labels) > 0 for name, labels in counters.items())

            def grown() -> bool:
                now = _scrape(base)
                return all(
                    _value(now, name, stream="astronaut", **labels) > _value(first, name, stream="astronaut", **labels)
                    for name, labels in counters.items()
                )

            wait_for(grown, "every counter to grow as the run goes on", timeout=30)
            second = _scrape(base)
            assert _value(second, "anonstream_worker_info", worker="1", device="CPU") == 1
            assert _value(second, "anonstream_worker_inference_seconds_count", worker="1") > 0
            assert _value(second, "anonstream_stream_up", stream="astronaut") == 1

            with _browser() as browser:
                browser.get(base)
                image = browser.find_element("css selector", "figure img")
                wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", image) > 0, "a picture")
                wait_for(lambda: "fps" in browser.find_element("tag name", "body").text, "the figures filled in")
                ARTIFACTS.mkdir(exist_ok=True)
                browser.save_screenshot(str(ARTIFACTS / "preview-page.png"))
                shown = cv2.imdecode(np.frombuffer(image.screenshot_as_png, np.uint8), cv2.IMREAD_COLOR)
                page_text = browser.find_element("tag name", "body").text
            assert "astronaut" in page_text and "fps" in page_text
            assert shown.std() > 20  # a picture, not a blank box
            assert _faces(clip.frame(120, clip_photo())) == 1  # the detector sees the raw face at this scale
            assert _faces(shown) == 0  # and none in what the page shows: the face is masked

            wait_for(summary.exists, "the end of the run", timeout=120)
            final = _scrape(base)
        finally:
            run.send_signal(signal.SIGINT)  # ends the linger
            _, stderr = run.communicate(timeout=60)
        assert run.returncode == 0, stderr
        assert "READY=1\nSTATUS=running" in notices and "WATCHDOG=1" in notices, notices
    stream = json.loads(summary.read_text())["streams"][0]
    assert stream["frames_out"] > 0
    for name, expected in (
        ("anonstream_frames_in_total", stream["frames_in"]),
        ("anonstream_frames_out_total", stream["frames_out"]),
        ("anonstream_frames_lost_total", stream["lost"]),
        ("anonstream_frames_refused_total", stream["refused"]),
        ("anonstream_frames_full_masked_total", stream["full_masked"]),
        ("anonstream_outages_total", stream["outages"]),
    ):
        assert _value(final, name, stream="astronaut") == expected, name
    for stage, count in stream["dropped_by"].items():
        assert _value(final, "anonstream_frames_dropped_total", stream="astronaut", stage=stage) == count
    for label, count in stream["masks"].items():
        assert _value(final, "anonstream_masks_total", stream="astronaut", **{"class": label}) == count


@pytest.mark.parametrize(
    ("moment", "sig"),
    [
        ("starting", signal.SIGTERM),
        ("running", signal.SIGTERM),
        ("running", signal.SIGINT),
        ("lingering", signal.SIGINT),
    ],
)
def test_a_stop_request_ends_a_run_with_a_linger_promptly(tmp_path: Path, moment: str, sig: int) -> None:
    """metrics.linger_s keeps the final figures up after the sources end by themselves; a stop request
    (systemctl stop, Ctrl-C) at any moment means now: the process ends within seconds, cleanly."""
    frames = 30 if moment == "lingering" else 900  # 1 s of video, or 30 s that no stop request waits out
    source = AstronautClip(width=320, height=180, frames=frames, fps=30).write(tmp_path / "cam.mp4")
    port, summary = free_port(), tmp_path / "summary.json"
    base = f"http://127.0.0.1:{port}/"
    args = ["run", str(source), "--record", str(tmp_path / "out"), "--realtime", "--detect", "faces"]
    args += ["--metrics-port", str(port), "--set", "metrics.linger_s=600", "--summary-json", str(summary)]
    run = start_cli(*args)
    try:
        if moment == "starting":
            wait_for(lambda: _get(base + "healthz")[0] != 0, "the monitor up")
        elif moment == "running":
            wait_for(lambda: _get(base + "healthz")[0] == 200, "a healthy pipeline")
            wait_for(lambda: _value(_scrape(base), "anonstream_frames_out_total", stream="cam") > 0, "frames")
        else:
            wait_for(summary.exists, "the end of the sources")
        run.send_signal(sig)
        _, stderr = run.communicate(timeout=30)  # not the 600 s linger
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode in ((0, 130) if moment == "starting" else (0,)), stderr
    assert ("serving the final figures" in stderr) == (moment == "lingering"), stderr
    assert "Traceback" not in stderr and "leaked" not in stderr, stderr


def clip_photo() -> np.ndarray:
    from anonstream.demo import astronaut_bgr

    return astronaut_bgr()


def test_healthz_turns_503_while_the_camera_is_gone_and_200_when_it_is_back(tmp_path: Path) -> None:
    rtsp, port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}/"
    args = ["run", "--source", f"rtsp://127.0.0.1:{rtsp}/cam", "--record", str(tmp_path / "out"), "--workers", "1"]
    args += ["--metrics-port", str(port), "--detect", "faces"]
    for setting in ("stall_timeout_s=2", "open_timeout_s=2", "reconnect_min_s=0.2", "reconnect_max_s=1"):
        args += ["--set", f"capture.{setting}"]
    run = start_cli(*args)
    stream = f"127.0.0.1-{rtsp}-cam"

    def health() -> tuple[int, dict[str, Any]]:
        code, body = _get(base + "healthz")
        return code, json.loads(body) if body else {}

    try:
        with rtsp_server(rtsp):
            wait_for(lambda: health()[0] == 200, "health while the camera streams")
            assert health()[1]["streams"] == {stream: "up"}
        wait_for(lambda: health()[0] == 503, "503 once the camera is gone")
        _, body = health()
        assert body["status"] == "fault" and body["streams"] == {stream: "down"}, body
        assert any(fault.startswith(f"{stream}: no frame for") for fault in body["faults"]), body
        assert all(state == "running" for state in body["stages"].values()), body  # the stages are fine
        with rtsp_server(rtsp):
            wait_for(lambda: health()[0] == 200, "200 once the camera is back")
    finally:
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr


def test_the_preview_shows_anonymized_frames_only(tmp_path: Path) -> None:
    """A real record process with the preview on: a raw frame sent at it is refused, an anonymized one shown."""
    port, endpoint = free_port(), f"ipc://{tmp_path}/record"
    base = f"http://127.0.0.1:{port}/"
    record = start_cli("record", "--bind", endpoint, "--record-format", "null", "--metrics-port", str(port))
    raw = np.full((120, 160, 3), 30, np.uint8)  # stands for a face nobody masked
    masked = np.full((120, 160, 3), 220, np.uint8)
    try:
        wait_for(lambda: _get(base + "healthz")[0] != 0, "the record process's endpoints")
        with FrameSender().connect(endpoint) as sender:
            sender.send(raw_frame("cam", 0, raw))
            sender.send(raw_frame("cam", 1, masked, Flag.ANONYMIZED))
            sender.send(raw_frame("cam", 2, raw))
            wait_for(lambda: _value(_scrape(base), "anonstream_frames_refused_total", stream="cam") == 2, "refusals")
            code, jpeg = _get(base + "preview/cam.jpg")
            assert code == 200
            shown = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert shown.shape == masked.shape and abs(float(shown.mean()) - 220) < 3
            assert _value(_scrape(base), "anonstream_frames_out_total", stream="cam") == 1
            sender.send(EndOfStream("cam", 3))
    finally:
        record.send_signal(signal.SIGINT)
        _, stderr = record.communicate(timeout=60)
    assert stderr.count("is not anonymized; refused") == 2, stderr


def test_the_preview_recorder_refuses_a_raw_frame_itself() -> None:
    shown: list[PreviewImage] = []
    preview = PreviewRecorder("cam", fps=1000, max_side=64, publish=shown.append)
    with pytest.raises(NotAnonymizedError):
        preview.write(raw_frame("cam", 0, np.zeros((90, 160, 3), np.uint8)))
    assert shown == []
    preview.write(raw_frame("cam", 1, np.zeros((90, 160, 3), np.uint8), Flag.ANONYMIZED))
    decoded = cv2.imdecode(np.frombuffer(shown[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (36, 64, 3) and shown[0].seq == 1  # scaled down to its longest side


def test_publishing_never_waits_for_a_parent_that_does_not_read() -> None:
    """Live events go through a queue that gives way: a stage never stalls on a busy orchestrator."""
    import multiprocessing

    reader, writer = multiprocessing.Pipe(duplex=False)
    channel = Channel("record", writer)
    big = b"x" * 200_000  # far more than a pipe holds
    for seq in range(200):
        channel.publish(PreviewImage("cam", big, seq))  # would block here, were it sent in line
    seen = []
    deadline = time.monotonic() + 10
    while (not seen or seen[-1] != 199) and time.monotonic() < deadline:
        if reader.poll(0.5):
            seen.append(reader.recv().seq)
    assert seen[-1] == 199 and len(seen) < 200  # the newest arrives; older ones gave way


def test_a_restarted_worker_counts_on_from_its_last_life() -> None:
    monitor = Monitor(Settings())

    def stats(frames: int, inferences: int) -> WorkerStats:
        inference = Buckets(LATENCY_BUCKETS_S, (0,) * 5 + (inferences,) * 8, inferences, inferences * 0.03)
        batches = Buckets.of_values(Counter({1: inferences}), (1.0, 2.0))
        return WorkerStats("worker 1", 1, "CPU", {"frames": frames, "full_masked": 1}, inference, batches)

    monitor.stage_started("worker 1")
    monitor.accept(stats(100, 100))
    monitor.worker_restarted(1)
    monitor.stage_started("worker 1")  # as the orchestrator does, starting it again
    assert not monitor.health().stages_ok  # not reporting yet after its restart
    monitor.accept(stats(7, 7))
    families = {f.name: f for f in monitor.metrics()}
    samples = {(s.name, s.labels.get("le")): s.value for f in families.values() for s in f.samples}
    assert samples[("anonstream_worker_frames_total", None)] == 107
    assert samples[("anonstream_worker_full_masked_total", None)] == 2
    assert samples[("anonstream_worker_restarts_total", None)] == 1
    assert samples[("anonstream_worker_inference_seconds_count", None)] == 107
    assert samples[("anonstream_worker_inference_seconds_bucket", "0.025")] == 0
    assert samples[("anonstream_worker_inference_seconds_bucket", "0.05")] == 107
    assert monitor.health().stages_ok


def test_the_example_service_configs_load() -> None:
    configs = sorted(DEPLOY.glob("*.toml"))
    assert len(configs) >= 2, f"the example configs are missing from {DEPLOY}"
    for config in configs:
        settings = load_settings(config, [])
        assert settings.metrics.bind == MetricsConfig().bind, config  # none exposes the preview by default


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_service_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = sorted(DEPLOY.glob("*.service"))
    assert {unit.name for unit in units} >= {
        "anonstream.service",
        "anonstream-capture@.service",
        "anonstream-worker@.service",
        "anonstream-record.service",
    }
    executable = shutil.which("anonstream")
    assert executable is not None
    instances = []
    for unit in units:  # instance 1 of each template, with the command where this machine has it
        instance = tmp_path / unit.name.replace("@.service", "@1.service")
        instance.write_text(unit.read_text().replace("/usr/local/bin/anonstream", executable))
        instances.append(str(instance))
    check = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *instances], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr
    assert "anonstream" not in check.stderr, check.stderr  # no warning about our units either
