"""Temporal hold: a face the detector missed in one frame is still masked there.

Detectors miss faces for a frame or two (motion blur, a turned head, a small
face between two looks of the rotating high-resolution tiles). Workers are
stateless, so this runs where each stream is in order again: in the record
stage, after the sequencer. Each face or plate detected becomes a track of
its class, and while it is not detected again its mask holds for
``hold_frames`` frames. What a held mask may do is bounded, because a mask
that wanders is worse than none (it hides the wrong thing and shows the
right one):
- it moves only with a velocity measured from ``VELOCITY_SIGHTINGS`` sightings
  or more, for ``COAST`` frames at most;
- it grows with the time unseen, to at most ``max_growth`` times the size last
  detected, and it stays in the frame (a track that leaves the frame ends);
- a track starts only from a detection scored ``confirm_score`` or more; a
  weak detection continues a track but never starts one (two rounds of
  matching, as in ByteTrack), so a weak false detection (a flare, a pattern)
  is masked where it is found and never coasts on;
- a held mask is never shown beside a detection that overlaps it: the
  detection already covers the object, so the track is that detection's or
  a duplicate, never a ghost standing next to it.
A head that turns away has no face to detect, but it is still there. So a held
mask also follows the image inside it from one frame to the next (template
matching, ``Appearance``), and while that image is still found, textured, the
hold goes on for up to ``follow_frames`` frames after ``hold_frames``; once it
is lost (the person left, or the box shows sky or a wall, or is mostly out of
the frame), the hold ends as before. The images are the record stage's frames
before the held masks are drawn: they never leave the process.
Detections continue tracks of their own class only, and each class has its
own settings (``tracker.by_class``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from anonstream.config import TrackerConfig, TrackerStyle
from anonstream.stream.detections import Detections, iou_matrix

COAST = 5  # frames a held mask keeps moving at the measured velocity; after that it stays and only grows
VELOCITY_SIGHTINGS = 3  # sightings needed before a track has a velocity: two can be one detection's jitter
HISTORY = 6  # sightings the velocity is fitted to
MAX_SPEED = 0.5  # fastest plausible motion, in track sizes per frame; a faster "velocity" is noise
PART_OF = 0.5  # an unmatched detection this much inside a matched one of its class is a part of it, not a new track
OVERLAPS = 0.1  # share of the smaller box: a held box overlapping a detection this much is covered by it
FOLLOW_SIDE = 32  # a held box's image is compared at this size (longest side): the shape of a head, not its detail
FOLLOW_MATCH = 0.7  # normalized correlation with the previous frame's image that says it is still there
FOLLOW_TEXTURE = 6.0  # grey-level spread under which an image is flat (sky, a wall, a flare): nothing to follow
FOLLOW_SEARCH = 0.5  # the image is looked for within this share of the box's size around where it was
FOLLOW_INSIDE = 0.75  # a held box with less of its area in the frame is leaving it: what is left in view is background


def _size(boxes: np.ndarray) -> np.ndarray:
    return np.asarray(np.sqrt(np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-9), axis=1)))


def _area(box: np.ndarray) -> float:
    return float(np.prod(np.maximum(box[2:] - box[:2], 0)))


def _centre(box: np.ndarray) -> np.ndarray:
    return np.asarray((box[:2] + box[2:]) / 2)


def overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection of every box in ``a`` with every box in ``b``, as a share of the smaller of the two."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(np.minimum(area_a[:, None], area_b[None, :]), 1e-9))


def _grey(image: np.ndarray, box: np.ndarray, scale: float) -> np.ndarray:
    """The region ``box`` (whole pixels) of ``image``, grey, scaled by ``scale``."""
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = image[y1:y2, x1:x2]
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    # by fx and fy, not to a rounded size: then a position in the small image is exactly ``scale`` times the frame's
    return np.asarray(cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))


@dataclass(eq=False)
class Appearance:
    """What a held box showed in the frame it was last held in, to find it again in the next one."""

    patch: np.ndarray  # grey, scaled by ``scale``
    box: np.ndarray  # where it was taken, whole frame pixels
    scale: float

    @classmethod
    def take(cls, image: np.ndarray, box: np.ndarray) -> Appearance | None:
        """The image inside ``box`` (within the frame); None when it is too small or flat to follow."""
        whole = np.round(box)
        width, height = whole[2:] - whole[:2]
        if min(width, height) < 4:
            return None
        scale = FOLLOW_SIDE / max(width, height)
        patch = _grey(image, whole, scale)
        return cls(patch, whole, scale) if float(patch.std()) >= FOLLOW_TEXTURE else None

    def find(self, image: np.ndarray) -> np.ndarray | None:
        """How far the image moved (x, y, frame pixels) since it was taken; None where it is no longer found."""
        height, width = image.shape[:2]
        margin = FOLLOW_SEARCH * (self.box[2:] - self.box[:2])
        start = np.floor(np.maximum(self.box[:2] - margin, 0))
        end = np.ceil(np.minimum(self.box[2:] + margin, [width, height]))
        region = _grey(image, np.concatenate([start, end]), self.scale)
        if region.shape[0] < self.patch.shape[0] or region.shape[1] < self.patch.shape[1]:
            return None
        scores = cv2.matchTemplate(region, self.patch, cv2.TM_CCOEFF_NORMED)
        _, best, _, (x, y) = cv2.minMaxLoc(scores)
        if best < FOLLOW_MATCH:
            return None
        # between pixels: a parabola through the peak and its neighbours, so that one pixel of the small
        # scaled image (several of the frame's) is not an error that adds up from frame to frame
        corner = np.array([x + _vertex(scores[y, x - 1 : x + 2]), y + _vertex(scores[y - 1 : y + 2, x])])
        return np.asarray(start + corner / self.scale - self.box[:2])


def _vertex(three: np.ndarray) -> float:
    """Where a parabola through three equally spaced values peaks, relative to the middle one (0 at an edge)."""
    if len(three) < 3:
        return 0.0
    left, middle, right = (float(v) for v in three)
    curve = left - 2 * middle + right
    return 0.5 * (left - right) / curve if curve < 0 else 0.0


@dataclass(eq=False)  # a track is itself, not its values: removed by identity
class Track:
    label: str
    box: np.ndarray  # x1, y1, x2, y2 where it was last detected
    seen: int  # seq of the frame it was last detected in
    sightings: deque[tuple[int, np.ndarray]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    appearance: Appearance | None = None  # while held: the image in the box, to follow it
    followed: np.ndarray | None = None  # while held: the centre its image was last found at
    lost: bool = False  # while held: its image is no longer found, so the hold is no longer extended

    def __post_init__(self) -> None:
        self.sightings.append((self.seen, _centre(self.box)))

    def velocity(self) -> np.ndarray:
        """Centre displacement per frame, fitted to the last sightings; none until there are enough of them."""
        if len(self.sightings) < VELOCITY_SIGHTINGS:
            return np.zeros(2)
        seqs = np.array([seq for seq, _ in self.sightings], np.float64)
        centres = np.array([c for _, c in self.sightings])
        t = seqs - seqs.mean()
        velocity = (t[:, None] * (centres - centres.mean(axis=0))).sum(axis=0) / max((t * t).sum(), 1e-9)
        speed = float(np.linalg.norm(velocity))
        limit = MAX_SPEED * float(_size(self.box[None])[0])
        return np.asarray(velocity * (limit / speed) if speed > limit else velocity)

    def predicted(self, seq: int, style: TrackerStyle) -> np.ndarray:
        """Where the object should be at frame ``seq``: moved on, and grown by how uncertain that is.

        The box grows with the time unseen, and along each axis by half the
        distance the prediction moved it (a face that turns or stops makes a
        constant-velocity guess wrong by about that much), but never beyond
        ``max_growth`` times the size it was last detected at.
        """
        since = seq - self.seen
        moved = self.velocity() * min(since, COAST)
        half = (self.box[2:] - self.box[:2]) / 2
        grown = half * (1 + style.grow * since) + np.abs(moved) / 2
        centre = _centre(self.box) + moved if self.followed is None else self.followed
        half = np.minimum(grown, half * style.max_growth)
        return np.concatenate([centre - half, centre + half])

    def follow(self, box: np.ndarray, seq: int) -> None:
        self.box = box.astype(np.float64)
        self.seen = seq
        self.sightings.append((seq, _centre(self.box)))
        self.appearance, self.followed, self.lost = None, None, False

    def keeps(self, seq: int, style: TrackerStyle) -> bool:
        """Whether the track may still be held in frame ``seq``: within its hold, or its image still followed."""
        since = seq - self.seen
        followed = self.appearance is not None
        return since <= style.hold_frames or (followed and since <= style.hold_frames + style.follow_frames)

    def follow_image(self, box: np.ndarray, image: np.ndarray) -> np.ndarray:
        """The held box ``box`` (as predicted) in the frame, moved to where the image it showed last frame is now.

        Sets ``lost`` where that image is gone or flat, or the box is mostly out of the frame (what is left in
        view is background); the box then stays as predicted.
        """
        height, width = image.shape[:2]
        inside = np.clip(box, 0, [width, height] * 2)
        if _area(inside) < FOLLOW_INSIDE * _area(box):
            self.appearance, self.lost = None, True
        box = inside
        if self.lost:
            return box
        if self.appearance is not None:
            shift = self.appearance.find(image)
            if shift is None:
                self.appearance, self.lost = None, True
                return box
            self.followed = _centre(self.appearance.box) + shift
            half = (box[2:] - box[:2]) / 2
            box = np.clip(np.concatenate([self.followed - half, self.followed + half]), 0, [width, height] * 2)
        self.appearance = Appearance.take(image, box)
        self.lost = self.appearance is None
        return box


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

    def update(
        self,
        seq: int,
        shape: tuple[int, ...],
        detected: Detections,
        blind: bool = False,
        image: np.ndarray | None = None,
    ) -> Detections:
        """What to mask in frame ``seq`` besides what was detected in it: each class's held boxes.

        ``blind``: the frame was masked whole, so nothing was detected and
        nothing needs adding; tracks keep their last sighting. ``image``: the
        frame, with what was detected masked, so held boxes can follow what
        they show (without it they only hold for ``hold_frames``).
        """
        if shape != self._shape:
            self.tracks = []  # a new size is a new scene (or a new segment): nothing carries over
            self._shape = shape
        self.tracks = [t for t in self.tracks if t.keeps(seq, self.config.style(t.label))]
        if blind:
            return Detections.empty()
        held = []
        for label in sorted({t.label for t in self.tracks} | set(detected.classes())):
            if self.config.style(label).hold_frames:
                found = detected[detected.labels == label]
                held.append(Detections.of(label, self._update_class(label, seq, found, image)))
        return Detections.concat(held)

    def _update_class(self, label: str, seq: int, detected: Detections, image: np.ndarray | None) -> np.ndarray:
        style = self.config.style(label)
        tracks = [t for t in self.tracks if t.label == label]
        predicted = np.array([t.predicted(seq, style) for t in tracks]).reshape(-1, 4)
        found, scores = detected.boxes, detected.scores
        strong = scores >= style.confirm_score
        matched: dict[int, int] = {}  # track -> detection
        # Confident detections first, then weak ones for the tracks left (ByteTrack's two rounds): a weak
        # detection continues a track, it never starts one.
        for group in (np.flatnonzero(strong), np.flatnonzero(~strong)):
            self._associate(tracks, predicted, found, group, matched, style)
        for t, d in matched.items():
            tracks[t].follow(found[d], seq)
        taken = found[list(matched.values())]
        for new in (int(d) for d in np.flatnonzero(strong) if d not in matched.values()):
            # A detection overlapping another that continued a track is a part of that object (a plate's
            # text split in two, a second box on one face): it starts no track of its own.
            if len(taken) and (overlap_of_smaller(found[new : new + 1], taken) >= PART_OF).any():
                continue
            self.tracks.append(Track(label, found[new].astype(np.float64), seq))
        height, width = self._shape[:2]
        held = []
        for i, track in enumerate(tracks):
            if i in matched:
                continue
            box = predicted[i]
            centre = _centre(box)
            if not (0 <= centre[0] < width and 0 <= centre[1] < height):
                self.tracks.remove(track)  # it left the frame: nothing of it is there to hide
                continue
            if strong.any() and (overlap_of_smaller(box[None], found[strong]) >= OVERLAPS).any():
                # Covered by a confident detection that continued another track: a duplicate of that object.
                self.tracks.remove(track)
                continue
            if image is not None and style.follow_frames:
                box = track.follow_image(box, image)
            else:
                box = np.clip(box, 0, [width, height, width, height])
            if not track.keeps(seq, style):  # past its hold, and what it showed is gone
                self.tracks.remove(track)
                continue
            held.append(box)
        return np.asarray(held, np.float32).reshape(-1, 4)

    @staticmethod
    def _associate(
        tracks: list[Track],
        predicted: np.ndarray,
        found: np.ndarray,
        group: np.ndarray,
        matched: dict[int, int],
        style: TrackerStyle,
    ) -> None:
        """Match the detections ``group`` to the tracks not matched yet, best affinity first."""
        free = [t for t in range(len(tracks)) if t not in matched]
        if not free or not len(group):
            return
        last = np.array([tracks[t].box for t in free])
        score = affinity(predicted[free], last, found[group], style.match_iou)
        # a track the prediction lost (a jump, a change of size) still takes a detection overlapping it
        share = overlap_of_smaller(predicted[free], found[group])
        score = np.where((score <= 0) & (share >= OVERLAPS), 1e-3 * share, score)
        used: set[int] = set()
        for flat in np.argsort(-score, axis=None):
            i, j = divmod(int(flat), len(group))
            if score[i, j] <= 0:
                break
            if free[i] in matched or j in used:
                continue
            matched[free[i]] = int(group[j])
            used.add(j)
