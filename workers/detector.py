"""CenterFace face detection: pre-processing, one inference, vectorized decoding.

The detector input keeps the frame's aspect ratio, scaled so its longest side
is at most ``max_side`` (0: native size), each side rounded up to a multiple
of 32 as the network requires.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from anonstream.config import DetectorConfig
from anonstream.errors import ModelError
from anonstream.stream.wire import to_bgr8
from anonstream.workers.detections import Detections
from anonstream.workers.runtime import create_session, load_model

STRIDE = 4  # CenterFace's output map is a quarter of its input
ALIGN = 32


def input_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Detector input (height, width) for a frame of this size."""
    scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
    return (
        max(ALIGN, math.ceil(height * scale / ALIGN) * ALIGN),
        max(ALIGN, math.ceil(width * scale / ALIGN) * ALIGN),
    )


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first.

    Each round compares the best remaining box with all others at once, so the
    loop runs once per kept box, not once per candidate.
    """
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        xx1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


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
        self.session, self.provider = create_session(
            load_model(config.model), config.device, config.device_id, threads or config.threads
        )
        self._input = self.session.get_inputs()[0].name
        outputs = self.session.get_outputs()
        if len(outputs) < 3:
            raise ModelError(f"model has {len(outputs)} outputs; a CenterFace model has heatmap, scale, offset")
        self._outputs = [o.name for o in outputs[:3]]

    @property
    def description(self) -> str:
        size = f"longest side {self.config.max_side}" if self.config.max_side else "native resolution"
        return f"{self.provider.removesuffix('ExecutionProvider')}, input {size}"

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in one frame, in frame pixels."""
        frame = to_bgr8(image, stretch=True)
        height, width = frame.shape[:2]
        in_h, in_w = input_size(height, width, self.config.max_side)
        blob = cv2.dnn.blobFromImage(frame, 1.0, (in_w, in_h), (0, 0, 0), swapRB=True, crop=False)
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
        found = decode(heatmap[0], scale[0], offset[0], self.config.threshold, self.config.nms_iou)
        factors = np.array([width / in_w, height / in_h] * 2, dtype=np.float32)
        return Detections(found.boxes * factors, found.scores)
