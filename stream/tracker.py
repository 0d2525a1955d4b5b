"""Temporal hold: a face the detector missed in one frame is still masked there.

Detectors miss faces for a frame or two (motion blur, a turned head, a small
face between two looks of the rotating high-resolution tiles). Workers are
stateless, so this runs where each stream is in order again: in the record
stage, after the sequencer. Each face or plate detected becomes a track of
its class; while it is not detected again, its mask stays for
``hold_frames`` frames, moves with its estimated velocity (for ``COAST``
frames at most) and grows, since where it is becomes less certain the longer
it is unseen. Detections continue tracks of their own class only, and each
class has its own hold (``tracker.by_class``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anonstream.config import TrackerConfig
from anonstream.stream.detections import Detections, iou_matrix

SMOOTHING = 0.5  # weight of the newest displacement in the velocity estimate
COAST = 5  # frames a held mask keeps moving at the last velocity; after that it stays and only grows


@dataclass
class Track:
    label: str
    box: np.ndarray  # x1, y1, x2, y2 where it was last detected
    velocity: np.ndarray  # centre displacement per frame, x and y
    seen: int  # seq of the frame it was last detected in

    def predicted(self, seq: int, grow: float) -> np.ndarray:
        """Where the face should be at frame ``seq``: moved on, and grown by how uncertain that is.

        The box grows with the time unseen, and along each axis by half the
        distance the prediction moved it: a face that turns or stops makes
        a constant-velocity guess wrong by about that much.
        """
        since = seq - self.seen
        moved = self.velocity * min(since, COAST)
        centre = (self.box[:2] + self.box[2:]) / 2 + moved
        half = (self.box[2:] - self.box[:2]) / 2 * (1 + grow * since) + np.abs(moved) / 2
        return np.concatenate([centre - half, centre + half])


def _size(boxes: np.ndarray) -> np.ndarray:
    return np.asarray(np.sqrt(np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-9), axis=1)))


def affinity(tracks: np.ndarray, last: np.ndarray, found: np.ndarray, min_iou: float) -> np.ndarray:
    """How well each detection continues each track, 0 where it does not.

    ``tracks`` are the predicted boxes, ``last`` the boxes last detected.
    Overlap decides first. A fast face, or one whose velocity is not known yet,
    may overlap its prediction little, so a detection of about the face's last
    size whose centre is within the prediction's size of its centre also
    continues the track, ranked below every real overlap.
    """
    overlap = iou_matrix(tracks, found)
    size_t = _size(tracks)[:, None]
    size_f = _size(found)[None, :]
    size_last = _size(last)[:, None]
    centre_t = (tracks[:, None, :2] + tracks[:, None, 2:]) / 2
    centre_f = (found[None, :, :2] + found[None, :, 2:]) / 2
    distance = np.linalg.norm(centre_t - centre_f, axis=2) / np.maximum(size_t, 1e-9)
    similar = (size_f < 2 * size_last) & (size_last < 2 * size_f)
    near = np.where(similar & (distance < 1), min_iou * (1 - distance), 0.0)
    return np.asarray(np.where(overlap >= min_iou, overlap, near))


class Tracker:
    """The tracks of one stream; ``update`` is called once per frame, in order."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.tracks: list[Track] = []
        self._shape: tuple[int, ...] = ()

    def update(self, seq: int, shape: tuple[int, ...], detected: Detections, blind: bool = False) -> Detections:
        """What to mask in frame ``seq`` besides what was detected in it: each class's held boxes.

        ``blind``: the frame was masked whole, so nothing was detected and
        nothing needs adding; tracks keep their last sighting.
        """
        if shape != self._shape:
            self.tracks = []  # a new size is a new scene (or a new segment): nothing carries over
            self._shape = shape
        self.tracks = [t for t in self.tracks if seq - t.seen <= self.config.style(t.label).hold_frames]
        if blind:
            return Detections.empty()
        held = []
        for label in sorted({t.label for t in self.tracks} | set(detected.classes())):
            if self.config.style(label).hold_frames:
                held.append(
                    Detections.of(label, self._update_class(label, seq, detected.boxes[detected.labels == label]))
                )
        return Detections.concat(held)

    def _update_class(self, label: str, seq: int, detected: np.ndarray) -> np.ndarray:
        style = self.config.style(label)
        tracks = [t for t in self.tracks if t.label == label]
        predicted = np.array([t.predicted(seq, style.grow) for t in tracks]).reshape(-1, 4)
        matched_tracks: set[int] = set()
        matched_boxes: set[int] = set()
        if len(predicted) and len(detected):
            last = np.array([t.box for t in tracks])
            score = affinity(predicted, last, detected, style.match_iou)
            for flat in np.argsort(-score, axis=None):
                t, d = divmod(int(flat), len(detected))
                if score[t, d] <= 0:
                    break
                if t in matched_tracks or d in matched_boxes:
                    continue
                matched_tracks.add(t)
                matched_boxes.add(d)
                self._follow(tracks[t], detected[d], seq)
        held = [predicted[i] for i in range(len(tracks)) if i not in matched_tracks]
        for d in range(len(detected)):
            if d not in matched_boxes:
                self.tracks.append(Track(label, detected[d].astype(np.float64), np.zeros(2), seq))
        return np.asarray(held, np.float32).reshape(-1, 4)

    @staticmethod
    def _follow(track: Track, box: np.ndarray, seq: int) -> None:
        step = (box[:2] + box[2:]) / 2 - (track.box[:2] + track.box[2:]) / 2
        track.velocity = SMOOTHING * step / max(1, seq - track.seen) + (1 - SMOOTHING) * track.velocity
        track.box = box.astype(np.float64)
        track.seen = seq
