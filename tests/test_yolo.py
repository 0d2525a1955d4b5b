"""Your own model: YOLO export layouts decoded from small generated ONNX graphs whose outputs are known."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from anonstream.config import RuntimeConfig, YoloConfig
from anonstream.errors import ModelError
from anonstream.workers.detectors.yolo import Yolo, layout_of
from tests.conftest import AstronautClip, constant_model, decode_video, run_cli


def yolo(path: Path, labels: list[str], **fields: object) -> Yolo:
    config = YoloConfig.model_validate({"model": path, "labels": labels, **fields})
    return Yolo("mine", config, RuntimeConfig(device="cpu"), threads=1)


def v8(rows: list[tuple[float, float, float, float, list[float]]], boxes: int = 9) -> np.ndarray:
    """[1, 4 + C, boxes]: each row cx, cy, w, h and its class scores; the other boxes score 0."""
    classes = len(rows[0][4])
    out = np.zeros((1, 4 + classes, boxes), np.float32)
    for i, (cx, cy, w, h, scores) in enumerate(rows):
        out[0, :, i] = [cx, cy, w, h, *scores]
    return out


def test_v8_layout_letterboxed_into_a_fixed_input(tmp_path: Path) -> None:
    """A 1280x720 frame letterboxed into 640x640 (scale 0.5, grey band below): boxes come back in frame pixels."""
    output = v8(
        [
            (100, 50, 40, 20, [0.9, 0.0, 0.0]),  # a plate
            (104, 52, 40, 20, [0.6, 0.0, 0.0]),  # the same plate, weaker: suppressed
            (300, 200, 60, 80, [0.0, 0.0, 0.8]),  # a face (class 2)
            (500, 100, 30, 30, [0.0, 0.95, 0.0]),  # class 1, which the labels ignore
            (400, 300, 30, 30, [0.2, 0.0, 0.0]),  # below the threshold
        ]
    )
    detector = yolo(constant_model(tmp_path / "v8.onnx", output), ["plate", "", "face"])
    assert detector.layout == "v8" and detector.fixed == (640, 640)
    found = detector.detect(np.zeros((720, 1280, 3), np.uint8))
    assert found.labels.tolist() == ["face", "plate"]
    np.testing.assert_allclose(found.boxes, [[540, 320, 660, 480], [160, 80, 240, 120]])
    np.testing.assert_allclose(found.scores, [0.8, 0.9])


def test_v5_layout_scores_are_objectness_times_class(tmp_path: Path) -> None:
    output = np.zeros((1, 4, 5 + 2), np.float32)  # [1, boxes, 5 + C]
    output[0, 0] = [320, 320, 64, 32, 0.9, 0.1, 0.9]  # 0.81: a plate
    output[0, 1] = [100, 100, 10, 10, 0.3, 0.9, 0.1]  # 0.27: a face, above 0.25
    output[0, 2] = [200, 200, 10, 10, 0.2, 0.9, 0.0]  # 0.18: below
    detector = yolo(constant_model(tmp_path / "v5.onnx", output), ["face", "plate"])
    assert detector.layout == "v5"
    found = detector.detect(np.zeros((640, 640, 3), np.uint8))
    assert found.counts() == {"face": 1, "plate": 1}
    np.testing.assert_allclose(found.scores, [0.27, 0.81], rtol=1e-5)
    plate = found.boxes[found.labels == "plate"][0]
    np.testing.assert_allclose(plate, [288, 304, 352, 336])  # 64x32 around (320, 320): as found, grown only to mask


def test_a_model_with_a_free_input_size_sees_each_view_at_its_own_size(tmp_path: Path) -> None:
    """640x360 at max_side 640: input 640x384, so y is scaled by 360 / 384; tiles would get their own sizes."""
    output = v8([(320, 192, 64, 48, [0.9])])
    detector = yolo(constant_model(tmp_path / "free.onnx", output, input_hw=("h", "w")), ["plate"])
    assert detector.fixed is None
    found = detector.detect(np.zeros((360, 640, 3), np.uint8))
    np.testing.assert_allclose(found.boxes, [[288, 168 * 360 / 384, 352, 216 * 360 / 384]], rtol=1e-5)


@pytest.mark.parametrize(
    ("shape", "classes", "asked", "message"),
    [
        ((1, 84, 8400), 2, "auto", "fits neither"),
        ((1, 6, 7), 2, "auto", "fits both"),  # 4+2 rows, and 5+2 columns: only `layout` can tell
        ((1, 84, 8400), 80, "v5", "does not fit layout v5"),
        ((1, 84), 80, "auto", "3 dimensions"),
    ],
)
def test_outputs_that_fit_no_layout_are_one_clear_error(
    shape: tuple[int, ...], classes: int, asked: str, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        layout_of(shape, classes, asked)
    assert layout_of((1, 6, 7), 2, "v5") == "v5"


def test_a_yolo_model_needs_one_image_input_and_one_output(tmp_path: Path) -> None:
    from tests.test_detector import broken_model

    with pytest.raises(ModelError, match="one output"):
        yolo(broken_model(tmp_path / "three.onnx"), ["face"])


def test_your_own_model_masks_its_classes_end_to_end(tmp_path: Path) -> None:
    """A config section, no code: the model's class 0 ("plate") is masked, solid, in every recorded frame."""
    clip = AstronautClip(width=640, height=360, frames=8)
    source = clip.write(tmp_path / "clip.mp4")
    # in the letterboxed 640x640 input, 640x360 keeps scale 1: a box around (500, 300), 100x40 in frame pixels
    model = constant_model(tmp_path / "plates.onnx", v8([(500, 300, 100, 40, [0.9, 0.0])]))
    config = tmp_path / "mine.toml"
    config.write_text(
        f'detect = ["mine"]\n[detectors.mine]\nfamily = "yolo"\nmodel = "{model}"\nlabels = ["plate", "car"]\n'
        '[mask.by_class.plate]\nmode = "solid"\ncolor = [255, 0, 255]\n'
    )
    result = run_cli("run", "--source", str(source), "--record", str(tmp_path / "out"), "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "plate 8" in result.stdout  # the summary counts boxes by class
    frames, _ = decode_video(tmp_path / "out" / "clip.mp4")
    assert len(frames) == 8
    for frame in frames:
        magenta = cv2.inRange(frame[285:315, 455:545], (200, 0, 200), (255, 60, 255))
        assert (magenta > 0).mean() > 0.95
