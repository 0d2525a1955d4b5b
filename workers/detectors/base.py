"""What every detector is to a worker, and what the ONNX model families share.

A worker holds a list of detectors and, for each batch of frames, calls
``prepare`` (CPU work: conversion, resizing, tiling, and any cue that needs no
model), on a thread of its own while the previous batch infers, then
``infer``. What ``prepare`` returns is opaque to the worker, so a detector may
later prepare on the GPU without the worker knowing.

``OnnxModel`` is the machinery the ONNX families share: one session on the
configured device, the views of ``views.plan`` grouped by input size into
batched inputs, and boxes mapped back to frame pixels and merged. A family
supplies its preprocessing (``blob``) and its output decoding (``decode``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from anonstream.config import GPU_BATCH, AnyDetector, RuntimeConfig
from anonstream.errors import ModelError
from anonstream.stream.detections import Detections
from anonstream.stream.wire import to_bgr8
from anonstream.workers.detectors.views import Frame, View, merge, plan
from anonstream.workers.runtime import CPU, create_session


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One inference's input (N x 3 x H x W) and, per image, the frame (by index) and view it shows."""

    blob: np.ndarray
    views: list[tuple[int, View]]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch of ``frames`` frames ready for a detector: model inputs, and what was found while preparing."""

    frames: int
    inputs: list[ModelInput] = field(default_factory=list)
    found: list[list[Detections]] = field(default_factory=list)  # per frame (may be empty: nothing found yet)


class Detector(ABC):
    """One model family (or cue) finding one or more classes of things to mask."""

    def __init__(self, name: str, config: AnyDetector) -> None:
        self.name = name
        self.config = config

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    @property
    def provider(self) -> str:
        """The onnxruntime provider it runs on (CPU for a detector without a model)."""
        return CPU

    @property
    def batch_size(self) -> int:
        """Images per inference (1 for a detector without a model)."""
        return 1

    @property
    @abstractmethod
    def description(self) -> str:
        """One line for the log: what it looks at, and on what."""

    @abstractmethod
    def prepare(self, frames: Sequence[Frame]) -> Prepared:
        """Everything up to the model for a batch of frames: CPU work, done ahead of ``infer``."""

    @abstractmethod
    def infer(self, prepared: Prepared) -> list[Detections]:
        """Each frame's boxes, in frame pixels: the faces and plates found, not yet grown for masking."""

    def detect(self, image: np.ndarray, still: bool = False, seq: int = 0) -> Detections:
        """One frame at once: for tests and benchmarks."""
        return self.infer(self.prepare([Frame(image, still, seq)]))[0]

    def detect_many(self, frames: Sequence[Frame]) -> list[Detections]:
        return self.infer(self.prepare(frames))

    def finish(self, found: list[list[Detections]]) -> list[Detections]:
        """Per frame, the boxes of every view merged into one per object."""
        return [merge(views, self.config.nms_iou) if views else Detections.empty() for views in found]


def _shapes(args: list[ort.NodeArg]) -> str:
    return ", ".join(f"{a.name} {list(a.shape)}" for a in args) or "none"


# A family's preprocessing: crops of one input size (height, width) to an N x 3 x H x W float32 blob.
Blob = Callable[[list[np.ndarray], tuple[int, int]], np.ndarray]
# A family's decoding: the model's outputs for a batch of views to each view's boxes in its input pixels.
Decode = Callable[[list[np.ndarray], list[View]], list[Detections]]


class OnnxModel:
    """An ONNX model on the configured device, fed the views of frames in batches of one input size."""

    def __init__(
        self, model: bytes, path: Path, config: AnyDetector, runtime: RuntimeConfig, threads: int, outputs: int = 0
    ) -> None:
        self.path = path
        self.config = config
        self.session, self.provider, self.fallback = create_session(model, runtime, threads)
        self.batch_size = runtime.batch_size or (1 if self.provider == CPU else GPU_BATCH)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelError(f"{path}: expected one image input of shape N x 3 x H x W, found {_shapes(inputs)}")
        self.input = inputs[0]
        if isinstance(self.input.shape[0], int):  # an export with a fixed batch (often 1) takes no more
            self.batch_size = min(self.batch_size, self.input.shape[0])
        # only the outputs the family decodes: onnxruntime then skips the rest of the graph
        self.outputs: list[ort.NodeArg] = self.session.get_outputs()[: outputs or None]

    def views_text(self) -> str:
        """What it looks at and on what, in words, for the log."""
        batching = f"batches of up to {self.batch_size}" if self.batch_size > 1 else "no batching"
        device = self.provider.removesuffix("ExecutionProvider") + (f" ({self.fallback})" if self.fallback else "")
        return f"{device}, {self.config.looks_at}; {batching}"

    def prepare(self, frames: Sequence[Frame], blob: Blob, size: Callable[[View], View] | None = None) -> Prepared:
        """The model inputs for a batch of frames.

        Views of one input size (the whole frames of same-sized streams, the
        tiles) go into one input, ``batch_size`` at a time, so a batch of
        frames costs one inference per size instead of one per view.
        """
        images = [to_bgr8(frame.image, stretch=True) for frame in frames]
        jobs = []
        for index, (image, frame) in enumerate(zip(images, frames, strict=True)):
            views = self.config.stills if frame.still else self.config.video
            for view in plan(image.shape[0], image.shape[1], views, frame.seq):
                jobs.append((index, size(view) if size else view))
        inputs = []
        for shape in dict.fromkeys(view.size for _, view in jobs):
            same = [(index, view) for index, view in jobs if view.size == shape]
            for start in range(0, len(same), self.batch_size):
                chunk = same[start : start + self.batch_size]
                inputs.append(ModelInput(blob([view.crop(images[index]) for index, view in chunk], shape), chunk))
        return Prepared(len(frames), inputs, [[] for _ in frames])

    def infer(self, prepared: Prepared, decode: Decode) -> list[list[Detections]]:
        """Run every input; per frame, the boxes each of its views found, in frame pixels."""
        found: list[list[Detections]] = [list(views) for views in prepared.found]
        for model_input in prepared.inputs:
            views = [view for _, view in model_input.views]
            outputs = self.session.run([o.name for o in self.outputs], {self.input.name: model_input.blob})
            for array in outputs:
                if not np.isfinite(array).all():
                    # A NaN map compares below every threshold and would pass as "nothing found".
                    raise ModelError(f"{self.path.name} produced non-finite output")
                if array.shape[0] != len(views):
                    raise ModelError(f"{self.path.name} returned {array.shape[0]} results for a batch of {len(views)}")
            for (index, view), in_view in zip(model_input.views, decode(outputs, views), strict=True):
                found[index].append(
                    Detections(view.to_frame(in_view.boxes), in_view.scores, in_view.labels)
                    if len(in_view)
                    else in_view
                )
        return found


class OnnxDetector(Detector):
    """A detector of one ONNX model: it runs where the model runs, in the model's batches."""

    model: OnnxModel

    @property
    def provider(self) -> str:
        return self.model.provider

    @property
    def batch_size(self) -> int:
        return self.model.batch_size
