"""The Python API: the pipeline's own parts in the caller's process, agreeing with the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import anonstream
from anonstream import AnonstreamError, Anonymizer
from anonstream.demo import ASTRONAUT_FACE, AstronautClip, astronaut_bgr
from tests.conftest import decode_video, run_cli
from tests.test_detector import nan_model
from tests.test_files import clip_with_audio
from tests.test_pipeline import assert_face_masked


@pytest.fixture(scope="module")
def anonymizer() -> anonstream.Anonymizer:
    with Anonymizer(threads=2) as loaded:
        yield loaded


def test_an_image_through_the_api_and_through_the_cli_gives_the_same_boxes(
    anonymizer: Anonymizer, tmp_path: Path
) -> None:
    photo = astronaut_bgr()
    given = photo.copy()
    result = anonymizer.anonymize(given)
    assert np.array_equal(given, photo)  # the caller's image is left as it was
    assert not result.full_mask and "face" in result.detections.classes()
    assert_face_masked(photo, result.image, ASTRONAUT_FACE, "api")

    cv2.imwrite(str(tmp_path / "astronaut.png"), photo)
    frames = tmp_path / "frames.jsonl"
    args = ("run", str(tmp_path / "astronaut.png"), "-o", str(tmp_path / "out.png"), "--metrics-jsonl", str(frames))
    cli = run_cli(*args)
    assert cli.returncode == 0, cli.stderr
    detected = json.loads(frames.read_text().splitlines()[0])["detected"]
    assert sorted(detected) == result.detections.classes()
    for label, boxes in detected.items():
        mine = result.detections.boxes[result.detections.labels == label]
        assert len(mine) == len(boxes), label
        order = np.lexsort(np.asarray(boxes).T[::-1])
        assert np.allclose(np.asarray(boxes)[order], mine[np.lexsort(mine.T[::-1])], atol=0.5), label
    assert np.abs(cv2.imread(str(tmp_path / "out.png")).astype(int) - result.image.astype(int)).max() <= 1


def test_a_video_sequence_keeps_every_face_masked(anonymizer: Anonymizer) -> None:
    clip = AstronautClip(width=320, height=240, frames=12, fps=30)
    photo = astronaut_bgr()
    raw = [clip.frame(i, photo) for i in range(clip.frames)]
    results = list(anonymizer.anonymize_video(raw, fps=clip.fps))
    assert len(results) == clip.frames
    for i, (frame, result) in enumerate(zip(raw, results, strict=True)):
        assert "face" in result.detections.classes(), i
        assert_face_masked(frame, result.image, clip.face_box(i), f"frame {i}")


def test_a_file_with_audio_comes_out_as_the_cli_writes_it(anonymizer: Anonymizer, tmp_path: Path) -> None:
    clip = AstronautClip(width=320, height=240, frames=20, fps=30)
    source = clip_with_audio(tmp_path / "talk.mp4", clip, video_delay_s=0.0)
    done: list[tuple[int, int | None]] = []
    result = anonymizer.anonymize_file(source, tmp_path / "talk_anonymized.mp4", progress=lambda *p: done.append(p))
    assert result.outputs == [tmp_path / "talk_anonymized.mp4"] and result.frames == clip.frames
    assert result.masks["face"] >= clip.frames and done[-1] == (clip.frames, clip.frames)
    decoded, _ = decode_video(result.outputs[0])
    raw, _ = decode_video(source)
    assert len(decoded) == clip.frames
    for i in (0, clip.frames // 2, clip.frames - 1):
        assert_face_masked(raw[i], decoded[i], clip.face_box(i), f"frame {i}")
    with av.open(str(result.outputs[0])) as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
    with pytest.raises(AnonstreamError, match="already exists"):
        anonymizer.anonymize_file(source, tmp_path / "talk_anonymized.mp4")


def test_a_failing_model_masks_the_whole_image_and_a_closed_anonymizer_refuses(tmp_path: Path) -> None:
    model = nan_model(tmp_path / "nan.onnx")
    with Anonymizer(detect=["faces"], options={"detectors.faces.model": str(model)}) as broken:
        result = broken.anonymize(astronaut_bgr())
    assert result.full_mask and not len(result.detections)
    assert_face_masked(astronaut_bgr(), result.image, ASTRONAUT_FACE, "full mask")
    with pytest.raises(AnonstreamError, match="closed"):
        broken.anonymize(astronaut_bgr())


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("not an array", "numpy array"),
        (np.zeros((0, 10, 3), np.uint8), "no pixels"),
        (np.zeros((10, 10, 3), np.int64), "int64"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
    ],
)
def test_bad_images_are_refused_with_a_reason(anonymizer: Anonymizer, image: object, message: str) -> None:
    with pytest.raises(AnonstreamError, match=message):
        anonymizer.anonymize(image)  # type: ignore[arg-type]


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(anonstream.ConfigError, match="mask"):
        Anonymizer(mask="sparkles")
    with pytest.raises(anonstream.ConfigError):
        Anonymizer(detect=["hands"])


def test_only_the_public_names_are_exported() -> None:
    assert set(anonstream.__all__) == {
        "AnonstreamError",
        "AnonymizationError",
        "Anonymized",
        "Anonymizer",
        "ConfigError",
        "Detections",
        "FileResult",
        "__version__",
    }
    for name in anonstream.__all__:
        assert getattr(anonstream, name) is not None
    assert (Path(anonstream.__file__).parent / "py.typed").exists()
