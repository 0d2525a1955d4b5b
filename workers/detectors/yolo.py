"""Your own ONNX model in a common YOLO export layout: a team's own face or plate model, without code.

Two output layouts are decoded, for a model of C classes:
- ``v8`` (YOLOv8, v11 and later exports): ``[N, 4 + C, boxes]``, rows cx, cy,
  w, h, then one score per class;
- ``v5`` (YOLOv5, v7): ``[N, boxes, 5 + C]``, columns cx, cy, w, h, an
  objectness score, then one score per class (a box's score is objectness
  times its best class score).
``layout = "auto"`` tells them apart by the shape. Coordinates are in input
pixels. Inputs are RGB in [0, 1]; a model with a fixed input size gets each
view letterboxed (aspect kept, grey padding at the bottom and right), a model
with free height and width gets each view at its own size. ``labels`` maps
class index i to a masking class ("face", "plate", or one of your own); an
empty name ignores that class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

from anonstream.config import RuntimeConfig, YoloConfig
from anonstream.errors import ModelError
from anonstream.stream.detections import Detections
from anonstream.workers.detectors.base import OnnxDetector, OnnxModel, Prepared
from anonstream.workers.detectors.views import Frame, View, nms
from anonstream.workers.runtime import read_model

PAD = 114  # the grey YOLO exports are trained with around letterboxed images


def layout_of(shape: Sequence[object], classes: int, asked: str) -> str:
    """ "v8" or "v5" for an output of this shape (dimensions may be names, when the model leaves them free)."""
    if len(shape) != 3:
        raise ModelError(f"a YOLO model has one output of 3 dimensions, this one has {list(shape)}")
    fits = {"v8": shape[1] == 4 + classes, "v5": shape[2] == 5 + classes}
    if asked != "auto":
        if not fits[asked] and all(isinstance(d, int) for d in shape[1:]):
            raise ModelError(
                f"output {list(shape)} does not fit layout {asked} for {classes} labels "
                f"({'[N, 4+C, boxes]' if asked == 'v8' else '[N, boxes, 5+C]'})"
            )
        return asked
    found = [name for name, ok in fits.items() if ok]
    if len(found) != 1:
        raise ModelError(
            f"output {list(shape)} fits {'both' if found else 'neither'} YOLO layout for {classes} labels: "
            "[N, 4+C, boxes] (v8) or [N, boxes, 5+C] (v5); check `labels` (one per class), or set `layout`"
        )
    return found[0]


def decode(output: np.ndarray, layout: str, labels: Sequence[str], threshold: float, iou: float) -> Detections:
    """One image's YOLO output to boxes in input pixels, non-maximum suppressed per class."""
    rows = output.T if layout == "v8" else output
    class_scores = rows[:, 4:] if layout == "v8" else rows[:, 5:] * rows[:, 4:5]
    if class_scores.shape[1] != len(labels):
        raise ModelError(f"the model gives {class_scores.shape[1]} class scores per box for {len(labels)} labels")
    ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(rows)), ids]
    named = np.array([bool(label) for label in labels])
    keep = (scores > threshold) & named[ids]
    centre, size = rows[keep, :2], np.abs(rows[keep, 2:4])
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    scores, ids = scores[keep], ids[keep]
    found = []
    for label in dict.fromkeys(label for label in labels if label):
        mine = np.flatnonzero(np.isin(ids, [i for i, name in enumerate(labels) if name == label]))
        kept = mine[nms(boxes[mine], scores[mine], iou)] if mine.size else mine
        found.append(Detections.of(label, boxes[kept], scores[kept]))
    return Detections.concat(found)


class Yolo(OnnxDetector):
    config: YoloConfig

    def __init__(self, name: str, config: YoloConfig, runtime: RuntimeConfig, threads: int) -> None:
        super().__init__(name, config)
        self.model = OnnxModel(read_model(config.model).SerializeToString(), config.model, config, runtime, threads)
        if len(self.model.outputs) != 1:
            raise ModelError(f"{config.model}: a YOLO model has one output, this one has {len(self.model.outputs)}")
        self.layout = layout_of(self.model.outputs[0].shape, len(config.labels), config.layout)
        height, width = self.model.input.shape[2:]
        self.fixed = (height, width) if isinstance(height, int) and isinstance(width, int) else None

    @property
    def description(self) -> str:
        size = f"fixed input {self.fixed[1]}x{self.fixed[0]}" if self.fixed else "free input size"
        return f"{self.name} (YOLO {self.layout}, {size}): {self.model.views_text()}"

    def _letterboxed(self, view: View) -> View:
        if self.fixed is None:
            return view
        x0, y0, x1, y1 = view.region
        scale = min(self.fixed[0] / (y1 - y0), self.fixed[1] / (x1 - x0))
        content = (max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale)))
        return dataclasses.replace(view, size=self.fixed, content=content)

    def prepare(self, frames: Sequence[Frame]) -> Prepared:
        return self.model.prepare(frames, self._blob, self._letterboxed)

    def _blob(self, crops: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
        if self.fixed is not None:
            crops = [self._pad(crop, size) for crop in crops]
        return np.asarray(cv2.dnn.blobFromImages(crops, 1 / 255, size[::-1], (0, 0, 0), swapRB=True, crop=False))

    @staticmethod
    def _pad(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        height, width = crop.shape[:2]
        scale = min(size[0] / height, size[1] / width)
        content = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = np.full((size[0], size[1], 3), PAD, np.uint8)
        canvas[: content[1], : content[0]] = cv2.resize(crop, content, interpolation=cv2.INTER_LINEAR)
        return canvas

    def infer(self, prepared: Prepared) -> list[Detections]:
        return self.finish(self.model.infer(prepared, self._decode))

    def _decode(self, outputs: list[np.ndarray], views: list[View]) -> list[Detections]:
        cfg = self.config
        return [decode(outputs[0][i], self.layout, cfg.labels, cfg.threshold, cfg.nms_iou) for i in range(len(views))]
