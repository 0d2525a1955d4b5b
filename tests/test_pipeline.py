"""End to end through real processes: capture, worker pool, sequencer, recorders."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from anonstream.demo import ASTRONAUT_FACE, AstronautClip, astronaut_bgr
from tests.conftest import (
    ErrorOutput,
    accounted,
    anonstream_cmd,
    constant_model,
    decode_video,
    frame_log,
    free_port,
    playable_frames,
    run_cli,
    start_cli,
    wait_for,
)
from tests.test_detector import _small_face_scene, broken_model


def detail(image: np.ndarray) -> float:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(gray, cv2.CV_32F)).mean())


def assert_face_masked(raw: np.ndarray, out: np.ndarray, box: tuple[int, int, int, int], where: str) -> None:
    x1, y1, x2, y2 = box
    raw_face, out_face = raw[y1:y2, x1:x2], out[y1:y2, x1:x2]
    assert not np.array_equal(raw_face, out_face), f"{where}: face region equals the raw input"
    assert np.abs(raw_face.astype(int) - out_face.astype(int)).mean() > 8, f"{where}: face barely changed"
    assert detail(out_face) < 0.4 * detail(raw_face), f"{where}: facial detail survived"


def assert_recorded_frames_masked(
    clip: AstronautClip, source: Path, output: Path, recorded: list[dict[str, Any]]
) -> None:
    """The output holds exactly the frames its JSONL records, each with the source frame's face masked."""
    raw, _ = decode_video(source)
    anonymized, _ = decode_video(output)
    assert len(anonymized) == len(recorded)
    for record, after in zip(recorded, anonymized, strict=True):
        index = record["index"]
        assert_face_masked(raw[index], after, clip.face_box(index), f"frame {index}")


def test_video_in_mp4_out_every_frame_masked(clip: AstronautClip, clip_path: Path, tmp_path: Path) -> None:
    out, jsonl = tmp_path / "out", tmp_path / "metrics.jsonl"
    result = run_cli(
        "run", "--source", str(clip_path), "--record", str(out), "--workers", "2", "--metrics-jsonl", str(jsonl)
    )
    assert result.returncode == 0, result.stderr
    assert "end to end" in result.stdout
    raw, raw_rate = decode_video(clip_path)
    anonymized, rate = decode_video(out / "astronaut.mp4")
    assert len(anonymized) == len(raw) == clip.frames
    assert rate == raw_rate == clip.fps
    for index, (before, after) in enumerate(zip(raw, anonymized, strict=True)):
        assert_face_masked(before, after, clip.face_box(index), f"frame {index}")
        # Away from the face the picture is kept (up to encoding noise).
        assert np.abs(before[:20, -20:].astype(int) - after[:20, -20:].astype(int)).mean() < 4
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(clip.frames))
    assert all(all(v > 0 for v in r["stamps_ns"].values()) for r in records)
    assert all(r["detected"].get("face") and not r["full_mask"] for r in records)


def test_image_folder_in_same_names_out(clip: AstronautClip, tmp_path: Path) -> None:
    source = tmp_path / "photos"
    short = AstronautClip(width=320, height=240, frames=4)
    short.write_images(source / "day1", ".png")
    short.write_images(source / "day2", ".jpg")
    (source / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = run_cli("run", "--source", str(source), "--record", str(out), "--mask", "solid")
    assert result.returncode == 0, result.stderr
    names = sorted(p.relative_to(source) for p in source.rglob("*.*") if p.suffix != ".txt")
    written = sorted(p.relative_to(out / "photos") for p in (out / "photos").rglob("*") if p.is_file())
    assert written == names
    for name in names:
        raw, anonymized = cv2.imread(str(source / name)), cv2.imread(str(out / "photos" / name))
        index = int(name.stem.split("_")[1])
        x1, y1, x2, y2 = short.face_box(index)
        assert (anonymized[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2] < 30).all(), f"{name}: face not filled"
        assert raw.shape == anonymized.shape
    assert (out / "photos/day1/frame_0000.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("stills", [True, False])
def test_stills_are_scanned_at_high_resolution(tmp_path: Path, stills: bool) -> None:
    scene, face = _small_face_scene()
    source = tmp_path / "photos"
    source.mkdir()
    cv2.imwrite(str(source / "street.png"), scene)
    summary = tmp_path / "summary.json"
    args = ["--source", str(source), "--record", str(tmp_path / "out"), "--mask", "solid", "--max-side", "256"]
    args += ["--detect", "faces", "--summary-json", str(summary)] + (["--stills"] if stills else [])
    result = run_cli("run", *args)
    assert result.returncode == 0, result.stderr
    out = cv2.imread(str(tmp_path / "out/photos/street.png"))
    x1, y1, x2, y2 = (round(v) for v in face)
    # a 22 px face is lost in the 256 px whole-frame view; only --stills looks at it in high-resolution tiles
    assert (out[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2] == 0).all() == stills
    written = json.loads(summary.read_text())
    described = "faces (CenterFace): CPU, stills: whole at 256 px, all tiles of 512 px at 2x"
    # where the GPU build is installed, the device says why not the GPU: "CPU (no GPU: libcuda.so.1 ... not found)"
    assert re.sub(r"^(.*?: CPU) \(no GPU: .*?\), ", r"\1, ", written["workers"][0]).startswith(described)
    streams = written["streams"]
    assert [(s["stream"], s["frames_in"], s["frames_out"], s["dropped"]) for s in streams] == [("photos", 1, 1, 0)]
    assert set(streams[0]["latency_ms"]) >= {"detect", "end to end"}


def test_several_sources_at_once(clip_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "stills"
    AstronautClip(width=320, height=240, frames=3).write_images(folder)
    out = tmp_path / "out"
    result = run_cli(
        "run",
        "--source",
        str(clip_path),
        "--source",
        str(folder),
        "--source",
        str(clip_path),
        "--record",
        str(out),
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert len(decode_video(out / "astronaut.mp4")[0]) == len(decode_video(out / "astronaut-2.mp4")[0]) > 0
    assert len(list((out / "stills").glob("*.png"))) == 3


def test_fail_closed_when_detection_fails(clip: AstronautClip, clip_path: Path, tmp_path: Path) -> None:
    out, jsonl = tmp_path / "out", tmp_path / "m.jsonl"
    model = broken_model(tmp_path / "broken.onnx")
    result = run_cli(
        "run",
        "--source",
        str(clip_path),
        "--record",
        str(out),
        "--model",
        str(model),
        "--metrics-jsonl",
        str(jsonl),
        "--workers",
        "1",
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == clip.frames and all(r["full_mask"] for r in records)
    assert f"{clip.frames} full masked" in result.stdout
    raw, _ = decode_video(clip_path)
    anonymized, _ = decode_video(out / "astronaut.mp4")
    assert len(anonymized) == clip.frames
    for index, (before, after) in enumerate(zip(raw, anonymized, strict=True)):
        assert_face_masked(before, after, clip.face_box(index), f"frame {index}")
        assert detail(after) < 0.5 * detail(before)


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _titles(pids: set[int]) -> list[str]:
    titles = []
    for pid in pids:
        with contextlib.suppress(OSError):
            titles.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip())
    return titles


def _stage_pids(pid: int, role: str) -> list[int]:
    """The children of ``pid`` running one kind of stage ("worker", "record", "capture"), by process title."""
    return [child for child in _children(pid) if f"anonstream: {role}" in " ".join(_titles({child}))]


def _survivors(pids: set[int], grace_s: float = 5.0) -> list[int]:
    """The processes still alive after a short grace period: an orphan stays, one that is exiting goes."""
    deadline = time.monotonic() + grace_s
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.mark.parametrize(("sig", "group"), [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)])
def test_signal_mid_run_leaves_a_playable_file_and_no_process(tmp_path: Path, sig: int, group: bool) -> None:
    """SIGTERM or Ctrl-C to anonstream, or SIGTERM to its whole process group (as systemd and `timeout` stop it)."""
    long_clip = AstronautClip(width=320, height=180, frames=300, fps=30).write(tmp_path / "long.mp4")
    out = tmp_path / "out"
    process = start_cli(
        "run", "--source", str(long_clip), "--record", str(out), "--realtime", "--workers", "2", start_new_session=True
    )
    wait_for(lambda: playable_frames(out / "long.mp4") > 10, "a recording under way")
    children = _children(process.pid)
    titles = _titles(children)
    assert any("anonstream: worker 1" in t for t in titles), titles
    assert any("anonstream: capture long" in t for t in titles), titles
    assert any("anonstream: record" in t for t in titles), titles
    if group:
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=20)  # a stop request ends it in seconds (not capture.linger_s: 30)
    assert process.returncode == 0, stderr
    assert "exited with status" not in stderr, stderr
    frames, _ = decode_video(out / "long.mp4")
    with av.open(str(out / "long.mp4")) as container:  # the source's rate, whatever a busy machine dropped
        assert container.streams.video[0].base_rate == 30
    assert 10 < len(frames) < 300
    assert "end to end" in stdout
    leftovers = _survivors(children)
    assert not leftovers, _titles(set(leftovers))


def _tagged(tag: str) -> list[int]:
    """Processes whose environment carries ``ANONSTREAM_TEST_TAG=tag``: a run's own, wherever reparented."""
    marker = f"ANONSTREAM_TEST_TAG={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0") and _alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


@pytest.mark.parametrize("delay_s", [0.05, 0.3, 0.8, 1.5, 3.0])
def test_sigterm_at_any_moment_of_start_up_exits_cleanly(clip_path: Path, tmp_path: Path, delay_s: float) -> None:
    """From interpreter start to the first recorded frame: no traceback, no process and no socket folder left."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    tag = f"{os.getpid()}-{delay_s}"
    env = os.environ | {"XDG_RUNTIME_DIR": str(runtime), "ANONSTREAM_TEST_TAG": tag}
    process = start_cli("run", "--source", str(clip_path), "--record", str(tmp_path / "out"), "--realtime", env=env)
    time.sleep(delay_s)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    # 0: stopped and drained; 130: stopped before the pipeline began; -15: before the interpreter ran any of ours
    assert process.returncode in (0, 130, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr and "crashed" not in stderr, stderr
    deadline = time.monotonic() + 5
    while (leftovers := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leftovers, _titles(set(leftovers))
    assert not list(runtime.iterdir())


@pytest.mark.parametrize("format", ["mp4", "images"])
def test_a_full_disk_stops_the_run_with_one_clear_error(clip: AstronautClip, tmp_path: Path, format: str) -> None:
    """Output that cannot be written (here: /dev/full, which answers every write with ENOSPC) ends the run."""
    out = tmp_path / "out"
    if format == "mp4":
        source = clip.write(tmp_path / "cam.mp4")
        out.mkdir()
        (out / "cam.mp4").symlink_to("/dev/full")
    else:
        source = tmp_path / "cam"
        clip.write_images(source)
        (out / "cam").mkdir(parents=True)
        for name in ("frame_0000.png", "frame_0001.png"):
            (out / "cam" / name).symlink_to("/dev/full")
    tag = f"{os.getpid()}-{format}"
    env = os.environ | {"ANONSTREAM_TEST_TAG": tag}
    result = subprocess.run(
        anonstream_cmd("run", "--source", str(source), "--record", str(out), "--overwrite"),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "crashed" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    assert "anonstream: error" in last and ("No space left on device" in last or "disk full" in last), result.stderr
    assert not _tagged(tag)


def test_killed_recorder_leaves_a_playable_masked_file_and_no_process(tmp_path: Path) -> None:
    clip = AstronautClip(width=320, height=180, frames=900, fps=30)
    source = clip.write(tmp_path / "long.mp4")
    out = tmp_path / "out"
    process = start_cli("run", "--source", str(source), "--record", str(out), "--workers", "2")
    wait_for(lambda: playable_frames(out / "long.mp4") > 10, "a recording under way")
    children = _children(process.pid)
    recorders = _stage_pids(process.pid, "record")
    assert len(recorders) == 1
    os.kill(recorders[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr  # the run failed, and says so
    assert "record" in stderr.splitlines()[-1], stderr
    leftovers = _survivors(children)
    assert not leftovers, _titles(set(leftovers))
    # fragmented MP4: everything written before the kill plays, and every frame of it is masked
    raw, _ = decode_video(source)
    anonymized, _ = decode_video(out / "long.mp4")
    assert 10 < len(anonymized) < clip.frames
    for index in range(0, len(anonymized), 10):
        assert_face_masked(raw[index], anonymized[index], clip.face_box(index), f"frame {index}")


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = astronaut_bgr()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(photos / name), photo)
    (photos / "empty.png").write_bytes(b"")
    (photos / "garbage.png").write_bytes(b"\x89PNG not really" * 10)
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    result = run_cli("run", "--source", str(photos), "--record", str(out), "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "Traceback" not in result.stderr
    stream = json.loads(summary.read_text())["streams"][0]
    assert (stream["frames_out"], stream["skipped"]) == (2, 2)
    assert sorted(p.name for p in (out / "photos").iterdir()) == ["a.png", "b.png"]
    for name in ("a.png", "b.png"):
        assert_face_masked(photo, cv2.imread(str(out / "photos" / name)), ASTRONAUT_FACE, name)


def test_corrupt_packets_mid_video_are_skipped_and_counted(
    clip: AstronautClip, clip_path: Path, tmp_path: Path
) -> None:
    """Garbage written over the middle third of an MP4: the run goes on, what cannot be decoded is counted."""
    data = bytearray(clip_path.read_bytes())
    rng = np.random.default_rng(1)
    for at in range(len(data) // 3, 2 * len(data) // 3, 997):
        data[at : at + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    source = tmp_path / "corrupt.mp4"
    source.write_bytes(bytes(data))
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    result = run_cli("run", "--source", str(source), "--record", str(out), "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr
    assert "skipped an undecodable packet" in result.stderr and "Traceback" not in result.stderr
    stream = json.loads(summary.read_text())["streams"][0]
    assert stream["skipped"] >= 1 and stream["lost"] == stream["refused"] == 0
    assert stream["frames_out"] + stream["skipped"] <= clip.frames
    assert len(decode_video(out / "corrupt.mp4")[0]) == stream["frames_out"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "/nonexistent/video.mp4"], "does not exist"),
        (["--source", "{text}"], "cannot open video file"),
        (["--source", "{truncated}"], "cannot open video file"),
        (["--source", "{empty}"], "holds no images"),
        (["--source", "{clip}", "--set", "detectors.faces.threshhold=0.3"], "unknown key 'detectors.faces.threshhold'"),
        (["--source", "{clip}", "--detect", ","], "--detect: names no detector"),
        (["--source", "{clip}", "--detect", "faces,cars"], "unknown detector 'cars'; the configured ones are faces"),
        (["--source", "{clip}", "--set", "mask.by_class.car.mode=solid"], "unknown class 'car'"),
        (["--source", "{clip}", "--config", "{yolo_not_fitting}"], "detectors.mine: output [1, 84, 8400] fits neither"),
        (["--source", "{clip}", "--workers", "many"], "invalid int value"),
        (["--source", "{clip}", "--workers", "0"], "worker.count"),
        (["--source", "{clip}", "--mask", "smudge"], "invalid choice"),
        (["--source", "{clip}", "--max-side", "100"], "multiple of 32"),
        (["--source", "{clip}", "--config", "/nonexistent.toml"], "does not exist"),
        (["--source", "{clip}", "--model", "/nonexistent.onnx"], "does not exist"),
        (["--source", "/nonexistent/[cam 1].mp4"], "'/nonexistent/[cam 1].mp4'"),  # brackets are text, not markup
        (["--source", "{clip}", "--model", "{text}"], "not a readable ONNX model"),
        (["--source", "{clip}", "--device", "cuda"], "--device cuda was requested"),
        (["--source", "{clip}", "--record", "{text}/sub"], "cannot create output folder"),
        ([], "no source given"),
        (["--source", "x" * 300], "cannot be used"),
        (["--source", "{clip}", "--metrics-jsonl", "{empty}"], "give a file name in an existing folder"),
        (["--source", "rtsp://127.0.0.1:9/none", "--set", "capture.reconnect=false"], "cannot open stream"),
        (["--source", "/dev/video99"], "webcam '/dev/video99' cannot be opened"),
    ],
)
def test_bad_input_is_one_clear_line(clip_path: Path, tmp_path: Path, args: list[str], message: str) -> None:
    import onnxruntime as ort

    if "--device" in args and "CUDAExecutionProvider" in ort.get_available_providers():
        from anonstream.config import CenterFaceConfig, RuntimeConfig
        from anonstream.errors import DeviceError
        from anonstream.workers.detectors.centerface import CenterFace

        try:
            CenterFace("faces", CenterFaceConfig(), RuntimeConfig(device="cuda"), threads=1)
            pytest.skip("CUDA works on this machine")
        except DeviceError:
            pass
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = tmp_path / "truncated.mp4"  # cut in half: the index at its end is gone
    truncated.write_bytes(clip_path.read_bytes()[: clip_path.stat().st_size // 2])
    yolo = tmp_path / "yolo.toml"  # a YOLOv8 export for 80 classes, configured with labels for 2
    model = constant_model(tmp_path / "yolo.onnx", np.zeros((1, 84, 8400), np.float32))
    yolo.write_text(f'detect = ["mine"]\n[detectors.mine]\nfamily = "yolo"\nmodel = "{model}"\nlabels = ["a", "b"]\n')
    fill = {"{clip}": str(clip_path), "{text}": str(text), "{empty}": str(empty), "{truncated}": str(truncated)}
    fill["{yolo_not_fitting}"] = str(yolo)
    args = [next((a.replace(k, v) for k, v in fill.items() if k in a), a) for a in args]
    if "--record" not in args:
        args += ["--record", str(tmp_path / "out")]
    result = run_cli("run", *args, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert message in " ".join(lines), result.stderr
    assert len([line for line in lines if "error" in line.lower()]) == 1, result.stderr
    assert "[ WARN" not in result.stderr  # none of OpenCV's own lines
    if "rtsp" not in " ".join(args):  # a network stream may come up later: only it is tried after the workers start
        assert "worker(s) ready" not in result.stderr


def test_readme_demo_command(tmp_path: Path) -> None:
    result = run_cli("demo", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    clip = AstronautClip(frames=90, plate=True)
    raw, _ = decode_video(tmp_path / "demo/astronaut.mp4")
    anonymized, _ = decode_video(tmp_path / "demo/anonymized/astronaut.mp4")
    assert len(raw) == len(anonymized) == clip.frames
    for index in (0, 45, 89):
        assert_face_masked(raw[index], anonymized[index], clip.face_box(index), f"frame {index}")
        assert_face_masked(raw[index], anonymized[index], clip.plate_box(index), f"plate in frame {index}")


def test_killed_worker_is_restarted_and_nothing_leaks(tmp_path: Path) -> None:
    """Every frame is recorded, dropped (by the capture or a worker) or counted lost: none goes unaccounted."""
    clip = AstronautClip(width=320, height=180, frames=240, fps=30)
    source = clip.write(tmp_path / "long.mp4")
    out, jsonl, summary = tmp_path / "out", tmp_path / "m.jsonl", tmp_path / "summary.json"
    args = ["--source", str(source), "--record", str(out), "--realtime", "--workers", "2"]
    args += ["--metrics-jsonl", str(jsonl), "--summary-json", str(summary), "--set", "sequencer.loss_timeout_s=1"]
    process = start_cli("run", *args)
    wait_for(lambda: accounted(frame_log(jsonl))["recorded"] >= 20, "frames recorded by both workers")
    victims = _stage_pids(process.pid, "worker")
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    wait_for(lambda: len(set(_stage_pids(process.pid, "worker")) - {victims[0]}) == 2, "the dead worker's successor")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "died" in stderr and "restarting" in stderr
    assert "1 worker restart(s)" in stdout
    records = frame_log(jsonl)
    counts = accounted(records)
    assert sum(counts.values()) == clip.frames, counts
    stream = json.loads(summary.read_text())["streams"][0]
    assert stream["frames_in"] == clip.frames and stream["frames_out"] == counts["recorded"], (stream, counts)
    assert stream["lost"] == counts["lost"], (stream, counts)
    assert stream["dropped_by"] == {"capture": counts["dropped by capture"], "worker": counts["dropped by worker"]}
    recorded = [r for r in records if "stamps_ns" in r]
    assert recorded[0]["index"] == 0
    assert_recorded_frames_masked(clip, source, out / "long.mp4", recorded)


def _slow_and_quick_photos(folder: Path, slow: int, quick: int) -> list[str]:
    """Photos of 1600 px (seconds each with --stills on this CPU) then small ones; their names in order."""
    folder.mkdir()
    big = cv2.resize(astronaut_bgr(), (1600, 1600))
    names = []
    for index in range(slow + quick):
        name = f"{index:03d}.png"
        cv2.imwrite(str(folder / name), big if index < slow else astronaut_bgr()[::4, ::4])
        names.append(name)
    return names


def test_a_slow_photo_is_never_lost_for_being_slow(tmp_path: Path) -> None:
    """Photos that take a worker far longer than the loss timeout, and than the capture lingers once it has
    read them all, still reach the output, in order."""
    photos = tmp_path / "photos"
    names = _slow_and_quick_photos(photos, slow=3, quick=6)
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    args = ["--source", str(photos), "--record", str(out), "--stills", "--detect", "faces", "--workers", "2"]
    args += ["--summary-json", str(summary), "--set", "sequencer.loss_timeout_s=0.2", "--set", "capture.linger_s=0.2"]
    args += ["--set", "transport.credits=1"]  # frames wait in the capture for a worker to ask for them
    result = run_cli("run", *args)
    assert result.returncode == 0, result.stderr
    stream = json.loads(summary.read_text())["streams"][0]
    assert (stream["frames_out"], stream["lost"]) == (9, 0), result.stderr
    assert sorted(p.name for p in (out / "photos").iterdir()) == names


def test_photos_a_killed_worker_held_go_to_another_and_none_is_lost(tmp_path: Path) -> None:
    """A worker is killed while it holds photos: its capture sends them again to a worker that lives
    (the other one, or its restarted self), and every photo comes out, once."""
    photos = tmp_path / "photos"
    names = _slow_and_quick_photos(photos, slow=6, quick=0)
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    args = ["--source", str(photos), "--record", str(out), "--stills", "--detect", "faces", "--summary-json"]
    process = start_cli("run", *args, str(summary))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "photos").is_dir():
        time.sleep(0.1)
    workers = _stage_pids(process.pid, "worker")
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "go to another worker" in stderr, stderr
    assert sorted(p.name for p in (out / "photos").iterdir()) == names
    stream = json.loads(summary.read_text())["streams"][0]
    assert (stream["frames_out"], stream["lost"]) == (6, 0), stderr


def test_workers_behind_a_live_stream_drop_its_oldest_frames_and_count_them(tmp_path: Path) -> None:
    """A 720p camera at 30 fps, one worker at full resolution (a few fps): it keeps up by dropping, not queueing."""
    clip = AstronautClip(width=1280, height=720, frames=60, fps=30)
    source = clip.write(tmp_path / "cam.mp4")
    out, jsonl, summary = tmp_path / "out", tmp_path / "m.jsonl", tmp_path / "summary.json"
    result = run_cli(
        *("run", "--source", str(source), "--record", str(out), "--realtime", "--workers", "1", "--max-side", "0"),
        *("--metrics-jsonl", str(jsonl), "--summary-json", str(summary), "--set", "runtime.threads=1"),
    )
    assert result.returncode == 0, result.stderr
    (stream,) = json.loads(summary.read_text())["streams"]
    assert stream["dropped_by"]["worker"] > 0
    assert stream["dropped"] == sum(stream["dropped_by"].values())
    assert stream["lost"] == 0  # announced drops are not waited for, nor lost
    assert stream["frames_in"] == stream["frames_out"] + stream["dropped"] == clip.frames
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    recorded = [r for r in records if "stamps_ns" in r]
    assert [r["seq"] for r in recorded] == sorted(r["seq"] for r in recorded)
    assert recorded[-1]["index"] == clip.frames - 1  # the newest frame is never the one dropped
    assert_recorded_frames_masked(clip, source, out / "cam.mp4", recorded)


def test_record_process_refuses_raw_frames_sent_to_it(tmp_path: Path) -> None:
    from anonstream.stream.transport import FrameSender
    from anonstream.stream.wire import EndOfStream, Flag, FrameHeader, FrameMessage, Stage

    port = free_port()
    out = tmp_path / "out"
    # --insecure-plaintext: a sender that got past the keys, or a lab network without them; the guard is the recorder's
    record = start_cli(
        "record", "--bind", f"tcp://127.0.0.1:{port}", "--record", str(out), "--expect", "cam", "--insecure-plaintext"
    )
    raw = np.random.default_rng(3).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    with FrameSender().connect(f"tcp://127.0.0.1:{port}") as sender:
        for seq in range(3):
            flags = Flag.NONE if seq == 1 else Flag.ANONYMIZED
            header = FrameHeader("cam", seq, seq, seq, (1, 30), (30, 1), raw.shape, "uint8", "bgr", flags)
            header.stamp(Stage.CAPTURED)
            sender.send(FrameMessage(header, np.zeros_like(raw) if flags else raw))
        sender.send(EndOfStream("cam", frames=3))
        stdout, stderr = record.communicate(timeout=60)
    assert record.returncode == 1, stderr
    assert "not anonymized; refused" in stderr
    frames, _ = decode_video(out / "cam.mp4")
    assert len(frames) == 2 and all(f.max() < 20 for f in frames)
    # stream, in, out, dropped, lost, skipped, refused
    assert re.search(r"cam\s+│\s+3\s+│\s+2\s+│\s+0\s+│\s+0\s+│\s+0\s+│\s+1\s+│", stdout), stdout


def test_record_process_caps_the_streams_a_stray_sender_can_open() -> None:
    from anonstream.stream.transport import MAX_STREAMS, FrameSender
    from anonstream.stream.wire import Flag, FrameHeader, FrameMessage

    port = free_port()
    record = start_cli("record", "--bind", f"tcp://127.0.0.1:{port}", "--record-format", "null", "--insecure-plaintext")
    errors = ErrorOutput(record)
    pixels = np.zeros((8, 8, 3), np.uint8)
    extra = 20
    with FrameSender().connect(f"tcp://127.0.0.1:{port}") as sender:
        # seq 1 of each stream: it waits for a seq 0 that never comes, so the stream is never released.
        for n in range(MAX_STREAMS + extra):
            header = FrameHeader(f"s{n}", 1, 1, 1, (1, 30), (30, 1), pixels.shape, "uint8", "bgr", Flag.ANONYMIZED)
            sender.send(FrameMessage(header, pixels))
        sender.socket.send(b"the last message")  # malformed, said in the log: everything before it has arrived
        errors.wait_for("rejected malformed message #1")
    record.send_signal(signal.SIGINT)
    stdout, stderr = errors.communicate(timeout=60)
    assert record.returncode == 0, stderr
    assert f"{extra + 1} rejected" in stdout, stdout[-500:]


def test_without_a_terminal_each_stream_logs_status_lines(tmp_path: Path) -> None:
    """Under systemd or a pipe: a line per stream every --status-interval, with the rate, drops and p99."""
    clip = AstronautClip(width=320, height=180, frames=90, fps=30)
    source = clip.write(tmp_path / "street.mp4")
    args = ["--record", str(tmp_path / "out"), "--realtime", "--detect", "faces", "--status-interval", "1"]
    result = run_cli("run", str(source), *args)
    assert result.returncode == 0, result.stderr
    lines = re.findall(
        r"street: (\d+) frames \(\+(\d+)\), ([\d.]+) fps, dropped \+\d+, lost \+0, p99 (\d+) ms over 1 s",
        result.stderr,
    )
    assert len(lines) >= 2, result.stderr
    assert all(int(added) > 0 and float(fps) > 0 and int(p99) > 0 for _, added, fps, p99 in lines)
    assert [int(total) for total, *_ in lines] == sorted(int(total) for total, *_ in lines)


def test_the_frame_log_reaches_the_file_while_the_run_goes_on(tmp_path: Path) -> None:
    """`tail -f` on --metrics-jsonl: records show within about a second, not once a dozen fill a buffer."""
    clip = AstronautClip(width=320, height=180, frames=24, fps=3)
    source = clip.write(tmp_path / "slow.mp4")
    jsonl = tmp_path / "frames.jsonl"
    args = ["--record", str(tmp_path / "out"), "--realtime", "--detect", "faces", "--metrics-jsonl", str(jsonl)]
    process = start_cli("run", str(source), *args)
    first_seen = 0  # complete records in the file when it first holds one
    while process.poll() is None and not first_seen:
        first_seen = jsonl.read_text(encoding="utf-8").count("\n") if jsonl.exists() else 0
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert len(jsonl.read_text(encoding="utf-8").splitlines()) == clip.frames
    # 3 frames a second: a second's worth, or a few more where the workers started late; an 8 KiB buffer holds 12
    assert 0 < first_seen <= 8, first_seen


def test_a_frame_log_kept_on_for_days_is_sampled_and_rotated(tmp_path: Path) -> None:
    """metrics.jsonl_every keeps one frame in N; past metrics.jsonl_max_mb the file becomes FILE.1 and starts again."""
    clip = AstronautClip(width=320, height=180, frames=60, fps=30)
    source = clip.write(tmp_path / "long.mp4")
    jsonl = tmp_path / "frames.jsonl"
    args = ["--record", str(tmp_path / "out"), "--detect", "faces", "--metrics-jsonl", str(jsonl)]
    args += ["--set", "metrics.jsonl_every=3", "--set", "metrics.jsonl_max_mb=0.004"]
    result = run_cli("run", str(source), *args)
    assert result.returncode == 0, result.stderr
    older, newer = (Path(f"{jsonl}{suffix}").read_text(encoding="utf-8") for suffix in (".1", ""))
    seqs = [json.loads(line)["seq"] for text in (older, newer) for line in text.splitlines()]
    assert all(len(text.encode()) <= 4000 for text in (older, newer))
    # the newest records, one frame in three, in order: the rotations before FILE.1 are gone, nothing else is
    assert seqs == list(range(57 - 3 * (len(seqs) - 1), 60, 3)), seqs
    assert len(seqs) >= 4


def test_a_camera_never_reached_says_so_and_fails(tmp_path: Path) -> None:
    """Not a table of zeros: the summary says the stream never connected, and the exit status is not 0."""
    url = f"rtsp://viewer:secret@127.0.0.1:{free_port()}/front"
    process = start_cli("run", url, "--record", str(tmp_path / "out"), "--detect", "faces")
    errors = ErrorOutput(process)
    errors.wait_for("reconnecting in")  # it tried, and goes on trying
    process.send_signal(signal.SIGINT)
    stdout, stderr = errors.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert "never connected" in stdout and "end to end" not in stdout
    assert "never connected to rtsp://***@127.0.0.1" in stderr
    assert "secret" not in stdout + stderr
