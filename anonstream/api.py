"""anonstream as a library: the pipeline's detectors, masking, tracker and fail-closed rule, in your process.

    from anonstream import Anonymizer

    with Anonymizer(detect=["faces", "plates"]) as anonymizer:
        result = anonymizer.anonymize(image)              # a photo: BGR uint8, as cv2.imread gives
        for frame in anonymizer.anonymize_video(frames):  # a sequence: the tracker carries masks across
            ...
        anonymizer.anonymize_file("street.mp4", "street_anonymized.mp4")  # audio kept, as with the CLI

It composes the stages' own parts (the worker's ``FrameAnonymizer``, the
record stage's ``Hold`` and recorders, the capture's source readers); nothing
here detects or masks by itself. An image comes back masked, fully masked
when detection failed (``full_mask``), or not at all: ``AnonymizationError``.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anonstream.closing import Closing
from anonstream.config import Settings, SourceSpec, load_settings, nested
from anonstream.errors import AnonstreamError, ConfigError, WireError
from anonstream.stream.capture import frame_header, source_flags
from anonstream.stream.detections import Detections
from anonstream.stream.masking import Masking
from anonstream.stream.record import Hold
from anonstream.stream.recorders import Mp4Recorder, Output, Recorder, existing_outputs, make_recorder, plan_outputs
from anonstream.stream.sources import classify, open_source, stream_ids
from anonstream.stream.wire import DTYPES, Flag, FrameHeader, FrameMessage, pixel_layout
from anonstream.workers.detectors import make_detectors
from anonstream.workers.worker import FrameAnonymizer

__all__ = ["AnonymizationError", "Anonymized", "Anonymizer", "FileResult"]

Progress = Callable[[int, int | None], None]  # frames done, frames in all (None: unknown)


class AnonymizationError(AnonstreamError):
    """An image could not be anonymized, not even masked whole: nothing is returned for it."""


@dataclass(frozen=True)
class Anonymized:
    """One image, anonymized."""

    image: np.ndarray  # a new array: the one given is never changed
    detections: Detections  # every box masked: found by the detectors, and on video held by the tracker
    full_mask: bool = False  # detection failed, so the whole image is masked instead


@dataclass(frozen=True)
class FileResult:
    """What ``anonymize_file`` wrote."""

    outputs: list[Path]  # the files written (a video with new segments, a folder's images: more than one)
    frames: int
    masks: dict[str, int] = field(default_factory=dict)  # boxes masked, by class
    full_masked: int = 0  # frames masked whole because detection failed


class Anonymizer(Closing):
    """The detectors loaded once, for any number of images, videos and files; not for two threads at once.

    ``config`` is a config file or ``Settings``; ``detect``, ``mask`` and ``device`` set
    those keys, and ``options`` any other (``{"detectors.faces.threshold": 0.3}``), as
    ``--set`` does. ``threads``: the cores the detectors use (0: the config's, else all).
    """

    def __init__(
        self,
        config: Settings | str | os.PathLike[str] | None = None,
        *,
        detect: Sequence[str] | None = None,
        mask: str | None = None,
        device: str | None = None,
        options: Mapping[str, Any] | None = None,
        threads: int = 0,
    ) -> None:
        overrides: list[dict[str, Any]] = []
        for key, value in (("detect", list(detect) if detect is not None else None), ("mask.mode", mask)):
            if value is not None:
                overrides.append(nested(key, value))
        if device is not None:
            overrides.append(nested("runtime.device", device))
        overrides += [nested(key, value) for key, value in (options or {}).items()]
        if isinstance(config, Settings):
            path, overrides = None, [config.model_dump(exclude_unset=True, mode="json"), *overrides]
        else:
            path = Path(config) if config is not None else None
        self._load = functools.partial(_load, path, overrides)
        settings = self._load()
        self.settings = settings
        threads = threads or settings.runtime.threads or os.cpu_count() or 1
        self._frames = FrameAnonymizer(make_detectors(settings, threads), Masking(settings.mask, settings.mask_scales))
        self._variants: dict[tuple[str | None, tuple[str, ...] | None], FrameAnonymizer] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def device(self) -> str:
        """Where the detectors run: CPU, CUDA, Tensorrt."""
        return self._frames.device

    @property
    def description(self) -> str:
        """What each detector runs, and on which device."""
        return "; ".join(detector.description for detector in self._frames.detectors)

    def anonymize(
        self, image: np.ndarray, *, mask: str | None = None, detect: Sequence[str] | None = None
    ) -> Anonymized:
        """A photo, on its own: scanned whole and in tiles as the CLI's stills are, no tracker.

        ``mask`` (a mask mode) and ``detect`` (some of the loaded detectors) apply to this image only.
        """
        message = _message("image", 0, _untouched(image), Flag.STILL)
        return self._process(message, None, self._variant(mask, detect))[1]

    def anonymize_video(self, frames: Iterable[np.ndarray], fps: float = 30.0) -> Iterator[Anonymized]:
        """A sequence of frames, in order: the tracker keeps masking what the detectors lose for a moment."""
        hold = Hold(self.settings)
        rate = round(fps * 1000)
        for seq, pixels in enumerate(frames):
            yield self._process(_message("video", seq, _untouched(pixels), Flag.NONE, rate), hold)[1]

    def anonymize_file(
        self,
        source: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> FileResult:
        """A video, image or folder of images, as ``anonstream run SOURCE -o OUTPUT`` writes it (a folder: OUTPUT/).

        Nothing is dropped: every frame is anonymized (or masked whole) and written, with a
        video's audio, rotation and creation time. An output that exists is an error unless
        ``overwrite``.
        """
        spec = SourceSpec(uri=os.fspath(source))
        sid = stream_ids([spec])[0]
        record = self.settings.record.model_copy(update={"output": Path(output), "dir": None, "overwrite": overwrite})
        if classify(spec.uri) == "folder":  # a folder of images becomes a folder of the same names
            record = record.model_copy(update={"output": None, "format": "images"})
            target = Output(Path(output))
        else:
            target = plan_outputs([spec], record)[sid]
        capture = self.settings.capture.model_copy(update={"realtime": False})
        if not overwrite and (existing := existing_outputs([spec], {sid: target}, capture)):
            raise ConfigError(f"{existing[0]} already exists: pass overwrite=True to replace it, or write elsewhere")
        settings = self.settings.model_copy(update={"record": record, "capture": capture})
        hold = Hold(settings)
        frames = full_masked = 0
        masks: Counter[str] = Counter()
        recorder: Recorder | None = None
        with open_source(spec, sid, capture) as reader:
            flags = source_flags(reader.info, settings)
            try:
                for seq, frame in enumerate(reader.frames()):
                    message = FrameMessage(frame_header(reader.info, frame, seq, flags), frame.pixels)
                    out, result = self._process(message, hold)
                    if recorder is None:
                        recorder = make_recorder(sid, out.header, record, target)
                    recorder.write(out)
                    frames += 1
                    full_masked += result.full_mask
                    masks.update(result.detections.counts())
                    if progress is not None:
                        progress(frames, reader.info.frames)
            finally:
                if recorder is not None:
                    recorder.close()
        written = recorder.paths if isinstance(recorder, Mp4Recorder) else [target.path] if frames else []
        return FileResult(list(written), frames, dict(masks), full_masked)

    def _variant(self, mask: str | None, detect: Sequence[str] | None) -> FrameAnonymizer:
        """The loaded detectors, some of them, masked another way: nothing is loaded again."""
        if mask is None and detect is None:
            return self._frames
        key = (mask, tuple(sorted(set(detect))) if detect is not None else None)  # a few keys, whatever is asked
        if (known := self._variants.get(key)) is not None:
            return known
        names = [d.name for d in self._frames.detectors]
        unknown = sorted(set(detect or ()) - set(names))
        if unknown or (detect is not None and not detect):
            raise ConfigError(
                f"detect: {', '.join(unknown) or 'nothing'} is not loaded; choose from {', '.join(names)}"
            )
        masking = self._frames.masking
        if mask is not None:
            settings = self._load([nested("mask.mode", mask)])
            masking = Masking(settings.mask, settings.mask_scales)
        chosen = [d for d in self._frames.detectors if detect is None or d.name in detect]
        variant = self._variants[key] = FrameAnonymizer(chosen, masking)
        return variant

    def _process(
        self, message: FrameMessage, hold: Hold | None, frames: FrameAnonymizer | None = None
    ) -> tuple[FrameMessage, Anonymized]:
        """The worker's step, then (on video) the record stage's tracker step: the pipeline's own code."""
        with self._lock:
            if self._closed:
                raise AnonstreamError("this Anonymizer is closed")
            out = (frames or self._frames).process(message)
        if out is None:
            raise AnonymizationError(f"{message.header.stream} frame {message.header.seq} could not be anonymized")
        detected = Detections.from_wire(out.header.boxes)
        if hold is not None:
            out, held = hold(out)
            detected = Detections.concat([detected, held])
        return out, Anonymized(out.pixels, detected, bool(out.header.flags & Flag.FULL_MASK))

    def close(self) -> None:
        """Release the model sessions; the Anonymizer cannot be used after."""
        with self._lock:
            self._closed = True
            self._frames.detectors.clear()
            self._variants.clear()


def _load(path: Path | None, overrides: list[dict[str, Any]], extra: Sequence[dict[str, Any]] = ()) -> Settings:
    return load_settings(path, [*overrides, *extra])


def _untouched(image: np.ndarray) -> np.ndarray:
    """A read-only view: the worker then masks a copy (it masks its own received buffers in place)."""
    if not isinstance(image, np.ndarray):
        raise WireError(f"expected an image as a numpy array, got {type(image).__name__}")
    view = image.view()
    view.flags.writeable = False
    return view


def _message(stream: str, seq: int, pixels: np.ndarray, flags: Flag, rate_millis: int = 0) -> FrameMessage:
    if str(pixels.dtype) not in DTYPES:
        raise WireError(f"cannot anonymize {pixels.dtype} pixels: give uint8 (as cv2.imread), uint16 or float32")
    if pixels.ndim < 2 or min(pixels.shape[:2]) < 1:
        raise WireError(f"an image of shape {pixels.shape} has no pixels")
    header = FrameHeader(
        stream=stream,
        seq=seq,
        index=seq,
        pts=seq * 1000,
        time_base=(1, rate_millis or 30_000),
        rate=(rate_millis or 30_000, 1000),
        shape=tuple(pixels.shape),
        dtype=str(pixels.dtype),
        pixfmt=pixel_layout(pixels),
        flags=flags,
    )
    return FrameMessage(header, pixels)
