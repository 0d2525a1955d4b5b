from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from anonstream.config import RecordConfig
from anonstream.errors import NotAnonymizedError, RecorderError, WireError
from anonstream.stream.recorders import ImageFolderRecorder, ImageRecorder, Mp4Recorder, NullRecorder, make_recorder
from anonstream.stream.wire import Flag, FrameHeader, FrameMessage, Stage, pixel_layout
from tests.conftest import decode_video


def message(
    seq: int, pixels: np.ndarray, flags: Flag = Flag.ANONYMIZED, name: str = "", pts: int | None = None
) -> FrameMessage:
    header = FrameHeader(
        "s",
        seq,
        seq,
        seq * 3 if pts is None else pts,
        (1, 90),
        (30, 1),
        tuple(pixels.shape),
        str(pixels.dtype),
        pixel_layout(pixels),
        flags,
        name=name,
    )
    return FrameMessage(header, pixels)


@pytest.mark.parametrize("recorder_kind", ["null", "mp4", "images", "image"])
def test_every_recorder_refuses_frames_not_anonymized(tmp_path: Path, recorder_kind: str) -> None:
    recorder = {
        "null": lambda: NullRecorder("s"),
        "mp4": lambda: Mp4Recorder("s", tmp_path / "s.mp4", RecordConfig()),
        "images": lambda: ImageFolderRecorder("s", tmp_path / "s", RecordConfig()),
        "image": lambda: ImageRecorder("s", tmp_path / "s" / "a.png", RecordConfig()),
    }[recorder_kind]()
    with recorder, pytest.raises(NotAnonymizedError):
        recorder.write(message(0, np.zeros((16, 16, 3), np.uint8), flags=Flag.NONE, name="a.png"))
    assert recorder.written == 0
    assert not (tmp_path / "s" / "a.png").exists()


def test_mp4_keeps_frame_rate_count_and_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "s.mp4"
    frames = [np.full((33, 47, 3), 10 * i, np.uint8) for i in range(10)]  # odd size: padded for yuv420p
    with Mp4Recorder("s", path, RecordConfig()) as recorder:
        for i, pixels in enumerate(frames):
            recorder.write(message(i, pixels))
    decoded, rate = decode_video(path)
    assert len(decoded) == 10 and rate == 30
    assert decoded[0].shape == (34, 48, 3)
    assert abs(int(decoded[5][10, 10, 0]) - 50) < 8
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [frame.time for frame in container.decode(stream)]
    assert sorted(times) == pytest.approx([i * 3 / 90 for i in range(10)], abs=1e-3)
    assert Fraction(30) == Fraction(rate)


def test_mp4_starts_a_new_segment_when_the_frame_size_changes(tmp_path: Path) -> None:
    with Mp4Recorder("s", tmp_path / "s.mp4", RecordConfig()) as recorder:
        for i in range(3):
            recorder.write(message(i, np.zeros((32, 32, 3), np.uint8)))
        for i in range(3, 5):
            recorder.write(message(i, np.zeros((48, 64, 3), np.uint8)))
    assert [p.name for p in recorder.paths] == ["s.mp4", "s-1.mp4"]
    assert len(decode_video(tmp_path / "s.mp4")[0]) == 3
    assert len(decode_video(tmp_path / "s-1.mp4")[0]) == 2


def test_mp4_append_keeps_an_earlier_runs_files_and_records_after_them(tmp_path: Path) -> None:
    with Mp4Recorder("s", tmp_path / "s.mp4", RecordConfig()) as first:
        for i in range(3):
            first.write(message(i, np.zeros((32, 32, 3), np.uint8)))
    earlier = (tmp_path / "s.mp4").read_bytes()
    with pytest.raises(RecorderError, match="already exists"):
        Mp4Recorder("s", tmp_path / "s.mp4", RecordConfig()).write(message(0, np.zeros((32, 32, 3), np.uint8)))
    with Mp4Recorder("s", tmp_path / "s.mp4", RecordConfig(append=True)) as again:
        for i in range(2):
            again.write(message(i, np.zeros((32, 32, 3), np.uint8)))
        again.write(message(2, np.zeros((48, 64, 3), np.uint8)))  # a new size: the next free number
    assert [p.name for p in again.paths] == ["s-1.mp4", "s-2.mp4"]
    assert (tmp_path / "s.mp4").read_bytes() == earlier
    assert [len(decode_video(tmp_path / name)[0]) for name in ("s.mp4", "s-1.mp4", "s-2.mp4")] == [3, 2, 1]


def test_mp4_segment_s_starts_a_new_file_every_so_many_seconds(tmp_path: Path) -> None:
    config = RecordConfig(segment_s=0.1)  # 3 frames at 30 fps
    taken_at = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
    with Mp4Recorder("s", tmp_path / "s.mp4", config) as recorder:
        for i in range(10):
            frame = message(i, np.full((32, 32, 3), 20 * i, np.uint8))
            frame.header.stamp(Stage.CAPTURED, taken_at + i * 200_000_000)
            recorder.write(frame)
    assert [p.name for p in recorder.paths] == ["s.mp4", "s-1.mp4", "s-2.mp4", "s-3.mp4"]
    counts = [len(decode_video(path)[0]) for path in recorder.paths]
    assert counts == [3, 3, 3, 1]
    import av

    with av.open(str(tmp_path / "s-2.mp4")) as container:  # each file starts at its own time 0
        times = [frame.time for frame in container.decode(container.streams.video[0])]
        created = container.metadata.get("creation_time")
    assert sorted(times) == pytest.approx([0, 1 / 30, 2 / 30], abs=1e-3)
    assert created == "2023-11-14T22:13:21.000000Z"  # the 7th frame, taken 1.2 s in (MP4 keeps seconds)


def test_record_config_refuses_overwrite_with_append() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        RecordConfig(overwrite=True, append=True)


def test_image_recorder_keeps_relative_names_and_formats(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    with ImageFolderRecorder("s", tmp_path / "out", RecordConfig()) as recorder:
        recorder.write(message(0, pixels, name="a/one.png"))
        recorder.write(message(1, pixels, name="two.jpg"))
    assert np.array_equal(cv2.imread(str(tmp_path / "out/a/one.png")), pixels)
    assert (tmp_path / "out/two.jpg").read_bytes()[:2] == b"\xff\xd8"


@pytest.mark.parametrize("name", ["../escape.png", "/etc/passwd.png", "a/../../b.png", "noext"])
def test_image_recorder_refuses_unsafe_names(tmp_path: Path, name: str) -> None:
    with ImageFolderRecorder("s", tmp_path / "out", RecordConfig()) as recorder, pytest.raises(WireError):
        recorder.write(message(0, np.zeros((4, 4, 3), np.uint8), name=name))
    assert not (tmp_path / "escape.png").exists()


def test_recorder_choice_follows_the_source() -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    config = RecordConfig(dir=Path("out"))
    assert isinstance(make_recorder("s", message(0, pixels, name="x.png").header, config), ImageFolderRecorder)
    assert isinstance(make_recorder("s", message(0, pixels).header, config), Mp4Recorder)
    null = RecordConfig(dir=Path("out"), format="null")
    assert isinstance(make_recorder("s", message(0, pixels).header, null), NullRecorder)
