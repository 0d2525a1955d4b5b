"""The plate-shape cue: a plate's own bright quadrilateral, holding a row of dark strokes.

The text detector misses plates that are soft, dark or seen from the side
(the car-park clip of the evaluation set: plates of 40 to 150 pixels that it
finds in no frame). A plate is still a light, solid, four-sided region,
brighter than what is around it, with characters across its middle. This
cue looks for exactly that, with no model, at the frame's own resolution:

1. Regions brighter than their surroundings (adaptive threshold) at three
   neighbourhood sizes, so that plates from small to large stand out; the
   two larger ones closed first, so that characters do not split the plate.
2. Regions of plate size and shape, their boxes measured all at once; then,
   for the survivors only, the convex hull
   must nearly fill its rotated rectangle and the region its hull. An
   oblique plate is foreshortened, so any aspect from square to 6:1 passes,
   but the region must be about level: not much taller than it is wide.
3. Characters: the region turned upright, the dark strokes inside it
   (darker than their own neighbourhood) must cover a fifth to a half of it,
   and lines across its middle must cross at least ``MIN_RUNS`` of them,
   in most of those lines.

Each threshold was chosen on that clip's 24 frames and checked on plates_us
(benchmarks/protection.py); see the README's Protection section for what the
cue adds and what it costs.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

LABEL = "plate"
NEIGHBOURHOODS = (80, 40, 12)  # adaptive-threshold block: the frame's short side divided by these
CLOSE_FROM = 40  # neighbourhoods this large or larger are closed before their regions are taken
BRIGHTER_BY = 8  # grey levels above the neighbourhood's mean
MIN_AREA = 150  # pixels
MAX_AREA = 0.05  # of the frame: a plate close to a small camera frame
MIN_SHORT = 18  # pixels across the plate: below that no character is readable
MAX_ASPECT = 6.0
MIN_LEVEL = 0.85  # its upright box's width / height: a plate is about level (tall regions are signs and people)
MIN_RECTANGULAR = 0.8  # hull area / its rotated rectangle's area
MIN_SOLID = 0.75  # region area / its hull's area
DARK_SHARE = (0.22, 0.5)  # share of the plate's inside covered by dark strokes
MIN_RUNS = 3  # dark strokes crossed by a line through the middle (median over such lines)
RUNS_SHARE = 0.7  # share of those lines crossing at least MIN_RUNS
INSIDE = (0.15, 0.85, 0.06, 0.94)  # the part of the upright plate looked at: rows, then columns (no frame)
KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


def _upright(gray: np.ndarray, rect: tuple[Sequence[float], Sequence[float], float]) -> np.ndarray:
    """The rotated rectangle ``rect`` of ``gray``, turned so that its long side is horizontal."""
    (cx, cy), (width, height), angle = rect
    if width < height:
        width, height, angle = height, width, angle + 90
    turn = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    turn[0, 2] += width / 2 - cx
    turn[1, 2] += height / 2 - cy
    size = (max(1, int(width)), max(1, int(height)))
    return cv2.warpAffine(gray, turn, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _has_characters(plate: np.ndarray) -> bool:
    """Dark strokes across the middle of an upright plate, as characters make."""
    rows, cols = plate.shape
    top, bottom, left, right = INSIDE
    inside = plate[int(rows * top) : max(int(rows * top) + 1, int(rows * bottom)), int(cols * left) : int(cols * right)]
    if inside.size < 30:
        return False
    block = max(3, int(rows / 2) | 1)
    dark = cv2.adaptiveThreshold(inside, 1, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, block, 4)
    if not DARK_SHARE[0] <= dark.mean() <= DARK_SHARE[1]:
        return False
    height = dark.shape[0]
    middle = dark[int(height * 0.3) : max(int(height * 0.3) + 1, int(height * 0.7))].astype(np.int8)
    runs = (np.diff(middle, axis=1) == 1).sum(axis=1) + middle[:, 0]
    return bool(np.median(runs) >= MIN_RUNS and (runs >= MIN_RUNS).mean() >= RUNS_SHARE)


def plate_shapes(image: np.ndarray) -> np.ndarray:
    """Boxes (N, 4) x1, y1, x2, y2 around plate-shaped regions of an 8-bit BGR or grey image."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    height, width = gray.shape
    found: list[tuple[int, int, int, int]] = []
    for divisor in NEIGHBOURHOODS:
        block = max(3, (min(height, width) // divisor) | 1)
        bright = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, -BRIGHTER_BY)
        if divisor <= CLOSE_FROM:
            bright = cv2.morphologyEx(bright, cv2.MORPH_CLOSE, KERNEL)
        # the outer boundary of every bright region, also of those inside another's hole (a plate on a car
        # framed by a brighter street): two-level hierarchy, holes have a parent
        contours, hierarchy = cv2.findContours(bright, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        # sizes of all regions at once; a rotated rectangle's upright box is at least its short side both ways
        boxes = np.array([cv2.boundingRect(c) for c in contours]).reshape(-1, 4)
        sized = (
            (hierarchy[0][:, 3] < 0)
            & (np.minimum(boxes[:, 2], boxes[:, 3]) >= MIN_SHORT)
            & (boxes[:, 2] * boxes[:, 3] >= MIN_AREA)
            & (boxes[:, 2] >= MIN_LEVEL * boxes[:, 3])
        )
        for index in np.flatnonzero(sized):
            outline = contours[int(index)]
            area = cv2.contourArea(outline)
            if not MIN_AREA <= area <= MAX_AREA * height * width:
                continue
            hull = cv2.convexHull(outline)
            hull_area = cv2.contourArea(hull)
            rect = cv2.minAreaRect(hull)
            long, short = max(rect[1]), min(rect[1])
            if (
                short < MIN_SHORT
                or long > MAX_ASPECT * short
                or hull_area < MIN_RECTANGULAR * long * short
                or area < MIN_SOLID * hull_area
            ):
                continue
            if _has_characters(_upright(gray, rect)):
                x, y, w, h = boxes[index]
                found.append((int(x), int(y), int(x + w), int(y + h)))
    return np.asarray(found, np.float32).reshape(-1, 4)
