"""Masking strategies behind one small interface, chosen per class.

A masker replaces each region in place. Blur keeps no more detail than
a few samples across a region before smoothing (``MaskStyle.samples``: 2 by
default), so no deblurring can bring a face or a plate back, and no face
detector finds a masked face again; pixelate shows those samples as blocks
(3 by default); solid fills. ``Masking`` picks each class's masker (``mask.by_class``, else the
section's own style). ``mask_whole_frame`` is the fail-closed fallback when
detection fails. Boxes arrive as the detectors found them; ``Masking``
grows each class's by its scale (``Settings.mask_scales``), and widens it to
the class's ``min_aspect`` (a face's mask covers the head: a face seen from
the side is half as wide as the head it is on), before masking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np

from anonstream.config import MaskConfig, MaskStyle
from anonstream.stream.detections import Detections

WHOLE_FRAME_BLOCKS = 8  # samples across the longest side when a whole frame must be hidden: no more than a face keeps


def _downsampled(region: np.ndarray, blocks: int) -> np.ndarray:
    height, width = region.shape[:2]
    longest = max(height, width)
    size = (max(1, round(blocks * width / longest)), max(1, round(blocks * height / longest)))
    return cv2.resize(region, size, interpolation=cv2.INTER_AREA)


class Masker(ABC):
    """Replaces every given region of an image, in place, in one style."""

    def __init__(self, style: MaskStyle) -> None:
        self.style = style

    @abstractmethod
    def fill(self, region: np.ndarray) -> np.ndarray:
        """The replacement for one region, same shape and dtype."""

    def apply(self, image: np.ndarray, boxes: np.ndarray) -> None:
        """Mask each of ``boxes``, integer x1, y1, x2, y2 already clipped to the image (``Detections.pixel_boxes``).

        Smallest first: a box inside a larger one (a second find on the same face) is then masked over
        whole, instead of leaving its own edges on the larger mask, edges a detector could take for features.
        """
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for x1, y1, x2, y2 in boxes[np.argsort(areas, kind="stable")].tolist():
            region = image[y1:y2, x1:x2]
            replacement = self.fill(region)
            if self.style.shape == "box":
                region[...] = replacement
                continue
            h, w = region.shape[0], region.shape[1]
            inside = np.zeros((h, w), np.uint8)
            cv2.ellipse(inside, (w // 2, h // 2), (max(1, w // 2), max(1, h // 2)), 0, 0, 360, 255, -1)
            region[inside > 0] = replacement[inside > 0]


class BlurMasker(Masker):
    def fill(self, region: np.ndarray) -> np.ndarray:
        height, width = region.shape[:2]
        samples = self.style.samples
        coarse = cv2.resize(_downsampled(region, samples), (width, height), interpolation=cv2.INTER_LINEAR)
        kernel = max(3, (max(height, width) // samples) | 1)
        return cv2.blur(coarse, (kernel, kernel)).reshape(region.shape)


class PixelateMasker(Masker):
    def fill(self, region: np.ndarray) -> np.ndarray:
        height, width = region.shape[:2]
        small = _downsampled(region, self.style.samples)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST).reshape(region.shape)


class SolidMasker(Masker):
    def fill(self, region: np.ndarray) -> np.ndarray:
        channels = region.shape[2] if region.ndim == 3 else 1
        colour = list(self.style.color) + [255] * max(0, channels - 3)
        value = np.asarray(colour[:channels] if channels > 1 else [sum(self.style.color) // 3])
        if region.dtype == np.uint16:
            value = value * 257
        elif region.dtype.kind == "f":
            value = value / 255.0
        return np.broadcast_to(value.astype(region.dtype).reshape((1, 1, -1)[: region.ndim]), region.shape)


MASKERS: dict[str, type[Masker]] = {"blur": BlurMasker, "pixelate": PixelateMasker, "solid": SolidMasker}


def make_masker(style: MaskStyle) -> Masker:
    return MASKERS[style.mode](style)


class Masking:
    """Masks every detection in an image, each class grown by its scale and in its own style."""

    def __init__(self, config: MaskConfig, scales: dict[str, tuple[float, float]] | None = None) -> None:
        self.default = make_masker(config)
        self.by_class = {label: make_masker(style) for label, style in config.by_class.items()}
        self.scales = scales or {}

    def apply(self, image: np.ndarray, detections: Detections) -> None:
        height, width = image.shape[:2]
        for label in detections.classes():
            masker = self.by_class.get(label, self.default)
            grown = detections[detections.labels == label].scaled(self.scales.get(label, (1.0, 1.0)))
            masker.apply(image, grown.widened(masker.style.min_aspect).pixel_boxes(width, height))


def mask_whole_frame(image: np.ndarray) -> np.ndarray:
    """A new, fully pixelated copy of the frame: what goes out when detection fails."""
    height, width = image.shape[:2]
    if max(height, width) <= 2 * WHOLE_FRAME_BLOCKS:  # too small to pixelate: one colour
        return np.broadcast_to(image.mean(axis=(0, 1)).astype(image.dtype), image.shape).copy()
    small = _downsampled(image, WHOLE_FRAME_BLOCKS)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST).reshape(image.shape)
