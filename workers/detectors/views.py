"""Which parts of a frame a detector looks at, and how their boxes come back together.

Detection costs in proportion to the pixels a network sees, and distant faces
and plates are small, so each detector looks at a frame in up to two passes
(``plan``), configured separately for stills and video (``Views``):
- the whole frame, scaled so its longest side is at most ``max_side``
  (0: native size), unless ``whole`` is off;
- the frame at ``tile_scale`` times its native resolution, but no more than
  ``tiled_side`` pixels on its longest side (a large photo's faces are
  large too), cut into overlapping tiles of at most ``tile_size`` pixels:
  all of them, or ``tiles`` of them per frame in rotation (video). Tiles
  are skipped where the whole-frame pass already looks at that resolution.
Every input keeps its region's aspect ratio, each side rounded up to a
multiple of 32 as the networks require. Boxes from all passes are merged
(``merge``) so that overlapping ones of one class become one box covering them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from anonstream.config import Views
from anonstream.stream.detections import Detections, iou_matrix

ALIGN = 32


def input_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Detector input (height, width) for a region of this size."""
    scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
    return (
        max(ALIGN, math.ceil(height * scale / ALIGN) * ALIGN),
        max(ALIGN, math.ceil(width * scale / ALIGN) * ALIGN),
    )


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame to look at: its pixels, whether it stands alone, and its number (for tile rotation)."""

    image: np.ndarray
    still: bool = False
    seq: int = 0


@dataclass(frozen=True, slots=True)
class View:
    """One detector input: a region of the frame (x0, y0, x1, y1) resized to (height, width).

    ``frame`` is the (height, width) of the whole frame the region is part of.
    ``content`` is set where the region keeps its aspect inside a fixed input
    (letterbox): it is resized to ``content`` (height, width) at the top left.
    """

    region: tuple[int, int, int, int]
    size: tuple[int, int]
    frame: tuple[int, int]
    content: tuple[int, int] | None = None

    def crop(self, image: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.region
        return image[y0:y1, x0:x1]

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in this view's input pixels, in frame pixels."""
        x0, y0, x1, y1 = self.region
        height, width = self.content or self.size
        factors = np.array([(x1 - x0) / width, (y1 - y0) / height] * 2, dtype=np.float32)
        return np.asarray(boxes, np.float32).reshape(-1, 4) * factors + np.array([x0, y0, x0, y0], np.float32)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced tile origins along one side, covering it with at least ``overlap`` shared pixels."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def tile_scale(height: int, width: int, views: Views) -> float:
    """The scale this frame is tiled at: ``tile_scale``, or less where that would exceed ``tiled_side``."""
    if views.tiled_side and views.tile_scale:
        return min(views.tile_scale, views.tiled_side / max(height, width))
    return views.tile_scale


def tiles(height: int, width: int, views: Views) -> list[View]:
    """The high-resolution tiles of a frame; empty when the whole-frame pass already sees that resolution."""
    scale = tile_scale(height, width, views)
    if scale <= 0:
        return []
    if views.whole and input_size(height, width, views.max_side)[1] >= width * scale:
        return []
    side = max(ALIGN, int(views.tile_size / scale))  # tile side in frame pixels
    overlap = int(views.tile_overlap / scale)
    found = []
    for y in _starts(height, side, overlap):
        for x in _starts(width, side, overlap):
            x1, y1 = min(width, x + side), min(height, y + side)
            size = input_size(round((y1 - y) * scale), round((x1 - x) * scale), 0)
            found.append(View((x, y, x1, y1), size, (height, width)))
    return found


def plan(height: int, width: int, views: Views, seq: int) -> list[View]:
    """What to look at in frame ``seq``: the whole frame, then every tile, or this frame's turn of them."""
    size = input_size(height, width, views.max_side)
    whole = [View((0, 0, width, height), size, (height, width))] if views.whole else []
    fine = tiles(height, width, views)
    if not views.tiles or not fine:
        return whole + fine
    turn = min(views.tiles, len(fine))
    return whole + [fine[(seq * turn + k) % len(fine)] for k in range(turn)]


def _suppress(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[tuple[int, np.ndarray]]:
    """Greedy non-maximum suppression: each kept index, best first, with the indices it suppressed.

    Each round compares the best remaining box with all others at once, so the
    loop runs once per kept box, not once per candidate.
    """
    order = np.argsort(-scores, kind="stable")
    groups: list[tuple[int, np.ndarray]] = []
    while order.size:
        best, rest = order[0], order[1:]
        iou = iou_matrix(boxes[best : best + 1], boxes[rest])[0]
        groups.append((int(best), rest[iou > iou_threshold]))
        order = rest[iou <= iou_threshold]
    return groups


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    return np.asarray([best for best, _ in _suppress(boxes, scores, iou_threshold)], dtype=np.int64)


def merge(found: list[Detections], iou_threshold: float) -> Detections:
    """One box per object from several views: overlapping boxes of a class become the box enclosing them all.

    A face cut by a tile border, or seen at two scales, gives boxes of
    different extents; keeping only the best-scored one could leave part of
    it bare, so the merged box covers every one of them.
    """
    every = Detections.concat(found)
    merged = []
    for label in every.classes():
        group = every[every.labels == label]
        boxes, enclosing, kept = group.boxes, [], []
        for best, suppressed in _suppress(boxes, group.scores, iou_threshold):
            members = boxes[np.append(suppressed, best)]
            enclosing.append([*members[:, :2].min(axis=0), *members[:, 2:].max(axis=0)])
            kept.append(group.scores[best])
        merged.append(Detections.of(label, np.asarray(enclosing, np.float32), np.asarray(kept, np.float32)))
    return Detections.concat(merged)
