"""Masking strategies behind one small interface.

A masker replaces each detected region in place. Blur keeps no more detail
than ``blocks`` samples across a face before smoothing, so no deblurring can
bring the face back; pixelate shows those samples as blocks; solid fills.
``mask_whole_frame`` is the fail-closed fallback when detection fails.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np

from anonstream.config import MaskConfig
from anonstream.workers.detections import Detections

WHOLE_FRAME_BLOCKS = 8  # samples across the longest side when a whole frame must be hidden: no more than a face keeps


def _downsampled(region: np.ndarray, blocks: int) -> np.ndarray:
    height, width = region.shape[:2]
    longest = max(height, width)
    size = (max(1, round(blocks * width / longest)), max(1, round(blocks * height / longest)))
    return cv2.resize(region, size, interpolation=cv2.INTER_AREA)


class Masker(ABC):
    """Replaces every detected region of an image, in place."""

    def __init__(self, config: MaskConfig) -> None:
        self.config = config

    @abstractmethod
    def fill(self, region: np.ndarray) -> np.ndarray:
        """The replacement for one region, same shape and dtype."""

    def apply(self, image: np.ndarray, detections: Detections) -> None:
        height, width = image.shape[:2]
        grown = detections.scaled(self.config.scale)
        for x1, y1, x2, y2 in grown.pixel_boxes(width, height).tolist():
            region = image[y1:y2, x1:x2]
            replacement = self.fill(region)
            if self.config.shape == "box":
                region[...] = replacement
                continue
            h, w = region.shape[0], region.shape[1]
            inside = np.zeros((h, w), np.uint8)
            cv2.ellipse(inside, (w // 2, h // 2), (max(1, w // 2), max(1, h // 2)), 0, 0, 360, 255, -1)
            region[inside > 0] = replacement[inside > 0]


class BlurMasker(Masker):
    def fill(self, region: np.ndarray) -> np.ndarray:
        height, width = region.shape[:2]
        coarse = cv2.resize(_downsampled(region, self.config.blocks), (width, height), interpolation=cv2.INTER_LINEAR)
        kernel = max(3, (max(height, width) // self.config.blocks) | 1)
        return cv2.blur(coarse, (kernel, kernel)).reshape(region.shape)


class PixelateMasker(Masker):
    def fill(self, region: np.ndarray) -> np.ndarray:
        height, width = region.shape[:2]
        small = _downsampled(region, self.config.blocks)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST).reshape(region.shape)


class SolidMasker(Masker):
    def fill(self, region: np.ndarray) -> np.ndarray:
        channels = region.shape[2] if region.ndim == 3 else 1
        colour = list(self.config.color) + [255] * max(0, channels - 3)
        value = np.asarray(colour[:channels] if channels > 1 else [sum(self.config.color) // 3])
        if region.dtype == np.uint16:
            value = value * 257
        elif region.dtype.kind == "f":
            value = value / 255.0
        return np.broadcast_to(value.astype(region.dtype).reshape((1, 1, -1)[: region.ndim]), region.shape)


MASKERS: dict[str, type[Masker]] = {"blur": BlurMasker, "pixelate": PixelateMasker, "solid": SolidMasker}


def make_masker(config: MaskConfig) -> Masker:
    return MASKERS[config.mode](config)


def mask_whole_frame(image: np.ndarray) -> np.ndarray:
    """A new, fully pixelated copy of the frame: what goes out when detection fails."""
    height, width = image.shape[:2]
    if max(height, width) <= 2 * WHOLE_FRAME_BLOCKS:  # too small to pixelate: one colour
        return np.broadcast_to(image.mean(axis=(0, 1)).astype(image.dtype), image.shape).copy()
    small = _downsampled(image, WHOLE_FRAME_BLOCKS)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST).reshape(image.shape)
