"""One validated type for the regions to mask in a frame, each with its class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anonstream.stream.wire import CLASS_NAME, MAX_BOXES, Box


@dataclass(frozen=True, slots=True)
class Detections:
    """Boxes ``(N, 4)`` as x1, y1, x2, y2 in frame pixels, with a score and a class ("face", "plate"...) each.

    Boxes may extend beyond the frame; maskers clip them. Construction
    checks shapes, values and class names so that a decoder bug fails loudly
    here, not as an unmasked face later.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray  # (N,) of str

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        labels = np.asarray(self.labels, dtype=np.str_).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(labels)} classes")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError("boxes and scores must be finite")
        if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise ValueError("boxes must have x2 >= x1 and y2 >= y1")
        for label in np.unique(labels):
            if not CLASS_NAME.fullmatch(str(label)):
                raise ValueError(f"{label!r} is not a class name")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.str_))

    @classmethod
    def of(cls, label: str, boxes: np.ndarray, scores: np.ndarray | None = None) -> Detections:
        """Boxes of one class; a score of 1 each unless given."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if scores is None:
            scores = np.ones(len(boxes), np.float32)
        return cls(boxes, scores, np.full(len(boxes), label))

    @classmethod
    def from_wire(cls, boxes: Sequence[Box]) -> Detections:
        if not boxes:
            return cls.empty()
        numbers = np.asarray([box[:5] for box in boxes], dtype=np.float32)
        return cls(numbers[:, :4], numbers[:, 4], np.asarray([box[5] for box in boxes]))

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([d.boxes for d in parts]),
            np.concatenate([d.scores for d in parts]),
            np.concatenate([d.labels for d in parts]),
        )

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: np.ndarray | slice) -> Detections:
        return Detections(self.boxes[index], self.scores[index], self.labels[index])

    def classes(self) -> list[str]:
        return sorted(str(label) for label in np.unique(self.labels))

    def counts(self) -> dict[str, int]:
        """Boxes per class."""
        names, counts = np.unique(self.labels, return_counts=True)
        return {str(name): int(count) for name, count in zip(names, counts, strict=True)}

    def scaled(self, factor: float | tuple[float, float]) -> Detections:
        """Each box grown (or shrunk) around its centre by ``factor``, or by (width, height) factors."""
        fx, fy = (factor, factor) if isinstance(factor, int | float) else factor
        centre = (self.boxes[:, :2] + self.boxes[:, 2:]) / 2
        half = (self.boxes[:, 2:] - self.boxes[:, :2]) * (np.array([fx, fy], np.float32) / 2)
        return Detections(np.hstack([centre - half, centre + half]), self.scores, self.labels)

    def widened(self, aspect: float) -> Detections:
        """Each box made at least ``aspect`` times as wide as it is high, around its centre (0: as it is)."""
        if not aspect or not len(self):
            return self
        centre = (self.boxes[:, 0] + self.boxes[:, 2]) / 2
        half = np.maximum(self.boxes[:, 2] - self.boxes[:, 0], aspect * (self.boxes[:, 3] - self.boxes[:, 1])) / 2
        boxes = np.stack([centre - half, self.boxes[:, 1], centre + half, self.boxes[:, 3]], axis=1)
        return Detections(boxes, self.scores, self.labels)

    def pixel_boxes(self, width: int, height: int) -> np.ndarray:
        """Integer boxes clipped to the frame, rounded outwards; empty ones removed."""
        if not len(self):
            return np.zeros((0, 4), np.int64)
        limits = np.array([width, height, width, height], np.float32)
        clipped = self.boxes.clip(0, limits)  # before the integer cast, so huge values cannot overflow
        out = np.empty((len(self), 4), np.int64)
        out[:, :2] = np.floor(clipped[:, :2])
        out[:, 2:] = np.ceil(clipped[:, 2:])
        keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
        return out[keep]

    def to_wire(self) -> list[Box]:
        """The boxes for the frame header, best first, at most MAX_BOXES (every box is masked regardless)."""
        best = np.argsort(-self.scores, kind="stable")[:MAX_BOXES]
        return [
            (float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(s), str(label))
            for b, s, label in zip(self.boxes[best], self.scores[best], self.labels[best], strict=True)
        ]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (N, 4) with every box in ``b`` (M, 4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9))
