"""Temporal hold: unit cases, and a real pipeline whose detector is blind in some frames."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from anonstream.config import TrackerConfig
from anonstream.demo import AstronautClip, astronaut_bgr
from anonstream.stream.detections import Detections
from anonstream.stream.tracker import COAST, Tracker, overlap_of_smaller
from tests.conftest import MARK, decode_video, marked_model, run_cli

SHAPE = (360, 640, 3)
FACE = np.array([[100, 100, 140, 150]], np.float32)
NONE = np.zeros((0, 4), np.float32)


def faces(boxes: np.ndarray) -> Detections:
    return Detections.of("face", boxes)


STEP = np.array([10, 0, 10, 0], np.float32)  # moving right, 10 px per frame


def test_a_missed_face_is_held_moved_and_grown() -> None:
    tracker = Tracker(TrackerConfig(hold_frames=5, grow=0.1))
    for seq in range(3):
        assert len(tracker.update(seq, SHAPE, faces(FACE + seq * STEP))) == 0  # detected: the worker masked it
    held = tracker.update(3, SHAPE, faces(NONE))
    assert len(held) == 1
    centre = (held.boxes[0, :2] + held.boxes[0, 2:]) / 2
    assert centre[0] > 140  # moved on with the face (it was at 140 in frame 2)
    assert held.boxes[0, 2] - held.boxes[0, 0] > 40 and held.boxes[0, 3] - held.boxes[0, 1] > 50  # and grew


def test_one_displacement_is_no_velocity() -> None:
    """Two sightings can be one detection's jitter: the held mask stays where the face was last seen."""
    tracker = Tracker(TrackerConfig())
    tracker.update(0, SHAPE, faces(FACE))
    tracker.update(1, SHAPE, faces(FACE + 3 * STEP))
    held = tracker.update(2, SHAPE, faces(NONE))
    assert (held.boxes[0, :2] + held.boxes[0, 2:]).tolist() == ((FACE[0, :2] + FACE[0, 2:]) + 2 * 3 * STEP[:2]).tolist()


def test_a_hold_ends_after_hold_frames() -> None:
    tracker = Tracker(TrackerConfig(hold_frames=3))
    tracker.update(0, SHAPE, faces(FACE))
    assert [len(tracker.update(seq, SHAPE, faces(NONE))) for seq in range(1, 7)] == [1, 1, 1, 0, 0, 0]


def test_lost_frames_count_as_time_passing() -> None:
    tracker = Tracker(TrackerConfig(hold_frames=3))
    tracker.update(0, SHAPE, faces(FACE))
    assert len(tracker.update(2, SHAPE, faces(NONE))) == 1
    assert len(tracker.update(9, SHAPE, faces(NONE))) == 0


def test_only_the_missed_face_is_held() -> None:
    other = np.array([[400, 50, 440, 100]], np.float32)
    tracker = Tracker(TrackerConfig())
    tracker.update(0, SHAPE, faces(np.concatenate([FACE, other])))
    held = tracker.update(1, SHAPE, faces(other + 2))
    assert len(held) == 1 and held.boxes[0, 0] < 200


@pytest.mark.parametrize(
    ("config", "shape", "blind"),
    [
        (TrackerConfig(hold_frames=0), SHAPE, False),  # off
        (TrackerConfig(), (720, 1280, 3), False),  # a new frame size is a new scene
        (TrackerConfig(), SHAPE, True),  # a fully masked frame needs nothing added
    ],
)
def test_nothing_held(config: TrackerConfig, shape: tuple[int, ...], blind: bool) -> None:
    tracker = Tracker(config)
    tracker.update(0, SHAPE, faces(FACE))
    assert len(tracker.update(1, shape, faces(NONE), blind=blind)) == 0


def test_no_detections_ever_means_no_masks() -> None:
    tracker = Tracker(TrackerConfig())
    assert all(len(tracker.update(seq, SHAPE, faces(NONE))) == 0 for seq in range(10))


def _scene(shift: int) -> np.ndarray:
    """The astronaut photo filling the frame, moved right by ``shift`` pixels."""
    photo = cv2.resize(astronaut_bgr(), (SHAPE[1], SHAPE[0]))
    return np.roll(photo, shift, axis=1)


def _held_for(tracker: Tracker, scenes: list[np.ndarray], step: int = 0) -> list[int]:
    """Frames 1.. of ``scenes`` (the face detected in frame 0 only) in which a box is held, checking where."""
    tracker.update(0, SHAPE, faces(FACE), image=scenes[0])
    held_in = []
    for seq, scene in enumerate(scenes[1:], start=1):
        held = tracker.update(seq, SHAPE, faces(NONE), image=scene)
        if len(held):
            held_in.append(seq)
            # where the image was a frame ago: the first frame unseen is the first whose image of the face is not
            # masked, so the hold starts where the face was detected and follows from there
            centre = (held.boxes[0, 0] + held.boxes[0, 2]) / 2
            assert abs(centre - (120 + step * (seq - 1))) < 2, f"frame {seq}: the held box is at {centre}"
    return held_in


def test_a_held_mask_follows_what_it_shows_past_the_hold() -> None:
    """A head turned away: nothing to detect, but what the box showed is still there, moving; the mask goes with it."""
    tracker = Tracker(TrackerConfig(hold_frames=3, follow_frames=10))
    assert _held_for(tracker, [_scene(3 * seq) for seq in range(20)], step=3) == list(range(1, 14))


@pytest.mark.parametrize(
    "scenes",
    [
        [np.full(SHAPE, 128, np.uint8)] * 20,  # flat: sky, a wall, a flare; nothing to follow
        [_scene(0)] * 2 + [_scene(0)[::-1].copy()] * 18,  # what the box showed is gone in frame 2 (the person left)
    ],
    ids=["flat", "gone"],
)
def test_a_held_mask_with_nothing_to_follow_ends_with_its_hold(scenes: list[np.ndarray]) -> None:
    assert _held_for(Tracker(TrackerConfig(hold_frames=3, follow_frames=10)), scenes) == [1, 2, 3]


def test_a_held_mask_leaving_the_frame_is_not_followed_on_the_background() -> None:
    """What is left in view of a box mostly out of the frame is background (blinds, a wall): no longer followed."""
    tracker = Tracker(TrackerConfig(hold_frames=3, follow_frames=10))
    scene = _scene(0)  # textured, and still: it would be found again in every frame
    box = np.array([[10, 100, 50, 150]], np.float32)
    for seq in range(3):  # leaving on the left, 6 px a frame
        assert not len(tracker.update(seq, SHAPE, faces(box - seq * np.array([6, 0, 6, 0], np.float32)), image=scene))
    held_in = [seq for seq in range(3, 20) if len(tracker.update(seq, SHAPE, faces(NONE), image=scene))]
    assert held_in == [3, 4, 5]


SHORT_LOOKS = (4, 5, 6, 15, 16, 17, 18, 19)  # blinded frames: twice a short look away
TURNED_AWAY = tuple(range(6, 36))  # 30 frames, twice the hold


@pytest.mark.parametrize(
    ("hold", "follow", "blinded"),
    [(15, 0, SHORT_LOOKS), (0, 0, SHORT_LOOKS), (15, 45, TURNED_AWAY), (15, 0, TURNED_AWAY)],
    ids=["held", "no-tracker", "followed", "not-followed"],
)
def test_face_hidden_from_the_detector_stays_masked(
    tmp_path: Path, hold: int, follow: int, blinded: tuple[int, ...]
) -> None:
    """The face turns away (the detector is blinded on marked frames): held for the hold, and while followed after."""
    clip = AstronautClip(frames=50)
    photo = astronaut_bgr()
    frames = [clip.frame(i, photo) for i in range(clip.frames)]
    for i in blinded:
        frames[i][:MARK, :MARK] = 255
    source = tmp_path / "clip.mp4"
    _encode(frames, source, clip.fps)
    jsonl = tmp_path / "frames.jsonl"
    args = ["--source", str(source), "--record", str(tmp_path / "out"), "--mask", "solid", "--workers", "1"]
    args += ["--model", str(marked_model(tmp_path / "blinkered.onnx", fill=0.0)), "--metrics-jsonl", str(jsonl)]
    args += ["--detect", "faces", "--set", f"tracker.hold_frames={hold}", "--set", f"tracker.follow_frames={follow}"]
    result = run_cli("run", *args)
    assert result.returncode == 0, result.stderr
    out, _ = decode_video(tmp_path / "out" / "clip.mp4")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {r["seq"] for r in records if not r["detected"]} == set(blinded)  # the detector really missed them
    for index, frame in enumerate(out):
        unseen = index - max(i for i in range(index + 1) if i not in blinded)
        held = 0 < unseen <= (hold + follow if hold else 0)
        x1, y1, x2, y2 = clip.face_box(index)
        filled = (frame[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3] < 40).mean() > 0.95
        tracked = records[index]["tracked"].get("face", [])
        on_face = [b for b in tracked if b[0] < x2 and b[2] > x1 and b[1] < y2 and b[3] > y1]
        # a box is held exactly where the detector missed the face, for as long as it may be (no ghost after)
        assert bool(tracked) == held, f"frame {index}"
        # the face moves 9 px a frame: the prediction alone keeps up with it for COAST frames, a followed image
        # throughout (past COAST, a box only predicted is left behind: it may still be held, off the face)
        if index not in blinded or not held or follow or unseen <= COAST:
            assert filled == (held or index not in blinded), f"frame {index}"
            assert bool(on_face) == held, f"frame {index}"


def _encode(frames: list[np.ndarray], path: Path, fps: int) -> None:
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps))
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "12", "preset": "veryfast"}
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(video.encode(None))


def test_a_fast_face_continues_its_track_instead_of_leaving_a_ghost() -> None:
    tracker = Tracker(TrackerConfig())
    tracker.update(0, SHAPE, faces(FACE))
    # moved by 0.8 of its width: little overlap with where it was, but clearly the same face
    assert len(tracker.update(1, SHAPE, faces(FACE + np.array([32, 5, 32, 5], np.float32)))) == 0
    far = np.array([[400, 100, 440, 150]], np.float32)
    assert len(tracker.update(2, SHAPE, faces(far))) == 1  # a different face: the first one is held


def test_detections_continue_tracks_of_their_own_class_only() -> None:
    """A plate found where a face was is not that face: the face's mask is held beside it."""
    tracker = Tracker(TrackerConfig())
    tracker.update(0, SHAPE, faces(FACE))
    held = tracker.update(1, SHAPE, Detections.of("plate", FACE + 1))
    assert held.labels.tolist() == ["face"]
    assert len(tracker.update(2, SHAPE, Detections.of("plate", FACE + 2))) == 1  # the plate continues its own track


def test_each_class_holds_for_its_own_number_of_frames() -> None:
    config = TrackerConfig.model_validate({"hold_frames": 2, "by_class": {"plate": {"hold_frames": 5}}})
    assert config.style("plate").grow == config.grow  # the rest comes from [tracker]
    tracker = Tracker(config)
    tracker.update(0, SHAPE, Detections.concat([faces(FACE), Detections.of("plate", FACE + 200)]))
    held = [tracker.update(seq, SHAPE, faces(NONE)).labels.tolist() for seq in range(1, 7)]
    assert held == [["face", "plate"]] * 2 + [["plate"]] * 3 + [[]]


def test_a_class_with_no_hold_is_never_held() -> None:
    tracker = Tracker(TrackerConfig.model_validate({"by_class": {"plate": {"hold_frames": 0}}}))
    tracker.update(0, SHAPE, Detections.of("plate", FACE))
    assert len(tracker.update(1, SHAPE, faces(NONE))) == 0


def _held_beside(tracker: Tracker, frames: list[Detections]) -> list[int]:
    """Frames where a held box overlaps a detection of its class: a ghost beside what is already masked."""
    ghosts = []
    for seq, found in enumerate(frames):
        held = tracker.update(seq, SHAPE, found)
        if len(held) and len(found) and (overlap_of_smaller(held.boxes, found.boxes) > 0).any():
            ghosts.append(seq)
    return ghosts


def test_a_moving_face_found_in_every_frame_leaves_no_ghost() -> None:
    """The demo clip's ghosts: a second box on the face, and weak small finds beside it, became tracks of their own."""
    frames = []
    for seq in range(40):
        face = FACE + seq * np.array([6, 2, 6, 2], np.float32)  # 6 px a frame right, 2 down
        found = [faces(face)]
        if seq % 10 == 3:  # a weak find on the collar, beside the face
            found.append(Detections.of("face", face + np.array([-30, 25, -30, 5]), np.array([0.14])))
        if seq % 10 == 7:  # a second, smaller box on the same face
            found.append(Detections.of("face", face * np.array([1, 1, 1, 1]) + np.array([0, 0, -15, -20])))
        frames.append(Detections.concat(found))
    assert _held_beside(Tracker(TrackerConfig()), frames) == []


def test_a_weak_bright_blob_neither_coasts_nor_grows() -> None:
    """The car park's flare: a large box, weakly scored, jumping about; it is masked where found and never held."""
    tracker = Tracker(TrackerConfig())
    shape = (1920, 2560, 3)
    flare = np.array([[2160, 135, 2528, 680]], np.float32)
    seen = {0: 0, 1: 12, 3: -40, 4: 15, 5: 75}  # frame -> horizontal jump of the false box
    for seq in range(20):
        jump = np.array([1, 0, 1, 0], np.float32) * seen.get(seq, 0)
        found = Detections.of("face", flare + jump, np.array([0.29])) if seq in seen else Detections.empty()
        held = tracker.update(seq, shape, found)
        assert len(held) == 0, f"frame {seq}"


def test_a_held_box_stays_bounded_and_in_the_frame() -> None:
    config = TrackerConfig(hold_frames=30, grow=0.2, max_growth=1.5)
    tracker = Tracker(config)
    fast = np.array([30, 5, 30, 5], np.float32)  # heading right and down, out of the frame
    start = FACE + np.array([400, 0, 400, 0], np.float32)
    for seq in range(4):
        tracker.update(seq, SHAPE, faces(start + seq * fast))
    last = start[0] + 3 * fast
    width, height = last[2] - last[0], last[3] - last[1]
    held_for = 0
    for seq in range(4, 34):
        held = tracker.update(seq, SHAPE, faces(NONE))
        for x1, y1, x2, y2 in held.boxes.tolist():
            held_for += 1
            assert x2 - x1 <= 1.5 * width + 1e-3 and y2 - y1 <= 1.5 * height + 1e-3
            assert 0 <= x1 <= x2 <= SHAPE[1] and 0 <= y1 <= y2 <= SHAPE[0]
    assert 0 < held_for < 30  # held while it can still be in the frame, then ended


def test_a_weak_detection_continues_a_track_but_starts_none() -> None:
    tracker = Tracker(TrackerConfig())
    weak = np.array([0.2])
    tracker.update(0, SHAPE, faces(FACE))
    tracker.update(1, SHAPE, Detections.of("face", FACE + 2, weak))  # the face, turning away
    assert len(tracker.update(2, SHAPE, faces(NONE))) == 1  # still held
    other = np.array([[400, 100, 440, 150]], np.float32)
    tracker.update(3, SHAPE, Detections.of("face", other, weak))
    assert [box[0] < 200 for box in tracker.update(4, SHAPE, faces(NONE)).boxes.tolist()] == [True]
