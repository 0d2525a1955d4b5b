"""CenterFace face detection: which parts of a frame to look at, inference, vectorized decoding.

Detection costs in proportion to the pixels the network sees, and distant
faces are small, so a frame is looked at in two passes (see ``plan``):
- the whole frame, scaled so its longest side is at most ``max_side``
  (0: native size), every frame;
- the frame at ``tile_scale`` times its native resolution, cut into
  overlapping tiles of at most ``tile_size`` pixels: all of them for a still
  image, ``tiles_per_frame`` of them in rotation for video. The second pass is
  skipped where the first already looked at that resolution.
Every input keeps its region's aspect ratio, each side rounded up to a
multiple of 32 as the network requires. Boxes from all passes are merged
(``merge``) so that overlapping ones become one box covering them all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anonstream.config import DetectorConfig
from anonstream.errors import ModelError
from anonstream.stream.wire import to_bgr8
from anonstream.workers.detections import Detections, iou_matrix
from anonstream.workers.runtime import CPU, create_session, load_model

STRIDE = 4  # CenterFace's output map is a quarter of its input
GPU_BATCH = 8  # detector.batch_size "auto" on a GPU (not yet measured); on the CPU batching gains little, then loses
ALIGN = 32


def input_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Detector input (height, width) for a frame of this size."""
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
    """One detector input: a region of the frame (x0, y0, x1, y1) resized to (height, width)."""

    region: tuple[int, int, int, int]
    size: tuple[int, int]

    def crop(self, image: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.region
        return image[y0:y1, x0:x1]


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One inference's input (N x 3 x H x W) and, per image, the frame (by index) and view it shows."""

    blob: np.ndarray
    views: list[tuple[int, View]]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch of ``frames`` frames ready for the model."""

    frames: int
    inputs: list[ModelInput]


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced tile origins along one side, covering it with at least ``overlap`` shared pixels."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def tiles(height: int, width: int, config: DetectorConfig) -> list[View]:
    """The high-resolution tiles of a frame; empty when the whole-frame pass already sees that resolution."""
    whole = input_size(height, width, config.max_side)
    if config.tile_scale <= 0 or whole[1] >= width * config.tile_scale:
        return []
    scale = config.tile_scale
    side = max(ALIGN, int(config.tile_size / scale))  # tile side in frame pixels
    overlap = int(config.tile_overlap / scale)
    views = []
    for y in _starts(height, side, overlap):
        for x in _starts(width, side, overlap):
            x1, y1 = min(width, x + side), min(height, y + side)
            views.append(View((x, y, x1, y1), input_size(round((y1 - y) * scale), round((x1 - x) * scale), 0)))
    return views


def plan(height: int, width: int, config: DetectorConfig, still: bool, seq: int) -> list[View]:
    """What to look at in frame ``seq``: the whole frame, then all tiles (still) or this frame's turn of them."""
    views = [View((0, 0, width, height), input_size(height, width, config.max_side))]
    fine = tiles(height, width, config)
    if still:
        return views + fine
    turn = min(config.tiles_per_frame, len(fine))
    return views + [fine[(seq * turn + k) % len(fine)] for k in range(turn)]


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
    """One box per face from several views: overlapping boxes become the box enclosing them all.

    A face cut by a tile border, or seen at two scales, gives boxes of
    different extents; keeping only the best-scored one could leave part of
    the face bare, so the merged box covers every one of them.
    """
    boxes = np.concatenate([d.boxes for d in found])
    scores = np.concatenate([d.scores for d in found])
    if not len(scores):
        return Detections.empty()
    merged, kept = [], []
    for best, suppressed in _suppress(boxes, scores, iou_threshold):
        group = boxes[np.append(suppressed, best)]
        merged.append([*group[:, :2].min(axis=0), *group[:, 2:].max(axis=0)])
        kept.append(scores[best])
    return Detections(np.asarray(merged, np.float32), np.asarray(kept, np.float32))


def decode(heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, threshold: float, iou: float) -> Detections:
    """CenterFace maps for one image (C x h x w each) to boxes in detector-input pixels."""
    ys, xs = np.nonzero(heatmap[0] > threshold)
    if ys.size == 0:
        return Detections.empty()
    heights = np.exp(scale[0, ys, xs]) * STRIDE
    widths = np.exp(scale[1, ys, xs]) * STRIDE
    cy = (ys + offset[0, ys, xs] + 0.5) * STRIDE
    cx = (xs + offset[1, ys, xs] + 0.5) * STRIDE
    boxes = np.stack([cx - widths / 2, cy - heights / 2, cx + widths / 2, cy + heights / 2], axis=1)
    scores = heatmap[0, ys, xs]
    keep = nms(boxes, scores, iou)
    return Detections(boxes[keep], scores[keep])


class FaceDetector:
    """CenterFace (or a model with the same outputs) in an onnxruntime session."""

    def __init__(self, config: DetectorConfig, threads: int = 0) -> None:
        self.config = config
        self.session, self.provider = create_session(load_model(config.model), config, threads or config.threads)
        self.batch_size = config.batch_size or (1 if self.provider == CPU else GPU_BATCH)
        self._input = self.session.get_inputs()[0].name
        outputs = self.session.get_outputs()
        if len(outputs) < 3:
            raise ModelError(f"model has {len(outputs)} outputs; a CenterFace model has heatmap, scale, offset")
        self._outputs = [o.name for o in outputs[:3]]

    @property
    def description(self) -> str:
        cfg = self.config
        size = f"longest side {cfg.max_side}" if cfg.max_side else "native resolution"
        fine = f"; tiles of {cfg.tile_size} px at {cfg.tile_scale:g}x, " if cfg.tile_scale else ""
        fine += f"{cfg.tiles_per_frame} per video frame, all for stills" if cfg.tile_scale else ""
        batching = f"; batches of up to {self.batch_size}" if self.batch_size > 1 else "; no batching"
        return f"{self.provider.removesuffix('ExecutionProvider')}, input {size}{fine}{batching}"

    def detect(self, image: np.ndarray, still: bool = False, seq: int = 0) -> Detections:
        """Faces in one frame, in frame pixels: every view of ``plan`` merged."""
        return self.detect_many([Frame(image, still, seq)])[0]

    def detect_many(self, frames: Sequence[Frame]) -> list[Detections]:
        """Faces in each of several frames (of any streams), with as few inferences as their views allow."""
        return self.infer(self.prepare(frames))

    def prepare(self, frames: Sequence[Frame]) -> Prepared:
        """The model inputs for a batch of frames; CPU work a worker does while the previous batch infers.

        Views of one input size (the whole frames of same-sized streams, the
        tiles) go into one input, ``batch_size`` at a time, so a batch of
        frames costs one inference per size instead of one per view.
        """
        images = [to_bgr8(frame.image, stretch=True) for frame in frames]
        jobs = [
            (index, view)
            for index, (image, frame) in enumerate(zip(images, frames, strict=True))
            for view in plan(image.shape[0], image.shape[1], self.config, frame.still, frame.seq)
        ]
        inputs = []
        for size in dict.fromkeys(view.size for _, view in jobs):
            same = [(index, view) for index, view in jobs if view.size == size]
            for start in range(0, len(same), self.batch_size):
                chunk = same[start : start + self.batch_size]
                crops = [view.crop(images[index]) for index, view in chunk]
                blob = cv2.dnn.blobFromImages(crops, 1.0, size[::-1], (0, 0, 0), swapRB=True, crop=False)
                inputs.append(ModelInput(blob, chunk))
        return Prepared(len(frames), inputs)

    def infer(self, prepared: Prepared) -> list[Detections]:
        """Run the model on prepared inputs; each frame's faces, in frame pixels."""
        found: list[list[Detections]] = [[] for _ in range(prepared.frames)]
        for model_input in prepared.inputs:
            faces = self._run(model_input.blob, [view for _, view in model_input.views])
            for (index, _), in_view in zip(model_input.views, faces, strict=True):
                found[index].append(in_view)
        return [views[0] if len(views) == 1 else merge(views, self.config.nms_iou) for views in found]

    def _run(self, blob: np.ndarray, views: list[View]) -> list[Detections]:
        """One inference over views of one input size; their faces in their frames' pixels."""
        in_h, in_w = views[0].size
        heatmap, scale, offset = self.session.run(self._outputs, {self._input: blob})
        expected = (in_h // STRIDE, in_w // STRIDE)
        if heatmap.shape[-2:] != expected or scale.shape[1] != 2 or offset.shape[1] != 2:
            raise ModelError(
                f"model output shapes {heatmap.shape}, {scale.shape}, {offset.shape} do not "
                f"match CenterFace's (1 and 2 channels at {expected})"
            )
        if not (np.isfinite(heatmap).all() and np.isfinite(scale).all() and np.isfinite(offset).all()):
            # A NaN heatmap would compare below every threshold and pass as "no face".
            raise ModelError("model produced non-finite output")
        if heatmap.shape[0] != len(views):
            raise ModelError(f"model returned {heatmap.shape[0]} results for a batch of {len(views)}")
        results = []
        for i, (x0, y0, x1, y1) in enumerate(view.region for view in views):
            found = decode(heatmap[i], scale[i], offset[i], self.config.threshold, self.config.nms_iou)
            factors = np.array([(x1 - x0) / in_w, (y1 - y0) / in_h] * 2, dtype=np.float32)
            shift = np.array([x0, y0, x0, y0], dtype=np.float32)
            results.append(Detections(found.boxes * factors + shift, found.scores))
        return results
