"""Licence plates: a text detector and a plate-shape cue.

No plate-specific detector with a licence that allows commercial use ships in
a wheel, but plates are text. The text detector is PaddleOCR's PP-OCRv6
small DBNet, shipped in the rapidocr package (Apache-2.0); anonstream runs it
in its own session and does the pre- and post-processing itself:
- input: BGR, (x - 127.5) / 127.5, each side a multiple of 32; with
  ``contrast``, local contrast equalized first (CLAHE on lightness), which
  finds plates in shade and glare (plates_us: 0.977 -> 0.995 found);
- output: a text probability map at input resolution. Pixels above
  ``threshold`` form regions (connected components, all at once); a region
  whose mean probability is at least ``box_threshold`` is text, its box grown
  by DBNet's unclip distance (area x ``unclip`` / perimeter);
- regions whose width / height is outside [``min_aspect``, ``max_aspect``]
  are dropped (0: no limit), and so are regions taller than ``max_height``
  or wider than ``max_width`` of the frame: a plate is never that large, a
  banner is (on WIDER FACE's parades this halves the text masked outside
  faces, for 1 % of plates_us's plates).

Each text box is grown by ``text_to_plate`` to the plate around it.

The shape cue (``shapes``, plate_shapes.py) finds what the text detector
misses on soft, dark or oblique video: a plate's own bright quadrilateral,
holding dark strokes. Its box is the plate itself, grown by SHAPE_MARGIN. It
needs no model and runs, on the whole frame, while a batch is prepared. By
default it looks at video only: on sharp photos the text detector finds
plates alone, and the cue would only add masks on signs.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anonstream.config import PlatesConfig, RuntimeConfig
from anonstream.errors import ModelError
from anonstream.stream.detections import Detections
from anonstream.stream.wire import to_bgr8
from anonstream.workers.detectors.base import Detector, OnnxModel, Prepared
from anonstream.workers.detectors.plate_shapes import plate_shapes
from anonstream.workers.detectors.views import Frame, View
from anonstream.workers.models import model_path
from anonstream.workers.runtime import read_model

LABEL = "plate"
MIN_SIDE = 3  # DBNet: regions thinner than this (input pixels) are noise
SHAPE_MARGIN = (1.15, 1.3)  # a plate found by its shape (its bright inside) is masked larger, for its frame


CLAHE_CLIP, CLAHE_GRID = 2.0, (8, 8)


def _blob(crops: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    return np.asarray(cv2.dnn.blobFromImages(crops, 1 / 127.5, size[::-1], (127.5, 127.5, 127.5), swapRB=False))


def _equalized_blob(crops: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """As ``_blob``, each view's lightness equalized locally first, at its own resolution.

    Equalizing after the view is scaled down finds fewer plates (plates_us,
    first 80 images: 0.988 against 1.000).
    """
    clahe = cv2.createCLAHE(CLAHE_CLIP, CLAHE_GRID)
    equalized = []
    for crop in crops:
        lab = cv2.cvtColor(crop, cv2.COLOR_BGR2LAB)
        lab[:, :, 0] = clahe.apply(lab[:, :, 0])
        equalized.append(cv2.cvtColor(lab, cv2.COLOR_LAB2BGR))
    return _blob(equalized, size)


def text_regions(
    probability: np.ndarray, threshold: float, box_threshold: float, unclip: float
) -> tuple[np.ndarray, np.ndarray]:
    """A DBNet probability map (h x w) to text boxes (N, 4) in its pixels and their scores."""
    binary = (probability > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=4)
    if count <= 1:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    sums = np.bincount(labels.ravel(), weights=probability.ravel(), minlength=count)
    x, y, w, h, area = (stats[:, i].astype(np.float32) for i in range(5))
    score = (sums / np.maximum(area, 1)).astype(np.float32)
    keep = (score >= box_threshold) & (np.minimum(w, h) >= MIN_SIDE)
    keep[0] = False  # the background
    grow = area * unclip / np.maximum(2 * (w + h), 1)
    boxes = np.stack([x - grow, y - grow, x + w + grow, y + h + grow], axis=1)
    return boxes[keep], score[keep]


class Plates(Detector):
    config: PlatesConfig

    def __init__(self, name: str, config: PlatesConfig, runtime: RuntimeConfig, threads: int) -> None:
        super().__init__(name, config)
        self.model: OnnxModel | None = None
        if config.text:
            path = model_path(config)
            assert path is not None
            self.model = OnnxModel(read_model(path).SerializeToString(), path, config, runtime, threads, outputs=1)
            outputs = self.model.session.get_outputs()
            if len(outputs) != 1 or len(outputs[0].shape) != 4:
                raise ModelError(f"{path}: a DBNet text detector has one output, a N x 1 x H x W probability map")

    @property
    def provider(self) -> str:
        return self.model.provider if self.model is not None else super().provider

    @property
    def batch_size(self) -> int:
        return self.model.batch_size if self.model is not None else super().batch_size

    @property
    def description(self) -> str:
        cues = [f"text ({self.model.views_text()})"] if self.model is not None else []
        if self.config.shapes != "never":
            cues.append(f"plate shapes (CPU, {'video frames' if self.config.shapes == 'video' else 'every frame'})")
        return f"{self.name}: {' + '.join(cues)}"

    def prepare(self, frames: Sequence[Frame]) -> Prepared:
        blob = _equalized_blob if self.config.contrast else _blob
        prepared = self.model.prepare(frames, blob) if self.model is not None else Prepared(len(frames))
        found: list[list[Detections]] = [[] for _ in frames]
        for index, frame in enumerate(frames):
            if self.config.shapes == "always" or (self.config.shapes == "video" and not frame.still):
                boxes = plate_shapes(to_bgr8(frame.image, stretch=True))
                found[index].append(Detections.of(LABEL, boxes).scaled(SHAPE_MARGIN))
        return Prepared(prepared.frames, prepared.inputs, found)

    def infer(self, prepared: Prepared) -> list[Detections]:
        """Text boxes (grown to their plates) and plate shapes, one box per plate."""
        return self.finish(self.model.infer(prepared, self._decode) if self.model is not None else prepared.found)

    def _decode(self, outputs: list[np.ndarray], views: list[View]) -> list[Detections]:
        probability = outputs[0]
        if probability.shape[1] != 1 or probability.shape[-2:] != views[0].size:
            raise ModelError(
                f"text model output {probability.shape} is not a 1-channel map of its input {views[0].size}"
            )
        cfg = self.config
        results = []
        for i in range(len(views)):
            boxes, scores = text_regions(probability[i, 0], cfg.threshold, cfg.box_threshold, cfg.unclip)
            width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            aspect = width / np.maximum(height, 1e-6)
            # the size limits, a share of the frame, in this view's input pixels
            (frame_height, frame_width), (x0, y0, x1, y1) = views[i].frame, views[i].region
            scale_y, scale_x = views[i].size[0] / (y1 - y0), views[i].size[1] / (x1 - x0)
            keep = height <= cfg.max_height * frame_height * scale_y
            keep &= width <= cfg.max_width * frame_width * scale_x
            if cfg.min_aspect:
                keep &= aspect >= cfg.min_aspect
            if cfg.max_aspect:
                keep &= aspect <= cfg.max_aspect
            results.append(Detections.of(LABEL, boxes[keep], scores[keep]).scaled(cfg.text_to_plate))
        return results
